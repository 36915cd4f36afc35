"""Quality from a robustness profile: monotone, conservative interpolation against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.planner.quality import QualityModel, severity
from coinfer.planner.synthetic import identity
from coinfer.reports.common import MachineInfo
from coinfer.reports.robustness import ChannelCondition, Estimate, RobustnessPoint, RobustnessProfile

MACHINE = MachineInfo(hostname="t", os="t", cpu="t", cpu_count_logical=1, python="3")


def est(mean: float, half: float = 0.0, draws: int = 8) -> Estimate:
    return Estimate(mean=mean, ci_low=mean - half, ci_high=mean + half, draws=draws if half else 1)


def point(cut, wire="fp32", imp="none", level=None, mean=1.0, half=0.0, decoder=True):
    cond = ChannelCondition(wire_dtype=wire, impairment=imp,
                            erasure_p=level if imp == "erasure" else None, snr_db=level if imp == "awgn" else None)
    fig = est(mean, half)
    return RobustnessPoint(cut=cut, cut_name=f"block.{cut - 2}", condition=cond, payload_bytes_per_token=256,
                           perplexity_ratio=fig if decoder else None, pooled_cosine=None if decoder else fig,
                           output_rel_mse=est(0.0))


def profile(points, num_blocks=6, decoder=True) -> RobustnessProfile:
    return RobustnessProfile(model=identity(num_blocks, is_decoder=decoder), machine=MACHINE,
                             metric="perplexity_ratio" if decoder else "pooled_cosine", seed=0,
                             cuts=sorted({p.cut for p in points}), points=points, model_evaluations=100)


def test_erasure_curve_is_enveloped_and_interpolated_by_hand():
    # measured means 1.10, 1.05 (noise: below the better channel's), 1.30 at p = 0.1, 0.2, 0.3
    q = QualityModel(profile([point(3, imp="erasure", level=p, mean=m) for p, m in ((0.1, 1.1), (0.2, 1.05), (0.3, 1.3))]))
    cv = q.curve(3, "fp32", "erasure")
    mean, bound = cv.at(np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.31]))
    # fp32 clean is exact (1.0 at p = 0), then the running worst: 1.1, 1.1, 1.3
    np.testing.assert_allclose(mean[:7], [1.0, 1.05, 1.1, 1.1, 1.1, 1.2, 1.3])
    assert np.isnan(mean[7]) and np.isnan(bound[7])  # beyond the worst measured channel: unknown


def test_interpolation_is_monotone_for_noisy_points():
    rng = np.random.default_rng(3)
    ps = np.sort(rng.uniform(0.01, 0.4, 12))
    means = 1 + ps + rng.normal(0, 0.08, ps.size)  # noisy, often non-monotone
    q = QualityModel(profile([point(2, "fp16", "erasure", p, m, half=0.02) for p, m in zip(ps, means, strict=True)]))
    grid = np.linspace(0, ps[-1], 2001)
    mean, bound = q.curve(2, "fp16", "erasure").at(grid)
    assert np.all(np.diff(mean) >= -1e-12) and np.all(np.diff(bound) >= -1e-12)
    assert np.all(bound >= mean)
    # never better than a measurement at a better (or equal) channel
    for p, m in zip(ps, means, strict=True):
        assert np.all(mean[grid >= p] >= m - 1e-12)


def test_fp16_without_clean_point_holds_the_first_measurement_below_it():
    q = QualityModel(profile([point(3, "fp16", "erasure", 0.1, 1.2), point(3, "fp16", "erasure", 0.2, 1.4)]))
    mean, _ = q.curve(3, "fp16", "erasure").at(np.array([0.0, 0.05, 0.15]))
    np.testing.assert_allclose(mean, [1.2, 1.2, 1.3])
    assert q.curve(3, "fp16", "none") is None  # fp16 alone was not measured: unknown, not assumed exact
    assert q.curve(3, "int8", "erasure") is None


def test_awgn_severity_runs_down_the_snr_and_holds_above_the_best_snr():
    pts = [point(3, imp="awgn", level=s, mean=m) for s, m in ((20, 1.01), (10, 1.1), (0, 2.0))]
    q = QualityModel(profile(pts))
    cv = q.curve(3, "fp32", "awgn")
    mean, _ = cv.at(severity("awgn", [30, 20, 15, 5, 0, -1]))
    np.testing.assert_allclose(mean[:5], [1.01, 1.01, 1.055, 1.55, 2.0])
    assert np.isnan(mean[5])


def test_unmeasured_cut_takes_the_worse_neighbour_and_ends_are_exact():
    pts = [point(2, imp="erasure", level=0.1, mean=1.3), point(2, imp="erasure", level=0.3, mean=1.5),
           point(5, imp="erasure", level=0.1, mean=1.1), point(5, imp="erasure", level=0.3, mean=1.9)]
    q = QualityModel(profile(pts, num_blocks=6))
    mid = q.curve(3, "fp32", "erasure")
    mean, _ = mid.at(np.array([0.1, 0.3]))
    np.testing.assert_allclose(mean, [1.3, 1.9])
    assert q.curve(1, "fp32", "erasure") is None and q.curve(7, "fp32", "erasure") is None  # outside measured cuts
    all_device = q.curve(8, "int8", "erasure")  # nothing crosses: exact at any channel
    np.testing.assert_allclose(all_device.at(np.array([0.9]))[0], [1.0])
    assert q.curve(0, "fp32", "erasure") is None  # token ids under erasure: not measured
    np.testing.assert_allclose(q.curve(0, "fp32", "none").at(np.array([0.0]))[0], [1.0])


def test_thresholds_agree_with_the_curve():
    pts = [point(3, imp="erasure", level=p, mean=m, half=0.05) for p, m in ((0.1, 1.1), (0.2, 1.3), (0.3, 1.6))]
    cv = QualityModel(profile(pts)).curve(3, "fp32", "erasure")
    # bound: 1.0 (exact) at 0, 1.15, 1.35, 1.65: 1.25 is crossed halfway between 0.1 and 0.2
    assert cv.threshold(1.25) == pytest.approx(0.15)
    assert cv.threshold(0.99) == -np.inf
    assert cv.threshold(2.0) == pytest.approx(0.3)  # known only up to the worst measured channel
    for lim in (1.05, 1.2, 1.4, 1.6):
        t = cv.threshold(lim)
        assert cv.at(np.array([t]))[1][0] <= lim + 1e-12
        assert cv.at(np.array([t + 1e-6]))[1][0] > lim or t + 1e-6 > 0.3


def test_cosine_is_budgeted_through_its_lower_interval_end():
    pts = [point(3, imp="erasure", level=0.2, mean=0.95, half=0.01, decoder=False)]
    q = QualityModel(profile(pts, decoder=False))
    mean, bound = q.curve(3, "fp32", "erasure").at(np.array([0.2]))
    assert q.native(mean[0]) == pytest.approx(0.95) and q.native(bound[0]) == pytest.approx(0.94)
    assert q.limit_loss(0.945) == pytest.approx(-0.945)
    assert bound[0] > q.limit_loss(0.945)  # the pessimistic end breaks a 0.945 floor although the mean meets it
