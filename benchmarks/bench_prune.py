"""Pruning: distortion and measured speed-up per ratio; ONNX Runtime shard against torch eager.

Run (quiet machine, the figures to report; about 10-15 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_prune.py --seq-len 128 --repeats 15 --windows 8

Quick smoke run (busy machine; proves the script works, figures are noisy):

    .venv/bin/python benchmarks/bench_prune.py --seq-len 32 --repeats 3 --windows 4 --quick

Writes benchmarks/results/prune_bench.json (or --out). For each model (MiniLM with real weights,
GPT-2 124M shape with random weights) and importance, every ratio is pruned with ``run_prune``
(scope all): parameters, FLOPs, output distortion (relative MSE, KL / perplexity for GPT-2,
pooled cosine for MiniLM) and prefill/decode speed-up, original and pruned interleaved in one
run (medians over ``--repeats``), next to the FLOPs ratio (realised over ideal; target >= 0.8 at
ratio 0.5 for prefill). Then the device and server shards of ratios 0 and 0.5 at ``--split``
are exported, reloaded through the sha256-verified public API and timed as onnxruntime sessions
against the same shards in torch eager (interleaved medians, same thread count).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

RATIOS = [0.1, 0.2, 0.3, 0.5]


def _prune_runs(model: str, importances: list[str], args: argparse.Namespace) -> list[dict]:
    from coinfer.pruner.api import PruneOptions, run_prune

    runs = []
    for imp in importances:
        t0 = time.perf_counter()
        rep = run_prune(
            PruneOptions(
                model=model, ratios=RATIOS, importance=imp, seq_len=args.seq_len, max_windows=args.windows,
                repeats=args.repeats, measure_speed=True,
            )
        )
        rows = []
        for r in rep.results:
            s, d = r.speedup, r.distortion
            rows.append(
                dict(
                    requested_ratio=r.requested_ratio,
                    achieved_param_ratio=round(r.achieved_param_ratio, 4),
                    achieved_head_ratio=round(r.achieved_head_ratio, 4),
                    achieved_channel_ratio=round(r.achieved_channel_ratio, 4),
                    param_distortion=d.param_distortion,
                    output_rel_mse=d.output_rel_mse,
                    kl_next_token=d.kl_next_token,
                    perplexity_before=d.perplexity_before,
                    perplexity_after=d.perplexity_after,
                    pooled_cosine=d.pooled_cosine,
                    prefill_measured=s.prefill_measured if s else None,
                    prefill_flops_ratio=s.prefill_flops_ratio if s else None,
                    realised_over_ideal=s.realised_over_ideal if s else None,
                    decode_measured=s.decode_measured if s else None,
                    decode_flops_ratio=s.decode_flops_ratio if s else None,
                    original_prefill_ms=s.original_prefill_ms if s else None,
                    pruned_prefill_ms=s.pruned_prefill_ms if s else None,
                    max_cv=s.max_cv if s else None,
                )
            )
        half = next((x for x in rows if x["requested_ratio"] == 0.5), None)
        runs.append(
            dict(
                model=model,
                weights=rep.model.weights,
                importance=imp,
                threads=rep.threads,
                seq_len=rep.seq_len,
                empirical_c=rep.empirical_c,
                bound_holds=rep.bound_holds,
                ratios=rows,
                target_prefill_realised_over_ideal_at_0_5=0.8,
                target_met=None if half is None or half["realised_over_ideal"] is None else half["realised_over_ideal"] >= 0.8,
                wall_s=round(time.perf_counter() - t0, 1),
            )
        )
        print(f"{model} {imp}: " + ", ".join(
            f"r={x['requested_ratio']}: Dy={x['output_rel_mse']:.3g} x{(x['prefill_measured'] or 0):.2f}"
            f"/{(x['prefill_flops_ratio'] or 0):.2f}" for x in rows), file=sys.stderr)
    return runs


def _onnx_vs_torch(model: str, args: argparse.Namespace) -> list[dict]:
    import torch

    from coinfer.models import shard_io
    from coinfer.models.adapters.base import ShardState
    from coinfer.pruner import metrics
    from coinfer.pruner.api import PruneOptions, run_prune

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "shards"
        rep = run_prune(
            PruneOptions(model=model, ratios=[0.0, 0.5], split=args.split, export_dir=str(exp), seq_len=args.seq_len,
                         max_windows=2, measure_speed=False)
        )
        for r in rep.results:
            files = {(f.role, f.format): f for f in r.shards}
            for role in ("device", "server"):
                if (role, "onnx") not in files:
                    continue
                j, o, d = files[(role, "json")], files[(role, "onnx")], files[(role, "onnx-data")]
                shard = shard_io.load_shard(exp / j.path, j.sha256)
                sess = shard_io.load_onnx_shard(exp / o.path, o.sha256, d.sha256, threads=torch.get_num_threads())
                x = shard_io.example_input(shard, args.seq_len)
                feed = {sess.get_inputs()[0].name: x.numpy()}

                def run_torch(shard=shard, x=x):
                    with torch.no_grad():
                        shard(x, ShardState(cache=None))

                def run_ort(sess=sess, feed=feed):
                    sess.run(None, feed)

                meds, cvs = metrics.interleaved_medians([run_torch, run_ort], args.repeats, warmup=2)
                out.append(
                    dict(
                        model=model, ratio=r.requested_ratio, role=role, split=args.split, seq_len=args.seq_len,
                        torch_eager_ms=meds[0], onnxruntime_ms=meds[1], ort_speedup=meds[0] / meds[1],
                        max_cv=max(cvs), onnx_max_abs_diff=r.onnx_max_abs_diff,
                    )
                )
                print(f"{model} r={r.requested_ratio} {role}: torch {meds[0]:.1f} ms, ort {meds[1]:.1f} ms", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--split", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="magnitude only on GPT-2, skip nothing else")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_bench.json"))
    args = ap.parse_args()

    import os

    import torch

    t0 = time.perf_counter()
    runs = _prune_runs("minilm", ["magnitude", "activation", "taylor"], args)
    runs += _prune_runs("gpt2", ["magnitude"] if args.quick else ["magnitude", "activation"], args)
    onnx = [] if args.no_onnx else _onnx_vs_torch("minilm", args) + _onnx_vs_torch("gpt2", args)
    doc = dict(
        kind="prune_bench",
        schema_version=1,
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        settings=vars(args),
        machine=dict(
            cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
            torch=torch.__version__, load_average_1m=os.getloadavg()[0],
        ),
        note="timings are medians of interleaved original/pruned (or torch/ORT) runs; compare only within one file",
        prune=runs,
        onnx_vs_torch=onnx,
        wall_s=round(time.perf_counter() - t0, 1),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
