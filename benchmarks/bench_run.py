"""Benchmark of `coinfer run`: predicted vs measured end-to-end latency at three link rates.

For each model it profiles the model once (``coinfer profile``'s library call, on this machine),
then runs the split for real at each rate with both roles local, inside a private network
namespace whose loopback tc shapes to the rate (RTT added at the transport boundary), and
compares each phase with the planner's prediction from that profile (``--device-profile``; the
same profile stands for the server, as both roles share this machine). Target: predicted end to
end within 15% of measured at every rate. Needs root (ip netns, tc).

Real figures (a quiet machine; takes ~10 min)::

    sudo .venv/bin/python benchmarks/bench_run.py --models gpt2,minilm --rates 5,50,500 \
        --prompt-tokens 128 --new-tokens 32 --repeats 5 --profile-repeats 10 --interleave \
        --out benchmarks/results/run_bench.json

A smoke run on reduced settings (proves the script works; on a shared machine the figures are
noise)::

    .venv/bin/python benchmarks/bench_run.py --models gpt2,minilm --rates 5,50,500 \
        --prompt-tokens 32 --new-tokens 8 --repeats 2 --profile-repeats 3 \
        --out benchmarks/results/run_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_CUTS = {"gpt2": 7, "minilm": 4}  # embed + 6 of 12 blocks; embed + 3 of 6 blocks


def _terms(phase: Any) -> dict[str, Any]:
    return {
        term: {"measured_ms": round(m.measured_ms, 3),
               "predicted_ms": None if m.predicted_ms is None else round(m.predicted_ms, 3),
               "error_pct": None if m.error_pct is None else round(m.error_pct, 1)}
        for term, m in (("device_compute", phase.device_compute), ("transfer", phase.transfer),
                        ("server_compute", phase.server_compute), ("end_to_end", phase.end_to_end))
    }


def main(argv: list[str] | None = None) -> int:
    # Before torch loads: both roles share the cores and must not spin while the other computes
    # (the profile is taken under the same setting).
    from coinfer.openmp import configure_openmp_wait

    configure_openmp_wait()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2,minilm")
    p.add_argument("--rates", default="5,50,500", help="link rates in Mbit/s")
    p.add_argument("--rtt-ms", type=float, default=10.0)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps (decoders)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--wire-dtype", default="fp32")
    p.add_argument("--cuts", default="", help="per model, e.g. gpt2=7,minilm=4 (stages on the device)")
    p.add_argument("--target-pct", type=float, default=15.0)
    p.add_argument("--link", default="loopback", choices=("loopback", "veth"),
                   help="veth: device and server in two namespaces joined by a veth pair, each shaping its egress")
    p.add_argument("--interleave", action="store_true",
                   help="re-profile before every rate (a busy machine drifts 10-30%% between rounds)")
    p.add_argument("--out", default="benchmarks/results/run_bench.json")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_run needs root: it shapes a private network namespace with tc", file=sys.stderr)
        return 2

    import torch

    from coinfer.profiler.measure import ProfileOptions, run_profile
    from coinfer.reports.io import atomic_write_bytes, write_json
    from coinfer.runner.api import RunOptions, run_command

    threads = args.threads or torch.get_num_threads()
    cuts = dict(DEFAULT_CUTS)
    for item in filter(None, args.cuts.split(",")):
        k, v = item.split("=")
        cuts[k] = int(v)
    rates = [float(r) for r in args.rates.split(",")]
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        for model in args.models.split(","):
            is_decoder = model != "minilm" and not model.startswith("bert")
            ctx = [args.prompt_tokens, args.prompt_tokens + args.new_tokens] if is_decoder else []
            prof_path = Path(tmp) / f"{model}.profile.json"

            def profile(model: str = model, ctx: list[int] = ctx, prof_path: Path = prof_path) -> None:
                t0 = time.time()
                prof = run_profile(model, ProfileOptions(seq_len=args.prompt_tokens, decode_context=ctx,
                                                         repeats=args.profile_repeats, warmup=2, threads=threads,
                                                         emissions=False))
                write_json(prof, prof_path)
                print(f"{model}: profiled in {time.time() - t0:.0f} s", flush=True)

            profile()
            for i, rate in enumerate(rates):
                if args.interleave and i > 0:
                    profile()
                res = run_command(RunOptions(
                    model=model, cut=cuts[model], device_profile=str(prof_path), emulate_rate=f"{rate}Mbps",
                    emulate_rtt=f"{args.rtt_ms}ms", emulate_link=args.link, prompt_tokens=args.prompt_tokens,
                    new_tokens=args.new_tokens if is_decoder else 0, repeats=args.repeats, warmup=1,
                    threads=threads, wire_dtype=args.wire_dtype, check=False, out=str(Path(tmp) / "r.json")))
                e2e = res.total.end_to_end
                row = {
                    "model": model, "rate_mbps": rate, "rtt_ms": args.rtt_ms, "cut": res.cut, "cut_name": res.cut_name,
                    "end_to_end_measured_ms": round(e2e.measured_ms, 2),
                    "end_to_end_predicted_ms": round(e2e.predicted_ms, 2),
                    "error_pct": round(e2e.error_pct, 1),
                    "within_target": abs(e2e.error_pct) <= args.target_pct,
                    "prefill": _terms(res.prefill),
                    "per_token": _terms(res.per_token) if res.per_token else None,
                    "total": _terms(res.total),
                    "bytes_total": res.traffic.total_bytes,
                }
                rows.append(row)
                print(f"  {rate:>6g} Mbit/s  cut {res.cut} ({res.cut_name})  measured {e2e.measured_ms:9.1f} ms  "
                      f"predicted {e2e.predicted_ms:9.1f} ms  error {e2e.error_pct:+6.1f}%", flush=True)
    doc = {
        "kind": "bench_run", "schema_version": 1,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"threads": threads, "cuts": cuts},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(), "wall_s": round(time.time() - t_start, 1),
        "rows": rows,
        "all_within_target": all(r["within_target"] for r in rows),
    }
    atomic_write_bytes(args.out, (json.dumps(doc, indent=2) + "\n").encode())
    print(f"wrote {args.out}; all within {args.target_pct:g}%: {doc['all_within_target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
