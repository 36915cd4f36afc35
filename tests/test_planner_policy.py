"""The policy against brute force: exact per-state choices on random small instances."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.planner.cost import Budgets, Objective, Workload, derive_server_profile
from coinfer.planner.link import Link
from coinfer.planner.policy import (
    best_per_state,
    build_policy,
    build_table,
    envelope,
    evaluate_states,
    lookup,
    static_best,
)
from coinfer.planner.quality import QualityModel, severity
from coinfer.planner.robust import wire_models
from coinfer.planner.synthetic import synthetic_profile, synthetic_robustness


def instance(seed: int, impairment: str = "erasure", budgets: bool = True):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(2, 7))
    decoder = bool(rng.random() < 0.7)
    hidden = int(rng.choice([32, 64, 128]))
    dev = synthetic_profile(L, seed=seed, hidden=hidden, seq_len=16, is_decoder=decoder)
    srv = derive_server_profile(dev, float(rng.uniform(2, 30)))
    cuts = sorted(rng.choice(np.arange(1, L + 2), size=int(rng.integers(1, L + 2)), replace=False).tolist())
    rob = synthetic_robustness(
        L, cuts=cuts, hidden=hidden, is_decoder=decoder, seed=seed, sensitivity=float(rng.uniform(0.5, 6)),
        impair_wires=[w for w in ("fp32", "fp16", "int8") if rng.random() < 0.7] or ["fp16"],
        erasure=sorted(rng.uniform(0.01, 0.3, 3)) if impairment == "erasure" else (),
        snr_db=sorted(rng.uniform(-5, 25, 3)) if impairment == "awgn" else (),
    )
    wl = Workload(16, int(rng.integers(0, 6)) if decoder else 0)
    fixed_down = float(10 ** rng.uniform(5, 8)) if rng.random() < 0.3 else None
    link = Link(rate_bps=1e6, downlink_rate_bps=fixed_down, rtt_ms=float(rng.uniform(0, 10)), tx_powers_w=(0.2,))
    quality = QualityModel(rob)
    models = wire_models(dev, srv, wl, quality, "fp32", [])
    objective = Objective(str(rng.choice(["latency", "energy", "weighted"])), float(rng.uniform(10, 2000)))
    b = Budgets()
    if budgets:
        b = Budgets(latency_ms=float(rng.uniform(20, 300)) if rng.random() < 0.4 else None,
                    memory_bytes=float(rng.uniform(2e5, 2e6)) if rng.random() < 0.3 else None)
    limit = float(rng.uniform(1.0, 1.6)) if decoder else float(rng.uniform(0.93, 1.0))
    table = build_table(models, "fp32", link, quality, impairment, objective, b, limit)
    return table, rng, models, link, objective, b


def states(rng, impairment: str, n: int):
    level = {"erasure": rng.uniform(0, 0.35, n), "awgn": rng.uniform(-8, 30, n), "none": np.zeros(n)}[impairment]
    return severity(impairment, level), 10 ** rng.uniform(5.5, 9, n)


@pytest.mark.parametrize("impairment", ["erasure", "awgn", "none"])
def test_policy_equals_exhaustive_choice_at_every_state(impairment):
    checked = infeasible = 0
    distinct = []
    for seed in range(25):
        t, rng, *_ = instance(seed, impairment)
        sev, up = states(rng, impairment, 150)
        lo = {"erasure": 0.0, "awgn": -np.inf, "none": 0.0}[impairment]
        cells = build_policy(t, lo, float(sev.max()), float(1 / up.max()), float(1 / up.min()))
        ev = evaluate_states(t, sev, up)
        brute = best_per_state(ev)
        distinct.append(len(set(brute.tolist())))
        for i in range(len(sev)):
            k = lookup(cells, float(sev[i]), float(1 / up[i]))
            if brute[i] < 0:
                assert k == -1
                infeasible += 1
                continue
            assert k >= 0 and ev.feasible[k, i], (seed, i)
            assert ev.objective[k, i] == pytest.approx(ev.objective[brute[i], i], rel=1e-9, abs=1e-12)
            checked += 1
    assert checked > 1000  # the comparison ran on many feasible states
    if impairment != "none":  # and on instances where the choice moves a lot, some states infeasible
        assert max(distinct) >= 6 and infeasible > 0


def test_envelope_is_the_minimum_of_valid_lines():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        alpha, beta = rng.uniform(0, 10, n), rng.uniform(0, 5, n) * (rng.random(n) < 0.9)
        xmax = np.where(rng.random(n) < 0.4, rng.uniform(0, 2, n), np.inf)
        segs = envelope(alpha, beta, xmax, list(range(n)), 0.1, 1.9)
        assert segs[0][0] == 0.1 and segs[-1][1] == 1.9
        assert all(a[1] == pytest.approx(b[0]) for a, b in zip(segs, segs[1:], strict=False))
        for x in rng.uniform(0.1, 1.9, 50):
            valid = xmax >= x
            k = next(k for lo, hi, k in segs if x <= hi)
            if not valid.any():
                assert k == -1
                continue
            assert valid[k] or x == pytest.approx(xmax[k])
            assert alpha[k] + beta[k] * x == pytest.approx(np.min((alpha + beta * x)[valid]), rel=1e-9, abs=1e-12)


def test_candidate_lines_match_the_scalar_cost_model():
    # An independent computation: CostModel.evaluate walks the stages one by one.
    for seed in range(6):
        t, rng, models, link, objective, _ = instance(seed, budgets=False)
        for rate in (3e5, 2e7):
            ev = evaluate_states(t, np.zeros(1), np.array([rate]))
            at = Link(rate_bps=rate, downlink_rate_bps=link.downlink_rate_bps, rtt_ms=link.rtt_ms,
                      tx_powers_w=link.tx_powers_w)
            for k, ch in enumerate(t.choices):
                c = models[ch.wire or "fp32"].evaluate(at, ch.cut, objective=objective)
                assert ev.latency_ms[k, 0] == pytest.approx(c.total_latency_ms, rel=1e-12)
                assert ev.energy_j[k, 0] == pytest.approx(c.energy.total_j, rel=1e-12)
                assert t.device_mem[k] == pytest.approx(c.device_memory_bytes, abs=1)


def test_int8_payload_is_smaller_and_wins_on_a_slow_clean_link():
    t, *_ = instance(1, "none", budgets=False)
    cut = 2
    k32, k8 = t.index(cut, "fp32"), t.index(cut, "int8")
    assert t.lat_beta[k8] < t.lat_beta[k32] / 3  # payload: 1 byte per element (+ a scale) against 4


def test_static_best_is_the_brute_force_expected_optimum():
    for seed in range(10):
        t, rng, *_ = instance(seed)
        sev, up = states(rng, "erasure", 20)
        ev = evaluate_states(t, sev, up)
        w = rng.dirichlet(np.ones(20))
        k = static_best(ev, w)
        ok = [j for j in range(len(t.choices)) if ev.feasible[j].all()]
        if not ok:
            assert k == -1
            continue
        best = min(float(ev.objective[j] @ w) for j in ok)
        assert float(ev.objective[k] @ w) == pytest.approx(best, rel=1e-12)


def test_a_wire_the_device_profile_lacks_takes_its_payload_from_the_robustness_profile():
    # A device profile older than a wire precision (as profiles before int4 are) has no payload for it.
    dev = synthetic_profile(3, hidden=64, seq_len=16)
    for st in dev.stages:
        st.payload_after.pop("int8")
    rob = synthetic_robustness(3, hidden=64)
    notes: list[str] = []
    models = wire_models(dev, derive_server_profile(dev, 4.0), Workload(16, 2), QualityModel(rob), "fp32", notes)
    per_token = 64 + 4  # one byte per element and one fp32 scale per token row
    assert models["int8"].up_token_bytes[2] == per_token and models["int8"].up_prefill_bytes[2] == 16 * per_token
    assert models["int8"].up_prefill_bytes[0] == models["fp32"].up_prefill_bytes[0]  # cut 0 still sends token ids
    assert any("wire int8: payload from the robustness profile (68 B per token)" in n for n in notes)
