"""The report page in headless Chromium: every picture loads and nothing logs an error.

Chromium is the Debian package (``/usr/bin/chromium``); the session fixture installs it with
apt-get when it is missing (root, as here and in CI). The browser is driven over the DevTools
protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4 out, NUL-separated JSON), so no
client library and no network port are needed. A screenshot of the page is kept in
``out/test-artifacts/``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from coinfer.cli.main import main

DATA = Path(__file__).parent / "data" / "report"
GPT2 = [str(DATA / f) for f in ("device.profile.json", "server.profile.json", "prune.json", "plan.json", "run.json")]
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--remote-debugging-pipe"]


def _apt_install(package: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends", package]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's chromium, installed with apt-get when missing."""
    path = shutil.which("chromium")
    if path is None:
        if os.geteuid() != 0:
            pytest.fail("chromium is missing and installing it needs root: apt-get install -y chromium")
        proc = _apt_install("chromium")
        if proc.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], capture_output=True,
                           timeout=600)
            proc = _apt_install("chromium")
        path = shutil.which("chromium")
        assert path is not None, f"apt-get install chromium failed: {proc.stderr[-1500:]}"
    return path


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, exe: str, profile_dir: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe must sit on fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, "no answer from chromium in time"
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                assert chunk, "chromium closed the debugging pipe"
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):
            self.proc.kill()
        self.proc.wait(timeout=30)
        os.close(self._w)
        os.close(self._r)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(p["exceptionDetails"].get("text", "exception"))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", "")) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(p["entry"].get("text", ""))
    return out


def open_page(dt: DevTools, url: str, screenshot: Path | None = None) -> tuple[list[dict], list[str]]:
    """Load ``url`` in a fresh tab: (each image's naturalWidth/complete/alt, error messages)."""
    target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log"):
        dt.call(f"{domain}.enable", session=sid)
    dt.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 900, "deviceScaleFactor": 1,
                                                   "mobile": False}, session=sid)
    dt.events.clear()
    dt.call("Page.navigate", {"url": url}, session=sid)
    dt.wait_for("Page.loadEventFired")
    expr = "JSON.stringify(Array.from(document.images, i => ({w: i.naturalWidth, c: i.complete, alt: i.alt})))"
    images = json.loads(dt.call("Runtime.evaluate", {"expression": expr, "returnByValue": True},
                                session=sid)["result"]["value"])
    if screenshot is not None:
        height = dt.call("Page.getLayoutMetrics", session=sid)["cssContentSize"]["height"]
        dt.call("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": min(int(height) + 1, 16000),
                                                       "deviceScaleFactor": 1, "mobile": False}, session=sid)
        data = dt.call("Page.captureScreenshot", {"format": "png"}, session=sid)["data"]
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(data))
    errors = _errors(dt.events)
    dt.call("Target.closeTarget", {"targetId": target})
    return images, errors


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    dt = DevTools(chromium, tmp_path_factory.mktemp("chromium-profile"))
    yield dt
    dt.close()


def test_the_page_renders_every_picture_without_errors(browser, tmp_path):
    out = tmp_path / "report"
    assert main(["report", *GPT2, "-o", str(out)]) == 0
    shot = ARTIFACTS / "report-page.png"
    images, errors = open_page(browser, (out / "report.html").as_uri(), screenshot=shot)
    assert len(images) == 8
    assert all(i["c"] and i["w"] > 0 for i in images), images
    assert errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    shutil.copy(shot, tmp_path / shot.name)


def test_the_check_sees_a_broken_image_and_a_console_error(browser, tmp_path):
    """The same check on a page that is broken on purpose: it must fail there."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img src='data:image/png;base64,AAAA' alt='broken'>"
                    "<script>console.error('boom')</script></body></html>")
    images, errors = open_page(browser, page.as_uri())
    assert [(i["w"], i["alt"]) for i in images] == [(0, "broken")]
    assert errors == ["boom"]
