"""Link emulation on one machine: a private network namespace whose loopback tc shapes.

This kernel has ``tbf`` but no ``netem``, so the kernel can limit the rate but not add delay:
the RTT is added at the transport boundary instead (see ``transport.Group.send``) and every
result says so. Traffic stays on the namespace's own 127.0.0.1: it never leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from coinfer import units
from coinfer.errors import UserInputError


def parse_rate_bps(text: str) -> float:
    """``--emulate-rate``: a rate read by the one unit parser (:mod:`coinfer.units`), in bit/s."""
    return units.parse_rate_bps(text, "--emulate-rate")


def parse_duration_ms(text: str) -> float:
    """``--emulate-rtt``: a duration read by the one unit parser (:mod:`coinfer.units`), in ms."""
    return units.parse_duration_ms(text, "--emulate-rtt")


@dataclass(frozen=True)
class Namespace:
    """A shaped private namespace: its name and the qdisc command applied."""

    name: str
    qdisc: str

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.name]


def tbf_burst_bytes(rate_bps: float) -> int:
    """The token bucket: as small as tbf allows, so a message pays about bytes / rate.

    The bucket refills while the parties compute, then lets that many bytes through at loopback
    speed: with 16 KB a 48 KB prefill went 40% faster than 5 Mbit/s and a 3 KB decode step took
    no time at all. tbf needs more than one frame (1514 B at MTU 1500) and about rate / HZ.
    """
    return int(max(1600, rate_bps / 8 / 1000))


# tc shapes Ethernet frames: at MTU 1500 a TCP segment carries 1448 payload bytes (1500 - 20 IP -
# 32 TCP with timestamps) in a 1514-byte frame (+ 14 Ethernet). A 2 MB transfer between two
# namespaces over a veth shaped to 20 Mbit/s took 1.047x bytes / rate, this ratio (1514 / 1448).
PAYLOAD_SHARE = 1448 / 1514


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair, each shaping its egress: the device's and the server's."""

    device: Namespace
    server: Namespace
    server_ip: str

    @property
    def qdisc(self) -> str:
        """Both tc commands."""
        return f"{self.device.qdisc}; {self.server.qdisc}"


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise UserInputError("--emulate-rate needs root (it creates a network namespace and shapes it with tc)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UserInputError(f"--emulate-rate needs the '{tool}' command (iproute2)")


def _tbf(ns: str, dev: str, rate_bps: float) -> list[str]:
    return ["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(rate_bps)}bit",
            "burst", str(tbf_burst_bytes(rate_bps)), "latency", "1000ms"]


@contextmanager
def veth_namespaces(rate_bps: float) -> Iterator[VethPair]:
    """``coinfer-<pid>-dev`` and ``coinfer-<pid>-srv`` joined by a veth pair (10.x.y.1 and .2),
    each side's egress shaped to ``rate_bps``: a real TCP path between two network stacks. Both
    namespaces (and with them the veth) are deleted afterwards, whatever happens.

    Raises:
        UserInputError: Not root, or ``ip`` / ``tc`` missing or failing.
    """
    _check_tools()
    pid = os.getpid()
    dev, srv = f"coinfer-{pid}-dev", f"coinfer-{pid}-srv"
    a, b = f"cfd{pid % 10**7}", f"cfs{pid % 10**7}"  # interface names: 15 characters at most
    net = f"10.{(pid >> 8) % 250 + 1}.{pid % 256}"
    for ns in (dev, srv):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)  # stale, from a crash
    try:
        _sh(["ip", "netns", "add", dev])
        _sh(["ip", "netns", "add", srv])
        _sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        _sh(["ip", "link", "set", a, "netns", dev])
        _sh(["ip", "link", "set", b, "netns", srv])
        shaped = []
        for ns, link, ip in ((dev, a, f"{net}.1"), (srv, b, f"{net}.2")):
            _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            _sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link])
            # No segmentation offload: tbf must see frames, not 64 KB super-packets larger than its bucket.
            _sh(["ip", "-n", ns, "link", "set", link, "gso_max_size", "1500", "up"])
            cmd = _tbf(ns, link, rate_bps)
            _sh(cmd)
            shaped.append(Namespace(ns, " ".join(cmd)))
        yield VethPair(shaped[0], shaped[1], f"{net}.2")
    finally:
        for ns in (dev, srv):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def _sh(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise UserInputError(f"link emulation: '{' '.join(cmd)}' failed: {res.stderr.strip() or res.returncode}")


@contextmanager
def shaped_namespace(rate_bps: float) -> Iterator[Namespace]:
    """Create ``coinfer-<pid>``, bring its loopback up at MTU 1500, shape it, delete it afterwards.

    Raises:
        UserInputError: Not root, or ``ip`` / ``tc`` missing or failing.
    """
    _check_tools()
    name = f"coinfer-{os.getpid()}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)  # a stale one from a crash
    _sh(["ip", "netns", "add", name])
    try:
        _sh(["ip", "-n", name, "link", "set", "lo", "up"])
        # tbf stalls on loopback's 64 KB default MTU (packets larger than the bucket).
        _sh(["ip", "-n", name, "link", "set", "lo", "mtu", "1500"])
        qdisc = _tbf(name, "lo", rate_bps)
        _sh(qdisc)
        yield Namespace(name, " ".join(qdisc))
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
