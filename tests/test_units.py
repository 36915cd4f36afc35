"""Units on the command line: one parser for every kind, case-sensitive, refusing what is ambiguous."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer import units
from coinfer.errors import UserInputError
from coinfer.units import (
    KINDS,
    fmt,
    fmt_rate,
    parse,
    parse_bytes,
    parse_distance_m,
    parse_duration_ms,
    parse_energy_j,
    parse_frequency_hz,
    parse_gain,
    parse_noise_w_per_hz,
    parse_power_w,
    parse_range,
    parse_rate_bps,
    parse_scale,
)


@pytest.mark.parametrize("text, bps", [("20Mbps", 20e6), ("1.5 Gbps", 1.5e9), ("500kbps", 5e5), ("1e6bps", 1e6),
                                       ("100 Mbit/s", 1e8), (".5Gbps", 5e8), ("20Mb/s", 20e6),
                                       ("20MB/s", 160e6), ("1kB/s", 8e3), ("3B/s", 24.0)])
def test_rates(text, bps):
    assert parse_rate_bps(text) == pytest.approx(bps, rel=1e-15)


@pytest.mark.parametrize("text, msg", [
    ("0Mbps", "positive"), ("-1Mbps", "positive"), ("nan Mbps", "not a rate"), ("inf bps", "not a rate"),
    ("1e999bps", "finite"), ("20 furlongs", "unknown rate unit 'furlongs'"), ("20", "missing unit"),
    ("", "not a rate"), ("Mbps", "not a rate"),
    # Megabytes are never read as megabits: MBps is refused as ambiguous, with both spellings offered.
    ("20MBps", "write Mbps for megabits or MB/s for megabytes"),
    ("20mbps", "case-sensitive, did you mean Mbps?"), ("20mbit", "unknown rate unit 'mbit'"),
])
def test_bad_rates(text, msg):
    with pytest.raises(UserInputError, match=msg.replace("?", r"\?")) as info:
        parse_rate_bps(text)
    line = str(info.value)
    assert "\n" not in line
    if "unit" in msg or "case" in msg or "write" in msg:
        assert "accepted: bps, kbps, Mbps" in line and "MB/s" in line


def test_case_carries_meaning():
    assert parse_energy_j("1MJ") == 1e6 and parse_energy_j("1mJ") == 1e-3
    assert parse_power_w("0.001MW") == 1e3 and parse_power_w("1mW") == 1e-3
    assert parse_frequency_hz("10kHz") == 1e4 and parse_frequency_hz("10MHz") == 1e7
    assert parse_frequency_hz("2.4GHz") == pytest.approx(2.4e9)
    assert parse_bytes("1MB") == 10**6 and parse_bytes("1MiB") == 2**20 and parse_bytes("1kB") == 1000
    for text, kind, hint in (("1mj", parse_energy_j, "mJ or MJ"), ("1mw", parse_power_w, "mW or MW"),
                             ("10mhz", parse_frequency_hz, "MHz"), ("4gb", parse_bytes, "GB"),
                             ("10MS", parse_duration_ms, "ms")):
        with pytest.raises(UserInputError, match=f"case-sensitive, did you mean {hint}"):
            kind(text)
    with pytest.raises(UserInputError, match="means gigabits: sizes are in bytes, write GB"):
        parse_bytes("4Gb")
    with pytest.raises(UserInputError, match="kB for 1000 bytes or KiB for 1024"):
        parse_bytes("4KB")


def test_other_units():
    assert parse_duration_ms("10ms") == 10 and parse_duration_ms("0.5s") == 500 and parse_duration_ms("200us") == 0.2
    assert parse_duration_ms("200µs") == 0.2 and parse_duration_ms("1min") == 60e3
    assert parse_power_w("23dBm") == pytest.approx(10 ** 2.3 * 1e-3)
    assert parse_power_w("200mW") == pytest.approx(0.2) and parse_power_w("0dBW") == 1.0
    assert parse_noise_w_per_hz("-174dBm/Hz") == pytest.approx(10 ** -20.4)
    assert parse_noise_w_per_hz("4e-21W/Hz") == 4e-21
    assert parse_gain("-30dB") == pytest.approx(1e-3) and parse_gain("1e-7") == 1e-7
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("1MiB") == 2**20
    assert parse_energy_j("0.01Wh") == pytest.approx(36.0) and parse_distance_m("1.5km") == 1500
    assert parse_scale("0.5") == 0.5
    assert fmt_rate(1.5e9) == "1.5 Gbps" and fmt_rate(20e6) == "20 Mbps" and fmt_rate(12) == "12 bps"
    for bad in (lambda: parse_gain("0"), lambda: parse_scale("nan"), lambda: parse_scale("-1"),
                lambda: parse_duration_ms("5 parsecs"), lambda: parse_bytes("-1kB"), lambda: parse_gain("3 dBm")):
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


# -- format -> parse round trips, for every unit of every kind ---------------------------------

_UNITS = [(name, u) for name, kind in KINDS.items() for u in [*kind.units, *kind.decibels] if u or kind.allow_bare]
_fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False)


def _in_range(kind, u: float) -> float:
    """A value a fraction ``u`` of the way (log scale) through the kind's range, off its edges."""
    lo, hi = kind.limits[0] * 1.01, kind.limits[1] / 1.01
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


@pytest.mark.parametrize("kind_name, unit", _UNITS)
@settings(max_examples=40, deadline=None)
@given(u=_fractions)
def test_format_parse_roundtrip_every_unit(kind_name, unit, u):
    kind = KINDS[kind_name]
    value = _in_range(kind, u)
    exact = parse(fmt(value, kind, unit, digits=None), kind, "--x")
    assert exact == pytest.approx(value, rel=1e-12)
    human = parse(fmt(value, kind, unit), kind, "--x")
    assert human == pytest.approx(value, rel=1.2e-3 if unit in kind.decibels else 1e-3)


@pytest.mark.parametrize("kind_name", list(KINDS))
@settings(max_examples=60, deadline=None)
@given(u=_fractions)
def test_automatic_unit_roundtrips(kind_name, u):
    kind = KINDS[kind_name]
    x = _in_range(kind, u)
    text = fmt(x, kind)
    assert parse(text, kind, "--x") == pytest.approx(x, rel=1e-3)
    assert parse(fmt(x, kind, digits=None), kind, "--x") == pytest.approx(x, rel=1e-12)


def test_every_kind_refuses_a_bare_number_unless_a_ratio():
    for kind in KINDS.values():
        if kind.allow_bare:
            assert parse("2", kind, "--x") == 2.0
            continue
        with pytest.raises(UserInputError, match=f"missing unit, e.g. {kind.example}"):
            parse("2", kind, "--x")


def test_fmt_rejects_a_foreign_unit():
    with pytest.raises(ValueError):
        fmt(1.0, units.RATE, "MHz")


@pytest.mark.parametrize("parse_one, text", [
    (parse_rate_bps, "1e-300bps"), (parse_rate_bps, "0.5bps"), (parse_rate_bps, "11Tbps"),
    (parse_frequency_hz, "1e-300Hz"), (parse_frequency_hz, "2THz"),
    (parse_power_w, "1e300dBm"), (parse_power_w, "61dBm"), (parse_power_w, "1.5kW"), (parse_power_w, "1e-12W"),
    (parse_gain, "1e-300"), (parse_gain, "-301dB"), (parse_gain, "1e4"),
    (parse_duration_ms, "1e300s"), (parse_duration_ms, "25h"),
    (parse_energy_j, "2e9J"), (parse_bytes, "2e15B"), (parse_distance_m, "1e300km"),
    (parse_noise_w_per_hz, "1e-40W/Hz"), (parse_scale, "1e300"),
])
def test_absurd_values_are_refused_in_one_line(parse_one, text):
    with pytest.raises(UserInputError, match="outside") as info:
        parse_one(text, "--x")
    assert "\n" not in str(info.value) and str(info.value).startswith("--x ")


def test_the_edges_of_each_range_are_accepted():
    assert parse_rate_bps("1bps") == 1 and parse_rate_bps("10Tbps") == 1e13
    assert parse_power_w("60dBm") == pytest.approx(1e3) and parse_power_w("-60dBm") == pytest.approx(1e-9)
    assert parse_power_w("0W") == 0 and parse_duration_ms("0ms") == 0 and parse_duration_ms("24h") == 8.64e7
    assert parse_gain("-300dB") == pytest.approx(1e-30) and parse_frequency_hz("1THz") == 1e12
