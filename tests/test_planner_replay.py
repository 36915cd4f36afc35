"""Replay accounting against a hand-computed 3-step trace, and the paper's reward by hand."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.planner.cost import Objective
from coinfer.planner.policy import CandidateTable, Choice, StateEval
from coinfer.planner.quality import Constant, QualityModel
from coinfer.planner.replay import (
    MethodRun,
    account,
    fixed_runs,
    oracle_choices,
    paper_choices,
    paper_reward,
)
from coinfer.planner.synthetic import synthetic_robustness

# Three candidates of a 2-block model (cuts 1, 2 at fp32; 4 = all on the device), three steps.
LAT = np.array([[10.0, 50.0, 12.0], [20.0, 15.0, 30.0], [40.0, 40.0, 40.0]])
ENERGY = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
PPL = np.array([[1.01, 1.5, 1.02], [1.005, 1.1, 1.01], [1.0, 1.0, 1.0]])


def hand_case(objective: str = "latency"):
    q = QualityModel(synthetic_robustness(2))
    n = 3
    t = CandidateTable(
        choices=[Choice(1, "fp32"), Choice(2, "fp32"), Choice(4, None)], num_blocks=2, impairment="erasure",
        quality=q, curves=[Constant(1.0, 1.0)] * n, objective=Objective(objective), limit_loss=1.2,
        lat_alpha=np.zeros(n), lat_beta=np.zeros(n), e_alpha=np.zeros(n), e_beta=np.zeros(n),
        device_mem=np.array([10.0, 20.0, 40.0]), server_mem=np.array([30.0, 20.0, 0.0]), static_ok=np.ones(n, bool),
        xmax=np.full(n, np.inf), thresholds=np.full(n, np.inf),
    )
    bound = PPL + np.array([[0.01], [0.01], [0.0]])
    ev = StateEval(LAT.copy(), ENERGY.copy(), LAT.copy() if objective == "latency" else ENERGY.copy(), PPL.copy(),
                   bound, bound <= 1.2)
    return t, ev


def test_paper_reward_by_hand():
    # R = 10 (1 - rho) + (L - s) / L
    assert paper_reward(1.05, 3, 32, 1.0) == pytest.approx(-0.5 + 29 / 32)
    assert paper_reward(1.0, 0, 32, 1.0) == pytest.approx(1.0)
    assert paper_reward(1.0, 32, 32, 1.0) == pytest.approx(0.0)
    assert paper_reward(2.0, 16, 32, 1.0, a=1.0, b=2.0) == pytest.approx(-1.0 + 1.0)
    # encoders: a (cosine - 1) in place of a (1 - rho); losses are -cosine
    assert paper_reward(-0.98, 2, 4, -1.0) == pytest.approx(-0.2 + 0.5)


def test_three_step_replay_accounting_counts_switches():
    t, ev = hand_case()
    res, steps = account(t, ev, MethodRun("policy", "policy", np.array([0, 1, 0]), 123, "n"), 5.0, 10.0, 1.0)
    # cuts 1, 2, 1: two switches, each 5 ms on the step that switched
    assert steps.cut == [1, 2, 1] and steps.switched == [False, True, True]
    np.testing.assert_allclose(steps.latency_ms, [10.0, 20.0, 17.0])
    assert res.mean_latency_ms == pytest.approx(47 / 3) and res.mean_objective == pytest.approx(47 / 3)
    assert res.mean_energy_j == pytest.approx(3.0)  # 1, 5, 3: switching costs no energy
    assert res.mean_quality == pytest.approx((1.01 + 1.1 + 1.02) / 3) and res.worst_quality == pytest.approx(1.1)
    # R = 10 (1 - rho) + (2 - s) / 2 with s = 0, 1, 0 blocks on the device
    np.testing.assert_allclose(steps.reward, [0.9, -0.5, 0.8])
    assert res.mean_reward == pytest.approx(1.2 / 3)
    assert res.switches == 2 and res.budget_violations == 0 and res.model_evaluations == 123
    assert res.cuts_used == [1, 2] and res.device_memory_bytes == 20 and res.server_memory_bytes == 30


def test_oracle_weighs_the_switch_it_would_pay():
    t, ev = hand_case()
    np.testing.assert_array_equal(oracle_choices(t, ev, 5.0), [0, 1, 0])  # 12 + 5 < 30
    np.testing.assert_array_equal(oracle_choices(t, ev, 20.0), [0, 1, 1])  # 12 + 20 > 30: stay
    res, steps = account(t, ev, MethodRun("oracle", "oracle", oracle_choices(t, ev, 20.0), 0), 20.0, 10.0, 1.0)
    np.testing.assert_allclose(steps.latency_ms, [10.0, 35.0, 30.0])
    assert res.switches == 1


def test_paper_policy_maximises_the_reward_per_state():
    t, ev = hand_case()
    # step 2: cut 1 has R = 10 (1 - 1.5) + 1 = -4, cut 2 has -0.5, all-on-device 0
    np.testing.assert_array_equal(paper_choices(t, ev, "fp32"), [0, 2, 0])


def test_fixed_cuts_break_the_budget_where_the_channel_is_bad():
    t, ev = hand_case()
    runs = fixed_runs(t, "fp32", 3)
    assert [r.name for r in runs] == ["fixed cut 1", "fixed cut 2", "fixed cut 4"]
    res, steps = account(t, ev, runs[0], 5.0, 10.0, 1.0)
    assert res.budget_violations == 1 and steps.violation == [False, True, False]  # 1.51 > 1.2 on step 2
    assert res.switches == 0 and res.model_evaluations == 0
    np.testing.assert_allclose(steps.reward, [0.9, -4.0, 0.8])


def test_a_step_without_a_feasible_choice_falls_back_and_counts():
    t, ev = hand_case()
    res, steps = account(t, ev, MethodRun("p", "policy", np.array([0, -1, 0]), 0), 0.0, 10.0, 1.0)
    assert steps.cut[1] == 2  # the cheapest candidate of known quality at step 2 (15 ms)
    assert res.budget_violations == 1
