"""Both roles on one machine: servers (and relays) as child processes, optionally in a namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinfer import errors
from coinfer.errors import DeviceUnavailableError

SERVER_START_TIMEOUT_S = 300.0


@dataclass
class ChildServer:
    """A server process started for a local run; its stdout events are collected."""

    proc: subprocess.Popen
    host: str = "127.0.0.1"
    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


def _worker_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "coinfer.runner.worker", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # The roles take turns on the same cores: idle OpenMP threads must sleep soon, not spin.
    from coinfer.openmp import child_env

    return child_env(env)


def start_server(model: str, seed: int, threads: int, timeout_s: float, prefix: list[str] | None = None,
                 shard: list[str] | None = None, token_file: str | None = None,
                 extra_args: list[str] | None = None, host: str = "127.0.0.1") -> ChildServer:
    """Start ``coinfer.runner.worker serve`` on ``host`` (port chosen by the OS) and wait until it listens.

    ``shard`` is (path, sha256) of an exported shard config the server runs instead of the model's stages;
    ``token_file`` the shared secret it requires (else ``$COINFER_TOKEN``, inherited).
    """
    extra = ["--shard", shard[0], "--shard-sha256", shard[1]] if shard else []
    extra += ["--token-file", token_file] if token_file else []
    extra += extra_args or []
    cmd = [*(prefix or []), *_worker_cmd("serve", "--listen", f"{host}:0", "--model", model, "--seed", str(seed),
                                         "--threads", str(threads), "--timeout-s", str(timeout_s), *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    child = ChildServer(proc, host)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            child.events.append(ev)
            if ev.get("event") == "listening":
                child.port = int(ev["port"])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not child.port:
        stop_server(child)
        err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
        raise DeviceUnavailableError(f"the local server did not start: {err[-1] if err else 'no output'}")
    return child


def stop_server(child: ChildServer) -> None:
    """Terminate a child server and reap it."""
    if child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


@contextmanager
def servers(model: str, seed: int, threads: int, count: int, timeout_s: float,
            prefix: list[str] | None = None, shard: list[str] | None = None,
            token_file: str | None = None, host: str = "127.0.0.1") -> Iterator[list[ChildServer]]:
    """``count`` child servers (listening on ``host``), stopped on exit whatever happens."""
    with ExitStack() as stack:
        out: list[ChildServer] = []
        for _ in range(count):
            child = start_server(model, seed, threads, timeout_s, prefix, shard, token_file, host=host)
            stack.callback(stop_server, child)
            out.append(child)
        yield out


def device_in_child(request: dict[str, Any], prefix: list[str]) -> dict[str, Any]:
    """Run the device role in a child process (inside the namespace) and return its outcome."""
    with tempfile.TemporaryDirectory(prefix="coinfer-run-") as tmp:
        req_path, out_path = Path(tmp) / "request.json", Path(tmp) / "outcome.json"
        req_path.write_text(json.dumps(request))
        res = subprocess.run([*prefix, *_worker_cmd("device", str(req_path), str(out_path))],
                             capture_output=True, text=True, env=_env(), check=False)
        if not out_path.exists():
            tail = res.stderr.strip().splitlines()
            raise DeviceUnavailableError(f"the device process failed: {tail[-1] if tail else res.returncode}")
        outcome = json.loads(out_path.read_text())
    if "error" in outcome:
        cls = getattr(errors, outcome.get("error_class", ""), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.CoinferError)):
            cls = DeviceUnavailableError
        raise cls(outcome["error"])
    return outcome
