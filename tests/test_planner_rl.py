"""The paper's RL baseline: surrogate data and fit, the environment's reward by hand, a tiny PPO run."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.planner.cost import Budgets, Objective, Workload, derive_server_profile
from coinfer.planner.link import Link
from coinfer.planner.policy import build_table, evaluate_states
from coinfer.planner.quality import QualityModel
from coinfer.planner.rl_baseline import EPISODE_STEPS, RewardCore, Surrogate, make_env, rl_run, surrogate_data
from coinfer.planner.robust import wire_models
from coinfer.planner.synthetic import synthetic_profile, synthetic_robustness


def test_surrogate_data_uses_the_base_wire_points_and_counts_their_evaluations():
    rob = synthetic_robustness(4, cuts=[1, 3], wires=("fp32", "int8"), erasure=(0.1, 0.2), draws=8,
                               evaluations_per_draw=8)
    d = surrogate_data(rob, "erasure", "fp32")
    # fp32 alone at 2 cuts (1 draw each) + 2 erasures x 2 cuts (8 draws each) = 34 draws of 8 evaluations
    assert d.evaluations == 34 * 8
    measured = d.cut < 6
    assert measured.sum() == 6 and sorted(set(d.cut[measured].tolist())) == [1, 3]
    np.testing.assert_allclose(np.sort(d.severity[~measured]), [0.0, 0.1, 0.2])  # all-on-device, exact
    np.testing.assert_allclose(d.figure[~measured], 1.0)


def test_surrogate_fits_the_measured_points_and_is_seeded():
    rob = synthetic_robustness(6, wires=("fp32",), erasure=(0.05, 0.1, 0.2, 0.3), sensitivity=2.0)
    d = surrogate_data(rob, "erasure", "fp32")
    a = Surrogate(d, 8, seed=0, epochs=1500)
    pred = a.predict(d.severity, d.cut)
    span = d.figure.max() - d.figure.min()
    assert np.max(np.abs(pred - d.figure)) < 0.05 * span
    assert a.train_mse < 1e-3 * span ** 2
    b, c = Surrogate(d, 8, seed=1, epochs=30), Surrogate(d, 8, seed=1, epochs=30)
    np.testing.assert_array_equal(b.predict(d.severity, d.cut), c.predict(d.severity, d.cut))


def test_environment_reward_by_hand():
    def predict(sev, cut):  # a made-up surrogate: worse at larger severity, better at deeper cuts
        return 1.0 + 0.5 * np.asarray(sev) / np.asarray(cut)

    core = RewardCore(np.array([1, 2, 5]), 3, 1.0, predict, 0.0, 0.4, 0.0, 1.0)
    r = core.rewards([0.2])
    # R = 10 (1 - rho) + (3 - s) / 3, s = cut - 1 clipped to 0..3
    np.testing.assert_allclose(r[0], [10 * -0.1 + 1.0, 10 * -0.05 + 2 / 3, 10 * -0.02 + 0.0], atol=1e-12)
    np.testing.assert_allclose(core.observation(0.2, 0.25), [0.5, 0.25])
    env = make_env(core, np.array([0.2]), np.array([0.25]), seed=0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.5, 0.25])
    total = 0
    for step in range(EPISODE_STEPS):
        obs, reward, terminated, truncated, _ = env.step(1)
        assert reward == pytest.approx(r[0, 1]) and not terminated
        assert truncated == (step == EPISODE_STEPS - 1)
        total += 1
    assert total == EPISODE_STEPS


def test_tiny_ppo_run_returns_valid_choices():
    dev = synthetic_profile(4, seq_len=16, hidden=64, stage_ms=[0.5, 20, 20, 20, 20, 10])
    rob = synthetic_robustness(4, hidden=64, wires=("fp32",), erasure=(0.05, 0.2))
    q = QualityModel(rob)
    models = wire_models(dev, derive_server_profile(dev, 10), Workload(16, 2), q, "fp32", [])
    t = build_table(models, "fp32", Link(rate_bps=5e7, rtt_ms=2), q, "erasure", Objective(), Budgets(), 1.3)
    rng = np.random.default_rng(0)
    sev, up = rng.uniform(0, 0.2, 40), np.full(40, 5e7)
    ev = evaluate_states(t, sev, up)
    run = rl_run(t, ev, sev, up, "fp32", rob, timesteps=512, seed=0)
    assert run.kind == "rl" and run.choices.shape == (40,)
    assert all(t.choices[k].wire in (None, "fp32") and t.curves[k] is not None for k in run.choices)
    assert run.evaluations == surrogate_data(rob, "erasure", "fp32").evaluations
