"""Parsing of quantities with units (rates, durations, powers, ...) into SI floats.

Every parser raises :class:`coinfer.errors.UserInputError` with one line naming the option, so a
typo never becomes a silently wrong plan. Values must be finite; NaN and inf are refused.
"""

from __future__ import annotations

import math
import re

from coinfer.errors import UserInputError

_NUMBER_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z/µ]*)\s*$")

# Rates: SI prefixes are decimal (1 Mbps = 1e6 bit/s), as link vendors use them.
_RATE_UNITS = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "tbps": 1e12,
               "bit/s": 1.0, "kbit/s": 1e3, "mbit/s": 1e6, "gbit/s": 1e9}
_TIME_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3}
_FREQ_UNITS = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}
_BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ENERGY_UNITS = {"j": 1.0, "mj": 1e-3, "kj": 1e3, "wh": 3600.0}
_DIST_UNITS = {"m": 1.0, "km": 1e3}


def _split(text: str, option: str, what: str) -> tuple[float, str]:
    m = _NUMBER_UNIT.match(str(text))
    if not m:
        raise UserInputError(f"{option} {text!r}: not a {what} (expected a number and a unit, e.g. {_EXAMPLES[what]})")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise UserInputError(f"{option} {text!r}: must be finite")
    return value, m.group(2)


_EXAMPLES = {
    "rate": "'20Mbps'", "duration": "'10ms'", "power": "'0.2W' or '23dBm'", "bandwidth": "'10MHz'",
    "size": "'8GB'", "energy": "'5J'", "noise density": "'-174dBm/Hz' or '4e-21W/Hz'", "gain": "'1e-7' or '-70dB'",
    "distance": "'100m'",
}


def _lookup(table: dict, unit: str, text: str, option: str, what: str) -> float:
    key = unit.lower()
    if key not in table:
        if not unit:
            raise UserInputError(f"{option} {text!r}: missing unit (e.g. {_EXAMPLES[what]})")
        raise UserInputError(f"{option} {text!r}: unknown unit {unit!r} (expected {', '.join(sorted(set(table)))})")
    return table[key]


def parse_rate_bps(text: str, option: str = "--rate") -> float:
    """Parse a link rate such as '20Mbps', '1.5 Gbps', '500kbps' or '1e6bps' into bit/s.

    Raises:
        UserInputError: Malformed, unknown unit, not finite, or not positive.
    """
    value, unit = _split(text, option, "rate")
    bps = value * _lookup(_RATE_UNITS, unit, text, option, "rate")
    if bps <= 0:
        raise UserInputError(f"{option} {text!r}: a rate must be positive")
    return bps


def parse_duration_ms(text: str, option: str = "--rtt") -> float:
    """Parse a duration such as '10ms', '0.5s' or '200us' into milliseconds (>= 0)."""
    value, unit = _split(text, option, "duration")
    ms = value * _lookup(_TIME_UNITS_MS, unit, text, option, "duration")
    if ms < 0:
        raise UserInputError(f"{option} {text!r}: must not be negative")
    return ms


def parse_power_w(text: str, option: str = "--tx-power") -> float:
    """Parse a power in W, mW, dBm or dBW into watts (> 0 for dB forms, >= 0 otherwise)."""
    value, unit = _split(text, option, "power")
    u = unit.lower()
    if u == "dbm":
        return 10 ** (value / 10) * 1e-3
    if u == "dbw":
        return 10 ** (value / 10)
    w = value * _lookup({"w": 1.0, "mw": 1e-3, "kw": 1e3}, unit, text, option, "power")
    if w < 0:
        raise UserInputError(f"{option} {text!r}: must not be negative")
    return w


def parse_bandwidth_hz(text: str, option: str = "--bandwidth") -> float:
    """Parse a bandwidth such as '10MHz' into Hz (> 0)."""
    value, unit = _split(text, option, "bandwidth")
    hz = value * _lookup(_FREQ_UNITS, unit, text, option, "bandwidth")
    if hz <= 0:
        raise UserInputError(f"{option} {text!r}: must be positive")
    return hz


def parse_noise_w_per_hz(text: str, option: str = "--noise-density") -> float:
    """Parse a noise power spectral density in W/Hz or dBm/Hz (e.g. -174dBm/Hz) into W/Hz."""
    value, unit = _split(text, option, "noise density")
    u = unit.lower()
    if u == "dbm/hz":
        return 10 ** (value / 10) * 1e-3
    if u == "dbw/hz":
        return 10 ** (value / 10)
    n0 = value * _lookup({"w/hz": 1.0}, unit, text, option, "noise density")
    if n0 <= 0:
        raise UserInputError(f"{option} {text!r}: must be positive")
    return n0


def parse_gain(text: str, option: str = "--channel-gain") -> float:
    """Parse a power gain: a plain positive ratio (1e-7) or decibels ('-70dB')."""
    value, unit = _split(text, option, "gain")
    u = unit.lower()
    if u == "db":
        return 10 ** (value / 10)
    if u:
        raise UserInputError(f"{option} {text!r}: unknown unit {unit!r} (expected a plain ratio or dB)")
    if value <= 0:
        raise UserInputError(f"{option} {text!r}: a gain must be positive (or given in dB)")
    return value


def parse_distance_m(text: str, option: str = "--distance") -> float:
    """Parse a distance such as '100m' or '1.5km' into metres (> 0)."""
    value, unit = _split(text, option, "distance")
    m = value * _lookup(_DIST_UNITS, unit, text, option, "distance")
    if m <= 0:
        raise UserInputError(f"{option} {text!r}: must be positive")
    return m


def parse_bytes(text: str, option: str = "--max-memory") -> int:
    """Parse a size such as '8GB', '512MiB' or '1000B' into bytes (>= 0)."""
    value, unit = _split(text, option, "size")
    n = value * _lookup(_BYTE_UNITS, unit, text, option, "size")
    if n < 0:
        raise UserInputError(f"{option} {text!r}: must not be negative")
    return int(n)


def parse_energy_j(text: str, option: str = "--max-energy") -> float:
    """Parse an energy such as '5J', '300mJ' or '0.01Wh' into joules (>= 0)."""
    value, unit = _split(text, option, "energy")
    j = value * _lookup(_ENERGY_UNITS, unit, text, option, "energy")
    if j < 0:
        raise UserInputError(f"{option} {text!r}: must not be negative")
    return j


def parse_range(text: str, option: str, parse, default_steps: int) -> tuple[float, float, int]:
    """Parse 'LO:HI[:STEPS]' with each end parsed by ``parse``.

    Returns:
        (lo, hi, steps) with lo <= hi and steps >= 1 (1 only when lo == hi).
    """
    parts = str(text).split(":")
    if len(parts) not in (2, 3):
        raise UserInputError(f"{option} {text!r}: expected LO:HI or LO:HI:STEPS")
    lo, hi = parse(parts[0], option), parse(parts[1], option)
    if lo > hi:
        raise UserInputError(f"{option} {text!r}: the low end is above the high end")
    steps = default_steps
    if len(parts) == 3:
        try:
            steps = int(parts[2])
        except ValueError:
            raise UserInputError(f"{option} {text!r}: STEPS must be a whole number") from None
        if steps < 1 or steps > 100_000:
            raise UserInputError(f"{option} {text!r}: STEPS must be in 1..100000")
    if lo == hi:
        steps = 1
    elif steps < 2:
        raise UserInputError(f"{option} {text!r}: a range needs at least 2 steps")
    return lo, hi, steps


def parse_scale(text: str, option: str = "--freq-range") -> float:
    """Parse a plain positive, finite number (a frequency scale)."""
    try:
        v = float(text)
    except ValueError:
        raise UserInputError(f"{option} {text!r}: not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise UserInputError(f"{option} {text!r}: must be a positive finite number")
    return v


def fmt_rate(bps: float) -> str:
    """Format a rate for people: '20 Mbps', '1.5 Gbps'."""
    for unit, f in (("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= f:
            return f"{bps / f:.4g} {unit}"
    return f"{bps:.4g} bps"
