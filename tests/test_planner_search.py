"""The search is exact: it agrees with brute-force enumeration on hundreds of random instances.

The brute force evaluates every configuration one by one with the scalar cost path
(:meth:`CostModel.evaluate`, plain loops, checked by hand in test_planner_cost.py); the search
uses the cumulative numpy tables. Chains are checked against enumeration of every partition.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from coinfer.errors import InfeasibleError
from coinfer.planner.chain import ChainProblem, build_chain_problem, chain_costs, hops_used, solve_chain
from coinfer.planner.cost import Budgets, Objective, Workload, build_cost_model, derive_server_profile
from coinfer.planner.link import Link, wireless_link
from coinfer.planner.search import search, sweep_rates
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def brute_force(model, link, freqs, objective, budgets):
    best = math.inf
    for c in range(model.num_stages + 1):
        for r in range(len(model.ratios)):
            for a in freqs:
                for p in link.powers():
                    cand = model.evaluate(link, c, r, float(a), float(p), objective, budgets)
                    if cand.feasible:
                        best = min(best, cand.objective)
    return best


def random_instance(rng, joint: bool):
    L = int(rng.integers(6, 11))
    seq = int(rng.integers(4, 64))
    dev = synthetic_profile(L, seed=int(rng.integers(1 << 30)), seq_len=seq, decode_contexts=(8, 32, 128))
    srv = synthetic_profile(L, seed=int(rng.integers(1 << 30)), seq_len=int(rng.integers(4, 64)),
                            decode_contexts=(16, 64), energy_j_per_ms=None)
    prune = None
    if joint:
        k = int(rng.integers(1, 4))
        ratios = sorted(rng.choice([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], size=k, replace=False).tolist())
        scope = "all" if rng.random() < 0.7 else "device"
        prune = synthetic_prune_report(L, ratios=ratios, speedups=rng.uniform(0.8, 2.5, k).tolist(),
                                       distortions=rng.uniform(0, 0.3, k).tolist(), scope=scope,
                                       split=int(rng.integers(0, L + 1)) if scope == "device" else None)
    wl = Workload(int(rng.integers(1, 100)), int(rng.integers(0, 6)))
    wire = str(rng.choice(["fp32", "fp16", "int8"]))
    rtt = float(rng.uniform(0, 30))
    if joint and rng.random() < 0.5:
        powers = tuple(np.linspace(0.01, rng.uniform(0.05, 1.0), int(rng.integers(1, 4))).tolist())
        link = wireless_link(bandwidth_hz=float(10 ** rng.uniform(5, 7)), noise_w_per_hz=4e-21, tx_powers_w=powers,
                             channel_gain=float(10 ** rng.uniform(-12, -8)), rtt_ms=rtt, wire_dtype=wire)
    else:
        powers = (float(rng.uniform(0, 1)),) if rng.random() < 0.5 else ()
        link = Link(rate_bps=float(10 ** rng.uniform(5, 9)), rtt_ms=rtt, wire_dtype=wire, tx_powers_w=powers,
                    downlink_rate_bps=float(10 ** rng.uniform(5, 9)) if rng.random() < 0.3 else None)
    freqs = np.array([1.0]) if not joint else np.linspace(1.0, rng.uniform(0.3, 1.0), int(rng.integers(1, 4)))
    model = build_cost_model(dev, srv, wl, wire, prune)
    objective = Objective(str(rng.choice(["latency", "energy", "weighted"])), float(rng.uniform(0, 2000)))
    budgets = Budgets()
    if joint:
        # Budgets drawn around the unconstrained spread so that some instances bind and a few fail.
        ref = model.evaluate(link, model.num_stages, 0)
        budgets = Budgets(
            latency_ms=float(ref.total_latency_ms * rng.uniform(0.2, 2)) if rng.random() < 0.6 else None,
            energy_j=float(ref.energy.total_j * rng.uniform(0.1, 2)) if rng.random() < 0.4 else None,
            memory_bytes=float(ref.device_memory_bytes * rng.uniform(0, 1)) if rng.random() < 0.4 else None,
            distortion=float(rng.uniform(0, 0.3)) if rng.random() < 0.4 else None,
        )
    return model, link, freqs, objective, budgets


@pytest.mark.parametrize("joint, seed, count", [(False, 1, 200), (True, 2, 200)])
def test_search_matches_brute_force(joint, seed, count):
    rng = np.random.default_rng(seed)
    infeasible = 0
    for _ in range(count):
        model, link, freqs, objective, budgets = random_instance(rng, joint)
        expect = brute_force(model, link, freqs, objective, budgets)
        if math.isinf(expect):
            infeasible += 1
            with pytest.raises(InfeasibleError, match="budget"):
                search(model, link, freqs, objective, budgets)
            continue
        got = search(model, link, freqs, objective, budgets).best
        assert got.feasible
        assert close(got.objective, expect), (got.objective, expect)
    if joint:
        assert 0 < infeasible < count // 2  # the random budgets exercise both outcomes


def test_best_per_cut_and_baselines_match_enumeration():
    rng = np.random.default_rng(7)
    for _ in range(30):
        model, link, freqs, objective, budgets = random_instance(rng, joint=True)
        budgets = Budgets()
        res = search(model, link, freqs, objective, budgets)
        for c, cand in enumerate(res.per_cut):
            expect = min(model.evaluate(link, c, r, float(a), float(p), objective).objective
                         for r in range(len(model.ratios)) for a in freqs for p in link.powers()
                         if model.ratios[r].allowed_cuts[c])
            assert cand.cut == c and close(cand.objective, expect)
        assert res.all_device.cut == model.num_stages and res.all_device.ratio == 0
        assert res.all_server.cut == 0 and res.all_server.ratio == 0


def test_rate_sweep_matches_search_at_each_rate():
    rng = np.random.default_rng(3)
    for _ in range(20):
        model, link, freqs, objective, budgets = random_instance(rng, joint=True)
        if link.wireless:
            continue
        rates = np.geomspace(1e5, 1e9, 25)
        idx, obj = sweep_rates(model, link, rates, freqs, objective, budgets, chunk=7)
        for k, rate in enumerate(rates):
            at = Link(rate_bps=float(rate), rtt_ms=link.rtt_ms, wire_dtype=link.wire_dtype,
                      tx_powers_w=link.tx_powers_w, downlink_rate_bps=link.downlink_rate_bps)
            expect = brute_force(model, at, freqs, objective, budgets)
            if math.isinf(expect):
                assert idx[k][0] == -1
            else:
                assert close(obj[k], expect)


def test_best_cut_moves_towards_the_device_as_the_rate_falls():
    d = synthetic_profile(8, seq_len=64, hidden=256)
    model = build_cost_model(d, derive_server_profile(d, 10.0), Workload(64))
    idx, _ = sweep_rates(model, Link(rate_bps=1e6, rtt_ms=5), np.geomspace(1e4, 1e10, 60), np.array([1.0]),
                         Objective(), Budgets())
    cuts = idx[:, 0]
    assert cuts[0] == model.num_stages and cuts[-1] == 0  # slow link: all on device; fast: all on server
    assert np.all(np.diff(cuts) <= 0)


def test_infeasible_message_names_the_binding_budget():
    d = synthetic_profile(6)  # blocks 1 ms, embed/head 0.2 ms, ids 256 B up
    model = build_cost_model(d, derive_server_profile(d, 10.0), Workload(32))
    link = Link(rate_bps=1e5, rtt_ms=0)  # slow: all on device (6.4 ms) beats sending the ids (20.48 ms up)
    with pytest.raises(InfeasibleError, match=r"latency budget of 1 ms: the best possible is 6.4 ms"):
        search(model, link, np.array([1.0]), Objective(), Budgets(latency_ms=1.0))
    # Each budget alone can be met (memory 0: all on server; 10 ms: all on device), not both.
    server_only = model.evaluate(link, 0).total_latency_ms
    with pytest.raises(InfeasibleError, match=r"latency budget of 10 ms binds; plans meeting the others need "
                                              + f"{server_only:.4g} ms"):
        search(model, link, np.array([1.0]), Objective(), Budgets(latency_ms=10.0, memory_bytes=0.0))


# --- chains ---------------------------------------------------------------------------------------

def brute_chain(prob, objective):
    k, n = prob.stage_ms.shape
    best = math.inf
    for inner in itertools.combinations_with_replacement(range(n + 1), k - 1):
        bounds = [0, *inner, n]
        mems = [prob.stage_mem[j, bounds[j]:bounds[j + 1]].sum() for j in range(k)]
        if any(mems[j] > prob.memory_caps[j] for j in range(k)):
            continue
        total, bottleneck = chain_costs(prob, bounds)
        best = min(best, total if objective == "latency" else bottleneck)
    return best


def random_chain(rng, k=3):
    L = int(rng.integers(6, 11))
    wl = Workload(int(rng.integers(1, 64)), int(rng.integers(0, 5)))
    members = [(f"m{j}", synthetic_profile(L, seed=int(rng.integers(1 << 30)), seq_len=int(rng.integers(4, 64))))
               for j in range(k)]
    hops = [(float(10 ** rng.uniform(5, 9)), float(rng.uniform(0, 20))) for _ in range(k - 1)]
    cost = build_cost_model(members[0][1], members[-1][1], wl, "fp32")
    caps = {}
    if rng.random() < 0.5:
        total = sum(s.param_bytes for s in members[0][1].stages)
        caps = {f"m{j}": float(total * rng.uniform(0.1, 0.8)) for j in range(k - 1)}
    return build_chain_problem(members, hops, wl, "fp32", cost, caps)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_chain_dp_matches_brute_force(objective):
    rng = np.random.default_rng(11 if objective == "latency" else 12)
    for _ in range(200):
        prob = random_chain(rng)
        expect = brute_chain(prob, objective)
        if math.isinf(expect):
            with pytest.raises(InfeasibleError):
                solve_chain(prob, objective)
            continue
        bounds, value = solve_chain(prob, objective)
        assert close(value, expect)
        total, bottleneck = chain_costs(prob, bounds)
        assert close(total if objective == "latency" else bottleneck, value)


def test_two_member_chain_equals_single_split():
    d = synthetic_profile(8, seed=5, seq_len=32)
    s = derive_server_profile(d, 6.0)
    wl = Workload(40, 3)
    model = build_cost_model(d, s, wl, "fp16")
    link = Link(rate_bps=5e7, rtt_ms=8, wire_dtype="fp16")
    prob = build_chain_problem([("dev", d), ("server", s)], [(5e7, 8.0)], wl, "fp16", model)
    bounds, value = solve_chain(prob, "latency")
    expect = min(model.evaluate(link, c).total_latency_ms for c in range(model.num_stages + 1))
    assert close(value, expect)
    assert close(model.evaluate(link, bounds[1]).total_latency_ms, value)


def _tie_chain(hop_bc_ms: float) -> ChainProblem:
    """Three members, four stages: stage 0 costs 10 ms everywhere, so every partition's bottleneck is 10."""
    n = 4
    stage = np.array([[10.0, 3.0, 3.0, 3.0]] * 3)
    hop_ms = np.array([[5.0] * n + [0.0], [hop_bc_ms] * n + [0.0]])
    return ChainProblem(
        members=["a", "b", "c"], stage_ms=stage, stage_mem=np.zeros((3, n)), hop_ms=hop_ms,
        hop_busy_ms=np.array([[1.0] * n + [0.0]] * 2), memory_caps=np.full(3, np.inf),
        hop_names=["a-b", "b-c"], hop_rates_bps=[1e6, 1e6], hop_rtts_ms=[0.0, 0.0],
        hop_payload_bytes=np.full(n + 1, 100.0),
    )


def _lexicographic_best(prob):
    k, n = prob.stage_ms.shape
    keyed = []
    for inner in itertools.combinations_with_replacement(range(n + 1), k - 1):
        bounds = [0, *inner, n]
        total, bottleneck = chain_costs(prob, bounds)
        keyed.append(((round(bottleneck, 9), round(total, 9), hops_used(prob, bounds)), bounds))
    return min(keyed)


def test_throughput_ties_go_to_least_latency_then_fewest_hops():
    # a:[embed] b:[rest] (one hop, 24 ms) against e.g. a:[embed] b:[] c:[rest] (two hops, 29 ms): same bottleneck.
    prob = _tie_chain(hop_bc_ms=5.0)
    bounds, value = solve_chain(prob, "throughput")
    assert value == 10.0 and bounds == [0, 1, 4, 4]
    assert chain_costs(prob, bounds) == (24.0, 10.0) and hops_used(prob, bounds) == 1
    # A free second hop: a:[embed] b:[block] c:[rest] also takes 24 ms; the one-hop partition still wins.
    prob = _tie_chain(hop_bc_ms=0.0)
    assert chain_costs(prob, [0, 1, 2, 4]) == (24.0, 10.0)
    assert solve_chain(prob, "throughput")[0] == [0, 1, 4, 4]


def test_throughput_tie_breaks_match_enumeration():
    # Integer costs make many bottleneck ties; the DP must pick what lexicographic enumeration picks.
    rng = np.random.default_rng(3)
    for _ in range(150):
        k, n = int(rng.integers(2, 5)), int(rng.integers(2, 7))
        stage = rng.integers(0, 4, size=(k, n)).astype(float)
        hop = rng.integers(0, 3, size=(k - 1, n + 1)).astype(float)
        hop[:, n] = 0.0
        prob = ChainProblem(
            members=[f"m{j}" for j in range(k)], stage_ms=stage, stage_mem=np.zeros((k, n)), hop_ms=hop + 1.0 * (hop > 0),
            hop_busy_ms=hop, memory_caps=np.full(k, np.inf), hop_names=[f"h{j}" for j in range(k - 1)],
            hop_rates_bps=[1e6] * (k - 1), hop_rtts_ms=[1.0] * (k - 1), hop_payload_bytes=np.ones(n + 1),
        )
        bounds, value = solve_chain(prob, "throughput")
        (bottleneck, total, hops), _ = _lexicographic_best(prob)
        got_total, got_bottleneck = chain_costs(prob, bounds)
        assert close(value, bottleneck) and close(got_bottleneck, bottleneck)
        assert close(got_total, total) and hops_used(prob, bounds) == hops
