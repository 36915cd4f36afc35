"""The memory-bandwidth limit of batch-1 decode: the machine's bandwidth, and what a decode step reads.

A decode step reads every weight of a stage once (the embedding only the rows it looks up) plus
the KV cache at the current context; over the memory bandwidth that is the least time the step can
take. :func:`measure_bandwidth` finds the bandwidth STREAM-style: copy (``a = b``, 2 x N x 4 bytes
moved) and triad (``a = b + s * c``, 3 x N x 4 bytes) passes over fp32 buffers far larger than the
last-level cache, with the measurement's threads, best pass of each; a GPU copies device to
device. :func:`decode_read_bytes` counts the bytes with the profile's own accounting
(``param_bytes`` per stage at the weights' dtype, ``kv_cache_bytes_per_token``). torch is imported
inside the functions that need it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from coinfer.reports.profile import MemoryBandwidth

MIN_BUFFER_BYTES = 256 * 2**20
MAX_BUFFER_BYTES = 2**30
CACHE_MULTIPLE = 4  # buffers this many times the last-level cache (three of them for the triad)
PASSES = 5
ELEMENT_BYTES = 4  # fp32 buffers: bandwidth does not depend on the dtype streamed


def last_level_cache_bytes(device: str = "cpu", sysfs: str = "/sys/devices/system/cpu") -> int | None:
    """The last-level cache: the CPU's total L3 (each shared instance once), or a GPU's L2.

    Args:
        device: ``cpu`` or ``cuda``.
        sysfs: Root of the CPU cache description (a parameter so tests can point it elsewhere).

    Returns:
        Bytes, or None when the size cannot be read.
    """
    if device == "cuda":
        import torch

        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)) or None
    seen: dict[str, int] = {}
    best_level = 0
    for index in Path(sysfs).glob("cpu[0-9]*/cache/index[0-9]*"):
        try:
            level = int((index / "level").read_text())
            size = _parse_size((index / "size").read_text().strip())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if level > best_level:
            seen, best_level = {}, level
        if level == best_level:
            seen[shared] = size
    return sum(seen.values()) or None


def _parse_size(text: str) -> int:
    """``32768K`` / ``2M`` / ``1024`` -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


def buffer_bytes_for(cache_bytes: int | None) -> int:
    """Each buffer's size: 4x the last-level cache, at least 256 MiB, at most 1 GiB (unless 256 MiB is more)."""
    want = CACHE_MULTIPLE * cache_bytes if cache_bytes else 0
    return max(MIN_BUFFER_BYTES, min(want, MAX_BUFFER_BYTES))


def measure_bandwidth(device: str = "cpu", buffer_bytes: int | None = None, passes: int = PASSES) -> MemoryBandwidth:
    """Best of ``passes`` copy and triad passes, alternated, over three fp32 buffers.

    Runs with torch's current threads (the profile sets them first). The buffers are written once
    before timing so no pass pays for first-touch page faults.

    Args:
        device: ``cpu`` or ``cuda``.
        buffer_bytes: Bytes per buffer (default: :func:`buffer_bytes_for` the last-level cache).
        passes: Timed passes of each kernel.
    """
    import torch

    cache = last_level_cache_bytes(device)
    nbytes = buffer_bytes or buffer_bytes_for(cache)
    n = nbytes // ELEMENT_BYTES
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a = torch.zeros(n, device=device)
    b = torch.ones(n, device=device)
    c = torch.full((n,), 2.0, device=device)
    best = {"copy": 0.0, "triad": 0.0}
    moved = {"copy": 2 * n * ELEMENT_BYTES, "triad": 3 * n * ELEMENT_BYTES}
    kernels = {"copy": lambda: a.copy_(b), "triad": lambda: torch.add(b, c, alpha=3.0, out=a)}
    with torch.no_grad():
        for k in kernels.values():  # untimed: first touch, thread pool start
            k()
        for _ in range(passes):
            for name, k in kernels.items():
                sync()
                t0 = time.perf_counter()
                k()
                sync()
                best[name] = max(best[name], moved[name] / (time.perf_counter() - t0))
    method = max(best, key=best.get)
    return MemoryBandwidth(
        bytes_per_s=best[method],
        method=method,  # type: ignore[arg-type]
        copy_bytes_per_s=best["copy"],
        triad_bytes_per_s=best["triad"],
        buffer_bytes=n * ELEMENT_BYTES,
        last_level_cache_bytes=cache,
        passes=passes,
        threads=torch.get_num_threads() if device == "cpu" else None,
        device=device,  # type: ignore[arg-type]
    )


def embedding_rows_saving(ad: Any, batch: int) -> int:
    """Bytes of the embedding stage's lookup tables that one decode step does NOT read.

    A decode step looks up one row per sequence in each table (token, position, ...), not the
    whole table that ``param_bytes`` counts.
    """
    import torch

    saved = 0
    seen: set[int] = set()
    for mod in ad.embed_modules().values():
        for m in mod.modules():
            if isinstance(m, torch.nn.Embedding) and id(m.weight) not in seen:
                seen.add(id(m.weight))
                w = m.weight
                rows = min(batch, w.shape[0])
                saved += (w.shape[0] - rows) * w.shape[1] * w.element_size()
    return saved


def decode_read_bytes(param_bytes: int, kv_bytes_per_token: int, context: int, embed_saving: int = 0) -> int:
    """Bytes one decode step of a stage reads: its weights (less the embedding rows not looked up)
    plus its KV cache at ``context`` tokens."""
    return param_bytes - embed_saving + kv_bytes_per_token * context


def bound_and_fraction(read_bytes: int, median_ms: float, bw: MemoryBandwidth | None) -> tuple[float | None, float | None]:
    """(bytes / bandwidth in ms, that bound over the measured median); Nones without a bandwidth."""
    if bw is None or bw.bytes_per_s <= 0:
        return None, None
    bound = read_bytes / bw.bytes_per_s * 1e3
    return bound, (bound / median_ms if median_ms > 0 else None)
