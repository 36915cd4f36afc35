"""The quiet check (coinfer.quiet) against real CPU hogs, on GPT-2, and the measured memory bandwidth.

GPT-2 (124M shape, random weights) is profiled with the same settings under each condition, in
this order: quiet, one hog (one core kept busy: the issue's case), one hog per CPU, quiet again.
A hog is a ``while True: pass`` process that is not a descendant of this one
(:func:`coinfer.quiet.cpu_hogs`). For each condition it records the verdict and its evidence
(reference-kernel slowdown, other processes' cores against the spare ones), the whole-model prefill
and decode medians (and their ratio to the first quiet profile), the memory bandwidth and the
whole-model decode step's share of it, the load average and the wall time. Before the first
condition it reads how busy the machine already is (other processes' cores over a few seconds).

Run (the figures to report; about 3-6 minutes on 2 cores, more under load)::

    .venv/bin/python benchmarks/bench_contention.py --out benchmarks/results/contention_cpu.json

Smoke run (proves the script works)::

    .venv/bin/python benchmarks/bench_contention.py --seq-len 32 --decode-context 32 --repeats 2 \
        --out /tmp/contention_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def background_cores(seconds: float) -> float:
    """Cores other processes keep busy right now (this process is idle while it reads)."""
    import psutil

    t0, w0 = psutil.cpu_times(), time.perf_counter()
    time.sleep(seconds)
    t1, w1 = psutil.cpu_times(), time.perf_counter()
    busy = sum(getattr(t1, f) - getattr(t0, f) for f in ("user", "nice", "system", "irq", "softirq"))
    return busy / (w1 - w0)


def one_condition(name: str, hogs: int, loaded: Any, opts: Any, first: dict | None) -> dict:
    from coinfer.profiler.measure import profile_loaded
    from coinfer.quiet import cpu_hogs, evidence

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if hogs:
        with cpu_hogs(hogs) as procs:
            c0 = sum(sum(p.cpu_times()[:2]) for p in procs)
            p = profile_loaded(loaded, opts)
            hog_cpu = sum(sum(p_.cpu_times()[:2]) for p_ in procs) - c0
    else:
        p, hog_cpu = profile_loaded(loaded, opts), 0.0
    wall = time.perf_counter() - t0
    wm, c, bw = p.whole_model, p.contention, p.memory_bandwidth
    row = {
        "condition": name,
        "hog_processes": hogs,
        "hog_cpu_s": hog_cpu,
        "wall_s": wall,
        "load_average_before_after": [load0, os.getloadavg()],
        "verdict": c.verdict,
        "evidence": evidence(c),
        "contention": c.model_dump(mode="json"),
        "prefill_ms": wm.prefill.median_ms,
        "prefill_iqr_ms": wm.prefill.iqr_ms,
        "decode_ms": {str(d.context_tokens): d.timing.median_ms for d in wm.decode},
        "decode_iqr_ms": {str(d.context_tokens): d.timing.iqr_ms for d in wm.decode},
        "noisy_stages": [s.name for s in p.stages if s.noisy],
        "memory_bandwidth": bw.model_dump(mode="json") if bw else None,
        "decode_read_bytes": {str(d.context_tokens): d.read_bytes for d in wm.decode},
        "decode_bandwidth_bound_ms": {str(d.context_tokens): d.bandwidth_bound_ms for d in wm.decode},
        "decode_bandwidth_fraction": {str(d.context_tokens): d.bandwidth_fraction for d in wm.decode},
        "block_decode_bandwidth_fraction": {
            str(ctx): [s.decode[i].bandwidth_fraction for s in p.stages if s.stage_kind == "block"]
            for i, ctx in enumerate(p.context.decode_context_tokens)
        },
        "gemm_peak_flops_per_s": p.gemm_peak_flops_per_s,
    }
    if first is not None:
        row["prefill_vs_first_quiet"] = row["prefill_ms"] / first["prefill_ms"]
        row["decode_vs_first_quiet"] = {k: v / first["decode_ms"][k] for k, v in row["decode_ms"].items()}
    return row


def main() -> int:
    from coinfer.openmp import configure_openmp_wait

    configure_openmp_wait()  # the same OpenMP wait policy as `coinfer profile` (before torch loads)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--decode-context", default="128")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--min-time-s", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--background-s", type=float, default=5.0, help="seconds spent reading the background load first")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import psutil
    import torch

    from coinfer.models.loading import load_model
    from coinfer.profiler.measure import ProfileOptions, parse_context_list
    from coinfer.reports.io import atomic_write_bytes, check_writable

    check_writable(args.out)
    cpus = psutil.cpu_count(logical=True) or 1
    background = background_cores(args.background_s)
    print(f"background: other processes kept {background:.2f} of {cpus} cores busy over {args.background_s:g} s; "
          f"load average {os.getloadavg()}", flush=True)
    opts = ProfileOptions(seq_len=args.seq_len, decode_context=parse_context_list(args.decode_context),
                          repeats=args.repeats, warmup=args.warmup, min_time_s=args.min_time_s, threads=args.threads,
                          emissions=False, energy=False, power_w=None)
    loaded = load_model(args.model)
    rows: list[dict] = []
    for name, hogs in (("quiet", 0), ("one hog", 1), (f"{cpus} hogs", cpus), ("quiet again", 0)):
        row = one_condition(name, hogs, loaded, opts, rows[0] if rows else None)
        rows.append(row)
        bw = row["memory_bandwidth"]
        share = ", ".join(f"@{k} {v:.0%}" for k, v in row["decode_bandwidth_fraction"].items() if v is not None)
        print(f"{name:>12}: {row['verdict']:>9}  prefill {row['prefill_ms']:8.1f} ms  decode "
              f"{', '.join(f'@{k} {v:.1f}' for k, v in row['decode_ms'].items())} ms  "
              f"bandwidth {bw['bytes_per_s'] / 1e9:.3g} GB/s, decode share {share}  ({row['evidence']})", flush=True)
    doc = {
        "benchmark": "bench_contention",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "torch": torch.__version__,
        "logical_cpus": cpus,
        "background_other_cores_before": background,
        "results": rows,
    }
    atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
