"""Units on the command line: rates, durations, powers, ranges; bad values are one clear error."""

from __future__ import annotations

import math

import pytest

from coinfer.errors import UserInputError
from coinfer.planner.units import (
    fmt_rate,
    parse_bytes,
    parse_duration_ms,
    parse_gain,
    parse_noise_w_per_hz,
    parse_power_w,
    parse_range,
    parse_rate_bps,
    parse_scale,
)


@pytest.mark.parametrize("text, bps", [("20Mbps", 20e6), ("1.5 Gbps", 1.5e9), ("500kbps", 5e5), ("1e6bps", 1e6),
                                       ("100 mbit/s", 1e8), (".5Gbps", 5e8)])
def test_rates(text, bps):
    assert parse_rate_bps(text) == pytest.approx(bps, rel=1e-15)


@pytest.mark.parametrize("text, msg", [("0Mbps", "positive"), ("-1Mbps", "positive"), ("nan Mbps", "not a rate"),
                                       ("inf bps", "not a rate"), ("1e999bps", "finite"), ("20 furlongs", "unknown"),
                                       ("20", "missing unit"), ("", "not a rate"), ("Mbps", "not a rate")])
def test_bad_rates(text, msg):
    with pytest.raises(UserInputError, match=msg):
        parse_rate_bps(text)


def test_other_units():
    assert parse_duration_ms("10ms") == 10 and parse_duration_ms("0.5s") == 500 and parse_duration_ms("200us") == 0.2
    assert parse_power_w("23dBm") == pytest.approx(10 ** 2.3 * 1e-3)
    assert parse_power_w("200mW") == pytest.approx(0.2) and parse_power_w("0dBW") == 1.0
    assert parse_noise_w_per_hz("-174dBm/Hz") == pytest.approx(10 ** -20.4)
    assert parse_noise_w_per_hz("4e-21W/Hz") == 4e-21
    assert parse_gain("-30dB") == pytest.approx(1e-3) and parse_gain("1e-7") == 1e-7
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("1MiB") == 2**20
    assert parse_scale("0.5") == 0.5
    assert fmt_rate(1.5e9) == "1.5 Gbps" and fmt_rate(20e6) == "20 Mbps" and fmt_rate(12) == "12 bps"
    for bad in (lambda: parse_gain("0"), lambda: parse_scale("nan"), lambda: parse_scale("-1"),
                lambda: parse_duration_ms("5 parsecs"), lambda: parse_bytes("-1kB")):
        with pytest.raises(UserInputError):
            bad()


def test_ranges():
    assert parse_range("0.5:1.0", "--freq-range", parse_scale, 6) == (0.5, 1.0, 6)
    assert parse_range("1Mbps:1Gbps:1000", "--sweep-rate", parse_rate_bps, 200) == (1e6, 1e9, 1000)
    assert parse_range("1:1", "--freq-range", parse_scale, 6) == (1.0, 1.0, 1)
    for bad, msg in (("1:0.5", "above"), ("0.5", "LO:HI"), ("0.5:1:x", "whole"), ("0.5:1:1", "at least 2")):
        with pytest.raises(UserInputError, match=msg):
            parse_range(bad, "--freq-range", parse_scale, 6)
    assert not math.isnan(parse_range("1:2:2", "--x", parse_scale, 3)[1])
