"""Planner speed: single-device plan with a rate sweep, and the chain DP against brute force.

Run (quiet machine, the figures to report):

    .venv/bin/python benchmarks/bench_plan.py --repeats 15

Quick smoke run (what CI or a busy machine can afford):

    .venv/bin/python benchmarks/bench_plan.py --repeats 3

Writes benchmarks/results/plan_bench.json (or --out). Figures are medians over the repeats (each
repeat times the whole operation once, after one warm-up); speed-ups are ratios of medians.
Workloads are synthetic profiles (planner inputs only; the planner never runs a model):

* plan_80L: 80 blocks, a pruning report with 10 ratios, 1000 log-spaced rates from 1 Mbps to
  1 Gbps: cost tables + exact search + sweep (``make_plan`` minus file io), and the same through
  ``make_plan`` from JSON files, and also with a 6-step DVFS grid.
* cli_process: wall time of ``coinfer plan ... --json`` as a fresh process (imports included).
* chain_48L: 3 members over 48 blocks (50 stages), latency and throughput DPs vs enumeration
  of every contiguous partition (1326 of them).
* search_vs_brute: single split joint with 10 ratios x 6 frequencies x 4 powers (80 blocks):
  the numpy search vs evaluating each configuration one by one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coinfer.planner.chain import build_chain_problem, chain_costs, solve_chain
from coinfer.planner.cost import Budgets, Objective, Workload, build_cost_model, derive_server_profile
from coinfer.planner.link import Link, wireless_link
from coinfer.planner.plan import PlanRequest, make_plan
from coinfer.planner.search import search, sweep_rates
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report
from coinfer.reports.io import write_json

RATIOS = tuple(round(0.05 * i, 2) for i in range(1, 11))


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "repeats": repeats}


def bench_plan_80(repeats: int, tmp: Path) -> dict:
    dev = synthetic_profile(80, seq_len=128, hidden=8192, seed=1)
    srv = derive_server_profile(dev, 8.0)
    prune = synthetic_prune_report(80, ratios=RATIOS, hidden=8192)
    wl = Workload(128, 32)
    link = Link(rate_bps=20e6, rtt_ms=10, tx_powers_w=(0.2,))
    rates = np.geomspace(1e6, 1e9, 1000)

    def core(freqs):
        def run():
            model = build_cost_model(dev, srv, wl, "fp16", prune)
            search(model, link, freqs, Objective(), Budgets(distortion=0.2))
            sweep_rates(model, link, rates, freqs, Objective(), Budgets(distortion=0.2))
        return run

    write_json(dev, tmp / "dev.json")
    write_json(prune, tmp / "prune.json")
    req = PlanRequest(devices=[("device", str(tmp / "dev.json"))], link=link, server_speedup=8.0,
                      prune=str(tmp / "prune.json"), prompt_tokens=128, decode_steps=32, budgets=Budgets(distortion=0.2),
                      sweep=(1e6, 1e9, 1000))
    out = {
        "blocks": 80, "ratios": len(RATIOS) + 1, "rates": len(rates),
        "core_1freq": timed(core(np.array([1.0])), repeats),
        "core_6freq": timed(core(np.linspace(1.0, 0.5, 6)), repeats),
        "make_plan_from_files": timed(lambda: make_plan(req), repeats),
    }
    cmd = [sys.executable, "-m", "coinfer.cli.main", "plan", "--device-profile", str(tmp / "dev.json"), "--server-speedup", "8",
           "--prune-report", str(tmp / "prune.json"), "--rate", "20Mbps", "--rtt", "10ms", "--decode-steps", "32",
           "--sweep-rate", "1Mbps:1Gbps:1000", "--max-distortion", "0.2", "--json"]
    out["cli_process"] = timed(lambda: subprocess.run(cmd, check=True, capture_output=True), max(1, repeats // 3))
    return out


def brute_chain(prob, objective: str) -> float:
    k, n = prob.stage_ms.shape
    best = math.inf
    for inner in itertools.combinations_with_replacement(range(n + 1), k - 1):
        bounds = [0, *inner, n]
        if any(prob.stage_mem[j, bounds[j]:bounds[j + 1]].sum() > prob.memory_caps[j] for j in range(k)):
            continue
        total, bottleneck = chain_costs(prob, bounds)
        best = min(best, total if objective == "latency" else bottleneck)
    return best


def bench_chain_48(repeats: int) -> dict:
    wl = Workload(128, 16)
    members = [(f"m{j}", synthetic_profile(48, seed=10 + j, seq_len=128, hidden=4096)) for j in range(3)]
    cost = build_cost_model(members[0][1], members[-1][1], wl, "fp16")
    total = sum(s.param_bytes for s in members[0][1].stages)
    hops = [(100e6, 2.0), (1e9, 10.0)]
    out = {"blocks": 48, "members": 3, "partitions": math.comb(50 + 2, 2)}
    for caps_label, caps in (("no_caps", {}), ("memory_caps", {"m0": total * 0.4, "m1": total * 0.6})):
        prob = build_chain_problem(members, hops, wl, "fp16", cost, caps)
        for obj in ("latency", "throughput"):
            _, v = solve_chain(prob, obj)
            assert math.isclose(v, brute_chain(prob, obj), rel_tol=1e-9)
            dp = timed(lambda o=obj, p=prob: solve_chain(p, o), repeats * 20)
            bf = timed(lambda o=obj, p=prob: brute_chain(p, o), max(1, repeats // 2))
            out[f"{obj}_{caps_label}"] = {"dp": dp, "brute_force": bf, "speedup": bf["median_s"] / dp["median_s"]}
    return out


def bench_search_vs_brute(repeats: int) -> dict:
    dev = synthetic_profile(80, seq_len=128, hidden=8192, seed=2)
    model = build_cost_model(dev, derive_server_profile(dev, 8.0), Workload(128, 32), "fp16",
                             synthetic_prune_report(80, ratios=RATIOS, hidden=8192))
    link = wireless_link(bandwidth_hz=20e6, noise_w_per_hz=4e-21, tx_powers_w=(0.05, 0.1, 0.15, 0.2),
                         channel_gain=1e-10, rtt_ms=10)
    freqs = np.linspace(1.0, 0.5, 6)
    obj = Objective("weighted", 1000.0)

    def brute():
        best = math.inf
        for c in range(model.num_stages + 1):
            for r in range(len(model.ratios)):
                for a in freqs:
                    for p in link.powers():
                        cand = model.evaluate(link, c, r, float(a), float(p), obj)
                        if cand.feasible:
                            best = min(best, cand.objective)
        return best

    assert math.isclose(search(model, link, freqs, obj, Budgets()).best.objective, brute(), rel_tol=1e-9)
    s = timed(lambda: search(model, link, freqs, obj, Budgets()), repeats)
    b = timed(brute, 1)
    return {"configurations": (model.num_stages + 1) * len(model.ratios) * len(freqs) * 4, "search": s,
            "brute_force": b, "speedup": b["median_s"] / s["median_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "plan_bench.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plan = bench_plan_80(args.repeats, Path(tmp))
    result = {
        "benchmark": "bench_plan",
        "command": " ".join(["python", "benchmarks/bench_plan.py", *sys.argv[1:]]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "loadavg_1m": os.getloadavg()[0]},
        "plan_80L": plan,
        "chain_48L": bench_chain_48(args.repeats),
        "search_vs_brute_80L": bench_search_vs_brute(args.repeats),
        "targets": {"plan_80L_core_1freq_under_1s": plan["core_1freq"]["median_s"] < 1.0},
    }
    chain_keys = [k for k in result["chain_48L"] if k.startswith(("latency", "throughput"))]
    result["targets"]["chain_dp_100x_brute"] = {k: result["chain_48L"][k]["speedup"] >= 100 for k in chain_keys}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    p, c = result["plan_80L"], result["chain_48L"]
    print(f"plan 80 blocks x {p['ratios']} ratios x {p['rates']} rates: core {p['core_1freq']['median_s'] * 1e3:.1f} ms "
          f"(6 freqs {p['core_6freq']['median_s'] * 1e3:.1f} ms), make_plan from files "
          f"{p['make_plan_from_files']['median_s'] * 1e3:.1f} ms, CLI process {p['cli_process']['median_s']:.2f} s")
    for o in chain_keys:
        print(f"chain 3 x 48 blocks ({o}): DP {c[o]['dp']['median_s'] * 1e6:.0f} us, brute force "
              f"{c[o]['brute_force']['median_s'] * 1e3:.1f} ms -> {c[o]['speedup']:.0f}x")
    s = result["search_vs_brute_80L"]
    print(f"joint search {s['configurations']} configurations: {s['search']['median_s'] * 1e3:.1f} ms vs brute force "
          f"{s['brute_force']['median_s']:.2f} s -> {s['speedup']:.0f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
