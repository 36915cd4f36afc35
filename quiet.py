"""Is the machine quiet while coinfer times something? One check that profile, prune and run share.

Why: with one core kept busy by another process, torch on two threads ran a GPT-2 profile 8x
slower (828 ms instead of ~99 ms) with a small IQR: a low spread does not mean a quiet machine,
and such numbers then drive plans. So every timed measurement is watched by two signals:

* **reference kernel** -- a fixed matrix product (fp32, side 384 on the CPU, 2048 on a GPU, a
  millisecond or so) run with the measurement's threads before, between and after its phases.
  At each check the lower quartile of a few runs is compared with the fastest single run of the
  kernel seen in this process. OpenMP threads that have to share a core with another process
  wait for each other at every barrier, so nearly every run slows (measured: 30-200x with a busy
  loop per core); the lower quartile ignores the minority of runs that a time-slice boundary
  happens to cut on a merely busy machine;
* **other processes' CPU** -- system-wide busy CPU time minus this process tree's (itself and
  its children, e.g. the server role of ``coinfer run``), per wall second of the measurement,
  against the cores the measurement left spare (logical CPUs minus its threads).

Rule: a measurement is ``contended`` when the kernel slowed by more than
:data:`SLOWDOWN_LIMIT` at some check AND other processes used more than
:data:`CROWDING_LIMIT_CORES` cores beyond the spare ones. Either signal alone is ``busy``
(recorded and noted, not refused): a busy but steady machine on which the kernel keeps its best
speed, or a kernel slowed by something that is not another process (frequency scaling), does not
make the figures wrong in the way a hog does. Both thresholds leave room for a noisy CI machine:
a single-threaded measurement there keeps its kernel speed (measured on a 2-core VM at a load
average of 14: over 40 trials of 5 checks, the largest lower-quartile slowdown was 1.16x, the
largest median one 1.22x; the best it is held against may come from a quieter moment minutes
earlier in the same process, hence 1.5 and not 1.3), and short bursts of other work stay under
half a core on average. Limits: a machine that was contended for the whole process can hide the
kernel signal only if no single kernel run ever got every thread on a core; the CPU accounting
sees only this machine (a container's CPU quota is not read); threads sharing a physical core
with another process's hyper-thread are not counted as crowded.

torch and psutil are imported inside the functions that need them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from coinfer.errors import ContendedMeasurementError
from coinfer.reports.common import Contention, KernelCheck

SLOWDOWN_LIMIT = 1.5
CROWDING_LIMIT_CORES = 0.5
KERNEL_SIDE = {"cpu": 384, "cuda": 2048}
KERNEL_REPEATS = 9  # runs per check: their lower quartile
CALIBRATION_REPEATS = 21  # runs the first time a kernel is seen in this process: the best
# Under contention one run can take 100x longer: a check stops after this long (3 runs at least),
# so watching a contended measurement costs a fraction of a second per check, not seconds.
CHECK_BUDGET_S = 0.25
MIN_RUNS = 3

# (device, side, threads) -> fastest single kernel run in this process, ms
_best_ms: dict[tuple[str, int, int], float] = {}


def verdict(slowdown: float, crowding_cores: float) -> str:
    """``contended`` when both signals pass their limits, ``busy`` for one, else ``quiet``.

    Args:
        slowdown: The reference kernel's largest lower quartile (over the checks) over its best run.
        crowding_cores: Other processes' CPU per wall second minus the spare cores.
    """
    slow = slowdown > SLOWDOWN_LIMIT
    crowded = crowding_cores > CROWDING_LIMIT_CORES
    if slow and crowded:
        return "contended"
    return "busy" if slow or crowded else "quiet"


class QuietWatch:
    """Watches one timed measurement: ``start()``, ``checkpoint(label)`` between phases, ``stop()``.

    Args:
        device: ``cpu`` or ``cuda`` (where the reference kernel runs).
        threads: Threads the measurement uses (the kernel runs with as many); None: torch's current.
    """

    def __init__(self, device: str = "cpu", threads: int | None = None) -> None:
        self.device = "cuda" if device == "cuda" else "cpu"
        self.threads = threads
        self.side = KERNEL_SIDE[self.device]
        self.checks: list[tuple[str, float]] = []
        self._mats: Any = None
        self._start: tuple[float, float, float | None, float] | None = None

    @property
    def _key(self) -> tuple[str, int, int]:
        return (self.device, self.side, int(self.threads or 1))

    def start(self) -> QuietWatch:
        """Time the kernel (calibrating it the first time in this process) and open the CPU window."""
        import torch

        if self.threads is None:
            self.threads = torch.get_num_threads()
        if self._key not in _best_ms:
            self._runs(CALIBRATION_REPEATS)
        self.checkpoint("before")
        self._start = _cpu_snapshot()
        return self

    def checkpoint(self, label: str) -> None:
        """Time the reference kernel now; ``label`` says where in the measurement."""
        runs = self._runs(KERNEL_REPEATS)
        self.checks.append((label, statistics.quantiles(runs, n=4, method="inclusive")[0]))

    def stop(self) -> Contention:
        """Close the CPU window, time the kernel a last time and judge the measurement."""
        if self._start is None:
            raise RuntimeError("QuietWatch.stop() before start()")
        end = _cpu_snapshot()
        self.checkpoint("after")
        wall0, busy0, steal0, tree0 = self._start
        wall1, busy1, steal1, tree1 = end
        window = max(wall1 - wall0, 1e-9)
        others = max(0.0, (busy1 - busy0) - (tree1 - tree0)) / window
        steal = (steal1 - steal0) / window if steal0 is not None and steal1 is not None else None
        cpus = _logical_cpus()
        spare = float(cpus - int(self.threads or 1))
        best = _best_ms[self._key]
        checks = [KernelCheck(label=lb, lower_quartile_ms=q, slowdown=q / best if best > 0 else 1.0) for lb, q in self.checks]
        slowdown = max(c.slowdown for c in checks)
        return Contention(
            verdict=verdict(slowdown, others - spare),  # type: ignore[arg-type]
            kernel=f"fp32 GEMM {self.side}x{self.side} on {self.device}, {self.threads} threads, lower quartile of "
            f"{MIN_RUNS}-{KERNEL_REPEATS} runs per check",
            kernel_best_ms=best,
            kernel_checks=checks,
            kernel_slowdown=slowdown,
            window_s=window,
            other_cpu_cores=others,
            steal_cores=steal,
            logical_cpus=cpus,
            threads=int(self.threads or 1),
            spare_cores=spare,
            crowding_cores=others - spare,
            slowdown_limit=SLOWDOWN_LIMIT,
            crowding_limit_cores=CROWDING_LIMIT_CORES,
        )

    def _runs(self, n: int) -> list[float]:
        """Up to ``n`` timed runs of the kernel with the measurement's threads (fewer when they are slow), ms;
        updates the best."""
        import torch

        if self._mats is None:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(self.side, self.side, generator=gen).to(self.device)
            self._mats = (a, a.t().contiguous())
        a, b = self._mats
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        prev = torch.get_num_threads()
        torch.set_num_threads(int(self.threads or 1))
        times = []
        try:
            with torch.no_grad():
                a @ b  # not timed: wakes the thread pool / the GPU
                sync()
                start = time.perf_counter()
                for _ in range(n):
                    t0 = time.perf_counter()
                    a @ b
                    sync()
                    times.append((time.perf_counter() - t0) * 1e3)
                    if len(times) >= MIN_RUNS and time.perf_counter() - start > CHECK_BUDGET_S * (n / KERNEL_REPEATS):
                        break
        finally:
            torch.set_num_threads(prev)
        _best_ms[self._key] = min(_best_ms.get(self._key, float("inf")), min(times))
        return times


def _logical_cpus() -> int:
    import psutil

    return int(psutil.cpu_count(logical=True) or 1)


def _cpu_snapshot() -> tuple[float, float, float | None, float]:
    """(wall clock s, system-wide busy CPU s, steal s or None, this process tree's CPU s)."""
    import psutil

    t = psutil.cpu_times()
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
    steal = getattr(t, "steal", None)
    me = psutil.Process()
    c = me.cpu_times()
    tree = c.user + c.system + c.children_user + c.children_system  # children_*: reaped descendants
    for child in me.children(recursive=True):
        try:
            cc = child.cpu_times()
        except psutil.Error:  # it ended between listing and reading
            continue
        tree += cc.user + cc.system
    return time.perf_counter(), busy, steal, tree


def evidence(c: Contention) -> str:
    """The evidence in a few words: kernel slowdown and other processes' CPU."""
    return (
        f"reference kernel {c.kernel_slowdown:.2f}x its best in this process (limit {c.slowdown_limit:g}x), "
        f"other processes used {c.other_cpu_cores:.2f} cores with {c.spare_cores:g} spare "
        f"({c.crowding_cores:+.2f}, limit +{c.crowding_limit_cores:g}) over {c.window_s:.1f} s"
    )


def warning_line(c: Contention | None, what: str) -> str | None:
    """The one loud line for a contended measurement (None when it was not contended)."""
    if c is None or c.verdict != "contended":
        return None
    return f"WARNING: {what} was CONTENDED (timings inflated; measure again on a quiet machine): {evidence(c)}"


def note_line(c: Contention | None, what: str) -> str | None:
    """A note for a ``busy`` measurement (one signal only); None otherwise."""
    if c is None or c.verdict != "busy":
        return None
    return f"{what}: machine busy but not judged contended (one signal only): {evidence(c)}"


def refuse_if_strict(c: Contention | None, strict: bool, what: str) -> None:
    """Under ``--strict``, refuse a contended measurement before anything is written.

    Raises:
        ContendedMeasurementError: ``strict`` and the measurement was contended.
    """
    if strict and c is not None and c.verdict == "contended":
        raise ContendedMeasurementError(f"--strict: {what} was contended, nothing written: {evidence(c)}")


_HOG_LAUNCHER = (
    "import subprocess, sys\n"
    "null = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "ps = [subprocess.Popen([sys.executable, '-c', 'while True: pass'], **null) for _ in range(int(sys.argv[1]))]\n"
    "print(' '.join(str(p.pid) for p in ps), flush=True)\n"
)


@contextmanager
def cpu_hogs(n: int, timeout_s: float = 30.0) -> Iterator[list[Any]]:
    """``n`` busy-looping processes for the duration: what this check must notice (tests, benchmarks).

    They are started through a launcher that exits at once, so they are not this process's
    descendants (the check counts its own process tree's CPU as the measurement's), and the block
    starts only once every one of them has spun for a while. They are killed by pid on exit and
    waited for.

    Yields:
        Their ``psutil.Process`` objects (read ``cpu_times()`` to check that they ran).
    """
    import os
    import signal
    import subprocess
    import sys

    import psutil

    out = subprocess.run([sys.executable, "-c", _HOG_LAUNCHER, str(n)], capture_output=True, text=True, check=True,
                         timeout=timeout_s)
    hogs = [psutil.Process(int(pid)) for pid in out.stdout.split()]
    try:
        deadline = time.monotonic() + timeout_s
        while any(sum(h.cpu_times()[:2]) < 0.05 for h in hogs):
            if time.monotonic() > deadline:
                raise RuntimeError("the CPU hogs never started spinning")
            time.sleep(0.05)
        yield hogs
    finally:
        for h in hogs:
            try:
                os.kill(h.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        psutil.wait_procs(hogs, timeout=timeout_s)  # gone (reaped by init) before the caller goes on
