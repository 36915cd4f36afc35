"""This machine's compute facts: physical cores, device and dtype checks, the GEMM peak."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from coinfer.errors import DeviceUnavailableError

DTYPES = ("fp32", "fp16", "bf16")


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def torch_dtype(name: str) -> Any:
    """The torch dtype for ``fp32``, ``fp16`` or ``bf16``."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_device(device: str, dtype: str) -> str | None:
    """Fail early when ``device`` cannot run ``dtype``; return the accelerator's name (CUDA) or None.

    The check runs a tiny matrix product in the dtype, so a build without the kernel fails here
    and not half-way through a profile.

    Raises:
        DeviceUnavailableError: No CUDA device, or the device cannot multiply in ``dtype``.
    """
    import torch

    if device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda: no CUDA GPU is available on this machine")
        if dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise DeviceUnavailableError(f"--dtype bf16: {torch.cuda.get_device_name(0)} cannot run bf16")
    try:
        a = torch.ones(8, 8, dtype=torch_dtype(dtype), device=device)
        (a @ a).sum().item()
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeviceUnavailableError(f"--dtype {dtype} cannot run on {device}: {first}") from None
    return torch.cuda.get_device_name(0) if device == "cuda" else None


def synchronizer(device: str):
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def gemm_peak_flops_per_s(device: str, dtype: str, max_n: int | None = None, target_s: float = 0.05) -> tuple[float, int]:
    """Best FLOP/s of a square matrix product in ``dtype``, growing it until one takes ``target_s``.

    Args:
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``fp16`` or ``bf16``.
        max_n: Largest side tried (default 4096 on CPU, 8192 on CUDA).
        target_s: Grow the matrix until one product takes at least this long.

    Returns:
        (FLOP/s, matrix side used). The best of three timed products is taken: a peak, not a median.
    """
    import torch

    max_n = max_n or (8192 if device == "cuda" else 4096)
    sync = synchronizer(device)
    dt = torch_dtype(dtype)
    n = 256
    best = 0.0
    with torch.no_grad():
        while True:
            gen = torch.Generator(device="cpu").manual_seed(0)
            a = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
            b = torch.randn(n, n, generator=gen).to(device=device, dtype=dt)
            a @ b  # warm-up (kernel selection, first-touch)
            sync()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                a @ b
                sync()
                times.append(time.perf_counter() - t0)
            best = 2 * n**3 / min(times)
            if min(times) >= target_s or n >= max_n:
                return best, n
            n *= 2
