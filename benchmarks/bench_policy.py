"""Channel-adaptive cut and wire precision: our policy vs every fixed cut vs the oracle vs the paper's reward
policy (and the paper's surrogate + PPO when coinfer[rl] is installed), replayed on generated traces.

Run (the figures to report):

    .venv/bin/python benchmarks/bench_policy.py --device-profile PROFILE.json --rl-timesteps 20000

Quick run:

    .venv/bin/python benchmarks/bench_policy.py --rl-timesteps 0 --duration 20

Writes benchmarks/results/policy_bench.json (or --out). Inputs, stated in the results:

* device profile: ``--device-profile`` (a real ``coinfer profile``), else a synthetic SmolLM2-shaped one
  (30 blocks, hidden 576, totals calibrated to STACK-NOTES' measurements; labelled synthetic) - a
  profile taken on this shared machine while other jobs ran read 4-100x too slow; the server is the
  device profile ``--server-speedup`` times faster (derived, as ``coinfer plan --server-speedup``);
* robustness profile: ``--robustness`` (a real ``coinfer channel``), else a SYNTHETIC one of the same
  shape (:func:`coinfer.planner.synthetic.synthetic_robustness`: quality loss linear in the erasure
  probability, shallower cuts more sensitive, a fixed cost per wire precision) - its figures are made
  up, so the comparison is of decision methods on given quality curves, not a claim about SmolLM2;
* traces: Gauss-Markov SNR (mean 3, 5 and 8 dB, sigma 2 dB, rho 0.9 per block) and Rayleigh block
  fading (mean 10 and 20 dB), 100 ms blocks, seeds 0..seeds-1; rate = 10 MHz x log2(1 + SNR);
  erasure = 16-bit elements over uncoded BPSK (a model, see coinfer.planner.channel).

Per method and trace, one request per step (prompt 128 tokens, 16 new tokens, RTT 10 ms, switching
delay = one RTT, quality budget: perplexity ratio <= --max-ppl-ratio at the pessimistic interval end):
the paper's reward R, latency, energy, quality, budget violations, switches and the expensive model
evaluations each method's decisions needed. Timings of the planner itself are wall-clock medians on a
shared machine (ratios only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coinfer.planner.link import Link
from coinfer.planner.plan import PlanRequest
from coinfer.planner.robust import RobustSpec, robust_plan
from coinfer.planner.synthetic import synthetic_profile, synthetic_robustness
from coinfer.planner.trace import generate_trace
from coinfer.reports.io import file_sha256, load_document, write_json
from coinfer.reports.profile import Profile
from coinfer.vocab import WIRE_DTYPES

TRACES = [("gauss-markov", 3.0), ("gauss-markov", 5.0), ("gauss-markov", 8.0), ("rayleigh", 10.0), ("rayleigh", 20.0)]
HEADLINE = ("policy", "policy fp16 only", "oracle", "paper-reward", "rl-ppo")


def smollm2_like_profile() -> Profile:
    """Synthetic SmolLM2-135M-shaped device costs, calibrated to STACK-NOTES' totals on this CPU (2 threads).

    Prefill of 128 tokens ~112 ms (measured 126 ms), decode ~28 ms per token (measured 30-31 ms);
    fp32 weights (113 MB embedding, 14.2 MB per block), 1536 B of KV cache per token and block;
    energy 8 mJ per ms (the 8 W estimate coinfer profile uses without a counter).
    """
    L = 30
    prefill = [0.3, *[3.6] * L, 4.0]
    decode = [[0.02, 0.02], *[[0.8, 0.85]] * L, [4.0, 4.0]]
    return synthetic_profile(L, hidden=576, seq_len=128, stage_ms=prefill, decode_ms=decode, decode_contexts=(128, 256),
                             energy_j_per_ms=0.008, param_bytes=[113_246_208, *[14_155_776] * L, 2_304],
                             kv_bytes_per_token=1536)


def robustness_for(dev: Profile):
    L = dev.model.num_blocks
    cuts = sorted({b + 1 for b in (1, 2, 4, 8, 16, L)})
    return synthetic_robustness(L, cuts=cuts, hidden=dev.model.hidden_size, wires=tuple(WIRE_DTYPES),
                                erasure=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3), draws=8, evaluations_per_draw=8,
                                config=dev.model.config_sha256[:2], sensitivity=3.0, seed=0)


def one_trace(args, dev_path: str, rob_path: str, trace_path: str) -> tuple[dict, float]:
    def plan(rl_timesteps: int):
        spec = RobustSpec(rob_path, max_ppl_ratio=args.max_ppl_ratio, trace=trace_path, rl_timesteps=rl_timesteps)
        req = PlanRequest(devices=[("device", dev_path)], server_speedup=args.server_speedup,
                          link=Link(rate_bps=10e6, rtt_ms=10.0, wire_dtype=args.wire_dtype, tx_powers_w=(0.2,)),
                          prompt_tokens=128, decode_steps=16, robust=spec)
        return robust_plan(req)

    t0 = time.perf_counter()
    res = plan(0)  # our planning and the replay of every non-learned method
    wall = time.perf_counter() - t0
    if args.rl_timesteps:
        res = plan(args.rl_timesteps)
    pol = res.plan.policy
    methods = {m.method: m.model_dump(mode="json") for m in pol.replay}
    return {"methods": methods, "rows": len(pol.rows), "exhaustive_evaluations": pol.exhaustive_evaluations,
            "profile_evaluations": pol.model_evaluations}, wall


def summarise(per_trace: list[dict]) -> dict:
    names = per_trace[0]["methods"].keys()
    keys = ("mean_reward", "mean_latency_ms", "mean_energy_j", "mean_objective", "mean_quality", "budget_violations",
            "switches", "model_evaluations", "unknown_quality_steps")
    out = {}
    for n in names:
        rows = [t["methods"][n] for t in per_trace]
        out[n] = {k: (float(np.mean([r[k] for r in rows if r[k] is not None]))
                      if any(r[k] is not None for r in rows) else None) for k in keys}
    return out


def best_fixed(summary: dict) -> str | None:
    keep = [(v["mean_objective"], n) for n, v in summary.items()
            if n.startswith("fixed") and v["budget_violations"] == 0]
    return min(keep)[1] if keep else None


def print_table(label: str, summary: dict) -> None:
    bf = best_fixed(summary)
    show = [n for n in HEADLINE if n in summary] + ([bf] if bf else []) + [
        n for n in ("fixed cut 0", "fixed cut 32") if n in summary and n != bf]
    print(f"\n{label}")
    print(f"{'method':<17}{'R':>8}{'ms':>9}{'J':>8}{'ppl':>8}{'over':>7}{'switch':>8}{'evals':>9}")
    for n in show:
        v = summary[n]
        r = "-" if v["mean_reward"] is None else f"{v['mean_reward']:.3f}"
        q = "-" if v["mean_quality"] is None else f"{v['mean_quality']:.4f}"
        tag = n if n != bf else f"{n}*"
        print(f"{tag:<17}{r:>8}{v['mean_latency_ms']:>9.1f}{v['mean_energy_j']:>8.3f}{q:>8}"
              f"{v['budget_violations']:>7.1f}{v['switches']:>8.1f}{v['model_evaluations']:>9.0f}")
    print("(* the best fixed cut that keeps the budget on every step; 'over' = steps over a budget or unknown)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device-profile", default=None, help="a real device profile (default: synthetic SmolLM2-shaped)")
    ap.add_argument("--robustness", default=None, help="a real robustness profile (default: SYNTHETIC)")
    ap.add_argument("--server-speedup", type=float, default=20.0)
    ap.add_argument("--max-ppl-ratio", type=float, default=1.1)
    ap.add_argument("--wire-dtype", default="fp16", help="the base wire (the paper's baselines and 'policy <wire> only' "
                                                         "use its points; a real profile impairs the wire it was asked to)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per trace")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rl-timesteps", type=int, default=20000, help="0: no RL baseline")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "policy_bench.json"))
    args = ap.parse_args()
    if args.rl_timesteps and importlib.util.find_spec("stable_baselines3") is None:
        print("stable-baselines3 not installed (pip install 'coinfer[rl]'): no RL baseline")
        args.rl_timesteps = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        dev_path = args.device_profile or str(tmpd / "dev.json")
        if args.device_profile is None:
            write_json(smollm2_like_profile(), dev_path)
        dev = load_document(dev_path, Profile)
        rob_path = args.robustness or str(tmpd / "rob.json")
        if args.robustness is None:
            write_json(robustness_for(dev), rob_path)
        results, walls = {}, []
        for kind, mean in TRACES:
            per = []
            for seed in range(args.seeds):
                tr = generate_trace(kind, mean_snr_db=mean, duration_s=args.duration, block_s=0.1, seed=seed,
                                    bandwidth_hz=10e6, correlation=0.9, sigma_db=2.0, erasure_model="bpsk",
                                    element_bits=16)
                p = tmpd / f"{kind}-{mean:g}-{seed}.json"
                write_json(tr, p)
                r, wall = one_trace(args, dev_path, rob_path, str(p))
                walls.append(wall)
                per.append(r)
            label = f"{kind}, mean SNR {mean:g} dB ({args.seeds} traces x {int(args.duration / 0.1)} steps)"
            summary = summarise(per)
            # per trace: the learned and planned methods in full; fixed cuts only in the summary (size)
            slim = [{**r, "methods": {n: m for n, m in r["methods"].items() if not n.startswith("fixed")}} for r in per]
            results[f"{kind}-{mean:g}dB"] = {"label": label, "summary": summary, "best_fixed": best_fixed(summary),
                                             "per_trace": slim}
            print_table(label, summary)
        inputs = {
            "device_profile": {"path": args.device_profile, "sha256": file_sha256(dev_path),
                               "source": "measured" if args.device_profile else "synthetic SmolLM2-shaped",
                               "model": dev.model.name, "weights": dev.model.weights_label},
            "robustness": {"path": args.robustness, "sha256": file_sha256(rob_path),
                           "source": "measured" if args.robustness else "SYNTHETIC (made-up quality curves)"},
        }
    out = {
        "benchmark": "bench_policy", "command": " ".join(["python", *sys.argv]), "settings": vars(args),
        "inputs": inputs, "python": platform.python_version(), "plan_and_replay_without_rl_wall_s_median": statistics.median(walls),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nplanning + replay (no RL) per trace: median {statistics.median(walls):.2f} s wall (shared machine)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
