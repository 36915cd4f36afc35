"""Memory of a profiled model: each stage's transient prefill peak, and the whole run's peak.

A stage's peak is what it allocates above what was allocated when it began (weights excluded):
from the CUDA allocator on a GPU, from torch.profiler's CPU allocation trace otherwise. The run's
peak is the process's resident maximum on CPU, the allocator's maximum on CUDA. torch is
imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from coinfer.vocab import EMBED, HEAD, block_name


def cuda_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn``; its CUDA memory peak above what was allocated when it started."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    return res, max(0, int(torch.cuda.max_memory_allocated()) - base)


@contextmanager
def stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (C++ logging bypasses Python)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` under torch's profiler; the peak of its running sum of CPU allocations and frees."""
    from torch.profiler import ProfilerActivity, profile

    with stderr_silenced():  # the profiler's C++ side logs start/stop lines on fd 2
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            res = fn()
    current = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += ev.self_cpu_memory_usage  # self: children are events of their own
        peak = max(peak, current)
    return res, int(peak)


def stage_peaks(ad: Any, ids: Any, k: int, device: str) -> dict[str, int]:
    """Per stage, the prefill memory peak above what was allocated when it started (a stateless pass)."""
    from coinfer.models.adapters.base import ShardState

    measure = cuda_peak if device == "cuda" else cpu_peak
    out: dict[str, int] = {}
    state = ShardState(cache=None)
    h, out[EMBED] = measure(lambda: ad.embed(ids, 0))
    ctx = ad.context(h, state, 0, None) if ad.num_blocks == 0 else None
    for i in range(ad.num_blocks):

        def step(i: int = i, h: Any = h, ctx: Any = ctx) -> tuple[Any, Any]:
            c = ad.context(h, state, 0, None) if i == 0 else ctx  # charged to block.0
            return c, ad.block(i, h, c)

        (ctx, h), out[block_name(i)] = measure(step)
    _, out[HEAD] = measure(lambda: ad.head(h, ctx, k))
    return out


def run_peak(device: str, cuda_peak_before: int) -> tuple[int, str]:
    """(bytes, source) of the whole run's memory peak.

    Args:
        device: ``cpu`` (the process's resident maximum, ``ru_maxrss``) or ``cuda`` (the
            allocator's maximum, ``cuda_max_allocated``).
        cuda_peak_before: The allocator's maximum read before per-stage peaks reset it.
    """
    if device == "cpu":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    import torch

    return max(cuda_peak_before, int(torch.cuda.max_memory_allocated())), "cuda_max_allocated"
