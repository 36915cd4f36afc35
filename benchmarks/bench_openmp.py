"""How OpenMP's wait policy and idle gaps change compute time on this machine.

Why it matters: in a split run each role computes, then waits on the link while the other role
computes. Profiles time stages back to back. This script measures the same shard (the device half
of a model, 128-token prefill) under three libgomp wait policies (default spin, PASSIVE, short
spin GOMP_SPINCOUNT=10000, each in a fresh process, policies alternated over rounds) and, within
each process, back to back, after a 256 MB cache flush, and after a 300 ms idle sleep.

Run::

    .venv/bin/python benchmarks/bench_openmp.py --models gpt2,minilm --rounds 2 \
        --out benchmarks/results/openmp_idle.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

POLICIES = {
    "default-spin": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "spin-100k": {"GOMP_SPINCOUNT": "100000"},
}


def _child(model: str, repeats: int) -> dict[str, float]:
    import torch

    from coinfer.models.loading import load_model
    from coinfer.models.shards import shard_range

    torch.set_num_threads(2)
    m = load_model(model)
    shard = shard_range(m, 0, m.adapter.num_blocks // 2 + 1)
    ids = torch.randint(0, 1000, (1, 128))
    flush = torch.ones(64 * 1024 * 1024)  # 256 MB, larger than the L2 of this machine's cores
    out: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(5):
            shard(ids)
        for _ in range(2):
            for mode in ("back-to-back", "after-flush", "after-idle-300ms"):
                for _ in range(repeats):
                    if mode == "after-flush":
                        flush.add_(1.0)
                    if mode == "after-idle-300ms":
                        time.sleep(0.3)
                    t = time.perf_counter()
                    shard(ids)
                    out.setdefault(mode, []).append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2,minilm")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--out", default="benchmarks/results/openmp_idle.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child, a.repeats)))
        return 0
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    for model in a.models.split(","):
        for _ in range(a.rounds):
            for name, extra in POLICIES.items():
                env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                env.update(extra)
                res = subprocess.run(
                    [sys.executable, __file__, "--child", model, "--repeats", str(a.repeats)],
                    env=env, capture_output=True, text=True, check=True,
                )
                rows.setdefault(model, {}).setdefault(name, []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    summary = {
        model: {
            pol: {mode: round(statistics.median(r[mode] for r in runs), 2) for mode in runs[0]}
            for pol, runs in pols.items()
        }
        for model, pols in rows.items()
    }
    for model, pols in summary.items():
        for pol, modes in pols.items():
            print(f"{model:7s} {pol:13s} " + "  ".join(f"{k} {v:8.2f} ms" for k, v in modes.items()))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"kind": "bench_openmp", "schema_version": 1, "settings": vars(a),
                                       "load_average": os.getloadavg(), "median_ms": summary}, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
