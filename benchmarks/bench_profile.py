"""Benchmark of `coinfer profile`: coverage, back-to-back repeatability and wall time.

For each model, on one device, it takes two full profiles back to back with the same settings
and reports:

- coverage: sum of stage medians over the whole model's median (prefill, and decode per context);
  target 0.9-1.1; also the pass coverage (median of staged-pass totals over the whole model's
  median), which noise spikes landing in different stages cannot pull down;
- repeatability: per-stage ratio of the second profile's median to the first's (prefill and every
  decode context); target: every stage within 10% (|ratio - 1| <= 0.10);
- wall time of a default profile (model load included), target < 60 s for GPT-2 and < 5 min for
  the 1.1B preset on the CPU;
- the memory bandwidth each profile measured, and the share of it that decode reached: per
  context the whole model's (bytes a step reads / bandwidth / measured time) and the blocks'
  (min, median, max), with the bound in ms;
- each profile's quiet-check verdict and evidence (coinfer.quiet): figures from a contended
  profile are not figures of this machine.

The real figures (quiet machine, the CLI's defaults: 128 tokens, contexts 128/512/2048 that fit,
10 repeats, 2 warm-ups, emissions on)::

    .venv/bin/python benchmarks/bench_profile.py --models gpt2,llama-1.1b --device cpu \
        --out benchmarks/results/profile_cpu.json

On a GPU machine add ``--device cuda --dtype fp16 --out benchmarks/results/profile_cuda_fp16.json``.
A smoke run on reduced settings (proves the script works, figures are not meaningful)::

    .venv/bin/python benchmarks/bench_profile.py --models gpt2 --repeats 3 --seq-len 32 \
        --decode-context 32 --no-emissions --out benchmarks/results/profile_smoke.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any


def _ratios(a: Any, b: Any) -> dict[str, Any]:
    """Second over first median, per stage, for prefill and every decode context."""
    rows = {}
    worst = 0.0
    for sa, sb in zip(a.stages, b.stages, strict=True):
        pre = sb.prefill.median_ms / sa.prefill.median_ms if sa.prefill.median_ms else None
        dec = [
            db.timing.median_ms / da.timing.median_ms if da.timing.median_ms else None
            for da, db in zip(sa.decode, sb.decode, strict=True)
        ]
        for r in [pre, *dec]:
            if r is not None:
                worst = max(worst, abs(r - 1))
        rows[sa.name] = {"prefill": pre, "decode": dec}
    within = sum(
        1
        for v in rows.values()
        for r in [v["prefill"], *v["decode"]]
        if r is not None and abs(r - 1) <= 0.10
    )
    total = sum(1 for v in rows.values() for r in [v["prefill"], *v["decode"]] if r is not None)
    return {"per_stage": rows, "max_abs_deviation": worst, "within_10pct": within, "compared": total}


def _bandwidth_share(p: Any) -> dict[str, Any]:
    """The memory bandwidth and, per decode context, the whole model's and the blocks' share of it."""
    from statistics import median

    bw = p.memory_bandwidth
    per_ctx = {}
    for i, d in enumerate(p.whole_model.decode):
        blocks = [s.decode[i].bandwidth_fraction for s in p.stages if s.stage_kind == "block"]
        blocks = [b for b in blocks if b is not None]
        per_ctx[str(d.context_tokens)] = {
            "whole_fraction": d.bandwidth_fraction,
            "whole_bound_ms": d.bandwidth_bound_ms,
            "whole_measured_ms": d.timing.median_ms,
            "read_bytes": d.read_bytes,
            "block_fraction_min_median_max": [min(blocks), median(blocks), max(blocks)] if blocks else None,
        }
    return {"bandwidth": bw.model_dump(mode="json") if bw else None, "decode": per_ctx}


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from coinfer.models.loading import load_model
    from coinfer.profiler.hardware import check_device
    from coinfer.profiler.measure import ProfileOptions, parse_context_list, profile_loaded

    opts = ProfileOptions(
        device=args.device,
        dtype=args.dtype,
        seq_len=args.seq_len,
        batch=args.batch,
        decode_context=None if args.decode_context is None else parse_context_list(args.decode_context),
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
        emissions=args.emissions,
    )
    accel = check_device(args.device, args.dtype)
    t0 = time.perf_counter()
    loaded = load_model(name)
    load_s = time.perf_counter() - t0
    first = profile_loaded(loaded, opts, accelerator=accel)
    wall_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    second = profile_loaded(loaded, opts, accelerator=accel)
    second_s = time.perf_counter() - t1
    out = {
        "model": name,
        "weights": first.model.weights,
        "load_s": load_s,
        "default_profile_wall_s": wall_s,
        "second_profile_s": second_s,
        "coverage": {
            "first": {"prefill": first.whole_model.prefill_coverage, "decode": first.whole_model.decode_coverage},
            "second": {"prefill": second.whole_model.prefill_coverage, "decode": second.whole_model.decode_coverage},
        },
        "pass_coverage": {
            "first": {
                "prefill": first.whole_model.prefill_pass_coverage,
                "decode": first.whole_model.decode_pass_coverage,
            },
            "second": {
                "prefill": second.whole_model.prefill_pass_coverage,
                "decode": second.whole_model.decode_pass_coverage,
            },
        },
        "repeatability": _ratios(first, second),
        "whole_model_ms": {
            "prefill": [first.whole_model.prefill.median_ms, second.whole_model.prefill.median_ms],
            "decode": {
                str(d.context_tokens): [d.timing.median_ms, e.timing.median_ms]
                for d, e in zip(first.whole_model.decode, second.whole_model.decode, strict=True)
            },
        },
        "gemm_peak_flops_per_s": first.gemm_peak_flops_per_s,
        "memory_bandwidth_share": {"first": _bandwidth_share(first), "second": _bandwidth_share(second)},
        "contention": {
            "first": first.contention.model_dump(mode="json") if first.contention else None,
            "second": second.contention.model_dump(mode="json") if second.contention else None,
        },
        "energy_source": first.context.energy_source,
        "noisy_stages": [s.name for s in first.stages if s.noisy],
        "context": first.context.model_dump(mode="json"),
        "first_profile_notes": first.notes,
    }
    if args.keep_profiles:
        from coinfer.reports.io import to_json

        out["first_profile"] = __import__("json").loads(to_json(first))
    del loaded
    return out


def main() -> int:
    from coinfer.openmp import configure_openmp_wait

    configure_openmp_wait()  # the same OpenMP wait policy as `coinfer profile` (before torch loads)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt2,llama-1.1b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode-context", default=None, help="comma list; default: the CLI's defaults")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-emissions", dest="emissions", action="store_false")
    ap.add_argument("--keep-profiles", action="store_true", help="embed the first profile of each model")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    from coinfer.reports.io import atomic_write_bytes, check_writable

    check_writable(args.out)
    load_before = os.getloadavg()
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = bench_model(name, args)
        results.append(r)
        print(
            f"{name} {args.device} {args.dtype}: wall {r['default_profile_wall_s']:.1f} s (load {r['load_s']:.1f} s), "
            f"coverage prefill {r['coverage']['first']['prefill']:.3f}/{r['coverage']['second']['prefill']:.3f} "
            f"decode {[round(c, 3) for c in r['coverage']['first']['decode']]}; pass coverage prefill "
            f"{r['pass_coverage']['first']['prefill']:.3f} decode "
            f"{[round(c, 3) for c in r['pass_coverage']['first']['decode']]}, "
            f"repeatability max |b/a-1| {r['repeatability']['max_abs_deviation']:.3f} "
            f"({r['repeatability']['within_10pct']}/{r['repeatability']['compared']} within 10%)",
            flush=True,
        )
        share = r["memory_bandwidth_share"]["first"]
        if share["bandwidth"]:
            per = ", ".join(
                f"@{c} whole {v['whole_fraction']:.0%} (bound {v['whole_bound_ms']:.3g} ms, measured "
                f"{v['whole_measured_ms']:.3g} ms), blocks {'/'.join(f'{x:.0%}' for x in v['block_fraction_min_median_max'])}"
                for c, v in share["decode"].items()
                if v["whole_fraction"] is not None
            )
            print(f"  memory bandwidth {share['bandwidth']['bytes_per_s'] / 1e9:.3g} GB/s "
                  f"({share['bandwidth']['method']}); decode share (min/median/max for blocks): {per}", flush=True)
        verdicts = [c["verdict"] if c else "-" for c in r["contention"].values()]
        print(f"  quiet check of the two profiles: {', '.join(verdicts)}", flush=True)
    doc = {
        "benchmark": "bench_profile",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "torch": torch.__version__,
        "load_average_before_after": [load_before, os.getloadavg()],
        "results": results,
    }
    import json

    atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
