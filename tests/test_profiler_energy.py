"""Energy readers (on a fake sysfs tree), the measuring window, and the repeat statistics."""

from __future__ import annotations

import pytest

from coinfer.profiler.energy import RaplReader, find_rapl_domains, measure_window
from coinfer.profiler.stats import is_noisy, median_iqr, quantile


def _domain(root, name, energy, max_range, label="package-0"):
    d = root / name
    d.mkdir()
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    (d / "name").write_text(label + "\n")
    return d


def test_rapl_uses_packages_only_and_handles_wraparound(tmp_path):
    pkg0 = _domain(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    pkg1 = _domain(tmp_path, "intel-rapl:1", 5_000_000, 1_000_000_000, "package-1")
    _domain(tmp_path, "intel-rapl:0:0", 1, 1_000_000_000, "core")  # inside package 0: not added
    domains = find_rapl_domains(tmp_path)
    assert [d.name for d in domains] == ["package-0", "package-1"]
    reader = RaplReader(domains)
    assert reader.read_j() == 0
    # package 0 wraps: 999 J -> 1000 J (= 0) -> 2 J is 3 J; package 1 moves 1.5 J
    (pkg0 / "energy_uj").write_text("2000000\n")
    (pkg1 / "energy_uj").write_text("6500000\n")
    assert reader.read_j() == pytest.approx(4.5)
    (pkg0 / "energy_uj").write_text("3000000\n")
    assert reader.read_j() == pytest.approx(5.5)


def test_unreadable_rapl_is_no_rapl(tmp_path):
    d = _domain(tmp_path, "intel-rapl:0", 1, 10)
    (d / "energy_uj").write_text("not a number")
    assert find_rapl_domains(tmp_path) == []
    assert find_rapl_domains(tmp_path / "missing") == []


class FakeClockReader:
    """A counter at 50 W on a clock that advances 10 ms per stage call."""

    source = "fake"

    def __init__(self):
        self.t = 0.0

    def clock(self):
        return self.t

    def read_j(self):
        return 50.0 * self.t

    def call(self):
        self.t += 0.010


def test_measure_window_runs_until_the_window_and_divides():
    fake = FakeClockReader()
    per_call, calls = measure_window(fake, fake.call, lambda: None, 0.095, fake.clock)
    assert calls == 10
    assert per_call == pytest.approx(0.5)  # 50 W x 10 ms
    fake2 = FakeClockReader()
    _, calls = measure_window(fake2, fake2.call, lambda: None, 0.0, fake2.clock)
    assert calls == 3  # never fewer than three calls


def test_quantiles_match_numpy_linear_method():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    # numpy.percentile(xs, [25, 50, 75]) -> 2.25, 3.5, 4.75
    assert quantile(xs, 0.25) == pytest.approx(2.25)
    assert median_iqr(xs) == pytest.approx((3.5, 2.5))
    assert median_iqr([7.0]) == (7.0, 0.0)
    assert is_noisy(10.0, 1.01) and not is_noisy(10.0, 1.0) and not is_noisy(0.0, 1.0)
