"""Quantities with units on the command line: one parser and one formatter for every kind.

Every option that takes a rate, duration, energy, power, size, frequency, distance, noise density
or gain goes through this module (``coinfer plan``, ``run``, ``profile``, ...). It imports no
torch and no numpy.

Rules:

* Units are case-sensitive where case carries meaning: ``mJ`` is a millijoule and ``MJ`` a
  megajoule, ``mW``/``MW`` likewise; ``b`` is a bit and ``B`` a byte (``Mb/s`` = megabits,
  ``MB/s`` = megabytes per second, 8x more).
* Ambiguous spellings are refused rather than guessed: ``20MBps`` (megabytes or a mistyped
  ``Mbps``? tools disagree: tc reads ``mbps`` as megabytes), ``KB`` (1000 or 1024 bytes?), a size
  in bits. A number without a unit is refused too: ``--emulate-rate 20`` is not 20 bit/s.
* Every refusal is one :class:`~coinfer.errors.UserInputError` line naming the option and
  listing the accepted spellings. Values must be finite.
* Values must be physically sensible: each kind has a range (below; zero is allowed where the
  option allows it), so ``1e-300bps`` or ``1e300dBm`` is refused here instead of overflowing a
  computation or writing a plan nobody can load. The ranges are generous on purpose:

  ========== ============================== =========================================
  kind       range                          why
  ========== ============================== =========================================
  rate       1 bit/s .. 10 Tbit/s           slower than a telegraph, faster than fibre
  duration   1 ns .. 1 day                  a timer tick .. a run nobody waits for
  energy     1 nJ .. 1 GJ                   one kernel .. a quarter ton of TNT
  power      1 nW (-60 dBm) .. 1 kW (60 dBm) a sensor's radio .. a broadcast transmitter
  size       1 B .. 1 PB                    whole bytes, more memory than any machine
  frequency  1 Hz .. 1 THz                  bandwidths of any real radio
  distance   1 mm .. 100,000 km             on a chip .. beyond geostationary orbit
  noise      1e-30 .. 1e-6 W/Hz             -270 .. 0 dBm/Hz (thermal noise: -174)
  gain       1e-30 .. 1e3                   -300 .. +30 dB
  ========== ============================== =========================================

Each kind has a home unit the parser returns: bit/s, ms, J, W, bytes, Hz, m, W/Hz and a plain
power ratio. ``fmt_*`` turn a home-unit value back into text that parses to the same value
(exactly with ``digits=None``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from coinfer.errors import UserInputError

_NUMBER_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z/µμ]*)\s*$")


@dataclass(frozen=True)
class Kind:
    """One kind of quantity: its accepted spellings and how to print it.

    Attributes:
        name: What it is, in messages ('rate').
        home: The unit parsers return ('bit/s').
        units: Accepted spelling -> value of one such unit in the home unit.
        decibels: Accepted logarithmic spelling -> reference in the home unit (x dBm = 10^(x/10) mW).
        auto: Units :func:`fmt` picks from, largest first (the first not above the value).
        ambiguous: Spelling -> why it is refused and what to write instead.
        example: A valid value, for messages.
        allow_bare: A plain number is accepted (in the home unit); only for ratios.
        limits: (lowest, highest) sensible non-zero value, in the home unit.
        limits_text: The same range for messages, e.g. '1 bps..10 Tbps'.
    """

    name: str
    home: str
    units: dict[str, float]
    auto: tuple[str, ...]
    example: str
    decibels: dict[str, float] = field(default_factory=dict)
    ambiguous: dict[str, str] = field(default_factory=dict)
    allow_bare: bool = False
    limits: tuple[float, float] = (0.0, math.inf)
    limits_text: str = ""

    @property
    def spellings(self) -> list[str]:
        """Every accepted unit, in table order."""
        return [u for u in self.units if u] + list(self.decibels)


def _prefixed(base: str, scale: float, prefixes: str = "kMGT", milli: bool = False) -> dict[str, float]:
    out = {base: scale}
    if milli:
        out = {f"m{base}": scale * 1e-3, **out}
    for i, p in enumerate(prefixes, start=1):
        out[f"{p}{base}"] = scale * 10.0 ** (3 * i)
    return out


def _bytes_per_second_ambiguous() -> dict[str, str]:
    names = {"": "", "k": "kilo", "M": "mega", "G": "giga", "T": "tera"}
    out = {}
    for p in ("", "k", "K", "M", "G", "T"):
        q = "k" if p == "K" else p
        out[f"{p}Bps"] = (f"'{p}Bps' is ambiguous (bits or bytes? tools disagree, and it is a common typo): "
                          f"write {q}bps for {names[q]}bits or {q}B/s for {names[q]}bytes per second")
    return out


RATE = Kind(
    name="rate", home="bit/s", example="20Mbps",
    units={**_prefixed("bps", 1.0), **_prefixed("bit/s", 1.0), **_prefixed("b/s", 1.0), **_prefixed("B/s", 8.0)},
    auto=("Tbps", "Gbps", "Mbps", "kbps", "bps"),
    ambiguous=_bytes_per_second_ambiguous(),
    limits=(1.0, 1e13), limits_text="1 bps..10 Tbps",
)
DURATION = Kind(
    name="duration", home="ms", example="10ms",
    units={"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1e3, "min": 6e4, "h": 3.6e6},
    auto=("s", "ms", "us", "ns"),
    limits=(1e-6, 8.64e7), limits_text="1 ns..1 day",
)
ENERGY = Kind(
    name="energy", home="J", example="2J",
    units={"nJ": 1e-9, "uJ": 1e-6, "µJ": 1e-6, "μJ": 1e-6, **_prefixed("J", 1.0, "kM", milli=True),
           "mWh": 3.6, "Wh": 3600.0, "kWh": 3.6e6},
    auto=("MJ", "kJ", "J", "mJ", "uJ"),
    limits=(1e-9, 1e9), limits_text="1 nJ..1 GJ",
)
POWER = Kind(
    name="power", home="W", example="0.2W",
    units={"nW": 1e-9, "uW": 1e-6, "µW": 1e-6, "μW": 1e-6, **_prefixed("W", 1.0, "kM", milli=True)},
    decibels={"dBm": 1e-3, "dBW": 1.0},
    auto=("MW", "kW", "W", "mW", "uW"),
    limits=(1e-9, 1e3), limits_text="1 nW..1 kW (-60..60 dBm)",
)
SIZE = Kind(
    name="size", home="B", example="4GB",
    units={**_prefixed("B", 1.0, "kMGT"), "KiB": 2.0**10, "MiB": 2.0**20, "GiB": 2.0**30, "TiB": 2.0**40},
    auto=("TB", "GB", "MB", "kB", "B"),
    limits=(1.0, 1e15), limits_text="1 B..1 PB",
    ambiguous={
        "KB": "'KB' is ambiguous: write kB for 1000 bytes or KiB for 1024",
        **{f"{p}b": f"'{p}b' means {n}bits: sizes are in bytes, write {p}B"
           for p, n in (("", ""), ("k", "kilo"), ("M", "mega"), ("G", "giga"), ("T", "tera"))},
    },
)
FREQUENCY = Kind(
    name="frequency", home="Hz", example="10MHz",
    units=_prefixed("Hz", 1.0, "kMGT"),
    auto=("THz", "GHz", "MHz", "kHz", "Hz"),
    limits=(1.0, 1e12), limits_text="1 Hz..1 THz",
)
DISTANCE = Kind(
    name="distance", home="m", example="100m",
    units={"mm": 1e-3, "cm": 1e-2, "m": 1.0, "km": 1e3},
    auto=("km", "m", "cm", "mm"),
    limits=(1e-3, 1e8), limits_text="1 mm..100,000 km",
)
NOISE_DENSITY = Kind(
    name="noise density", home="W/Hz", example="-174dBm/Hz",
    units={"W/Hz": 1.0, "mW/Hz": 1e-3},
    decibels={"dBm/Hz": 1e-3, "dBW/Hz": 1.0},
    auto=("W/Hz",),
    limits=(1e-30, 1e-6), limits_text="1e-30..1e-6 W/Hz (-270..0 dBm/Hz)",
)
GAIN = Kind(
    name="gain", home="", example="-70dB", units={"": 1.0}, decibels={"dB": 1.0}, auto=("",), allow_bare=True,
    limits=(1e-30, 1e3), limits_text="1e-30..1e3 (-300..30 dB)",
)

KINDS: dict[str, Kind] = {k.name: k for k in (RATE, DURATION, ENERGY, POWER, SIZE, FREQUENCY, DISTANCE,
                                              NOISE_DENSITY, GAIN)}


def _unit_error(kind: Kind, text: str, unit: str, option: str) -> UserInputError:
    accepted = f"accepted: {', '.join(kind.spellings)}"
    if kind.allow_bare:
        accepted += " or a plain number"
    if unit in kind.ambiguous:
        return UserInputError(f"{option} {text!r}: {kind.ambiguous[unit]} ({accepted})")
    if not unit:
        return UserInputError(f"{option} {text!r}: missing unit, e.g. {kind.example} ({accepted})")
    near = [u for u in kind.spellings if u.lower() == unit.lower()]
    if near:
        return UserInputError(f"{option} {text!r}: units are case-sensitive, did you mean {' or '.join(near)}? "
                              f"({accepted})")
    return UserInputError(f"{option} {text!r}: unknown {kind.name} unit {unit!r} ({accepted})")


def parse(text: str, kind: Kind, option: str) -> float:
    """Parse ``text`` (a number and a unit of ``kind``) into the kind's home unit.

    Raises:
        UserInputError: Malformed, not finite, an unknown or ambiguous unit, or no unit.
    """
    m = _NUMBER_UNIT.match(str(text))
    if not m:
        raise UserInputError(f"{option} {text!r}: not a {kind.name} (a number and a unit, e.g. {kind.example})")
    value, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(value):
        raise UserInputError(f"{option} {text!r}: must be finite")
    if unit in kind.decibels:
        if abs(value) > 10_000:  # 10^(value/10) would overflow; far outside every range anyway
            raise UserInputError(f"{option} {text!r}: outside {kind.limits_text}")
        out = 10.0 ** (value / 10.0) * kind.decibels[unit]
    elif unit in kind.units and (unit or kind.allow_bare):
        out = value * kind.units[unit]
    else:
        raise _unit_error(kind, text, unit, option)
    if not math.isfinite(out):  # a finite number times its unit overflowed: far beyond the range
        raise UserInputError(f"{option} {text!r}: outside {kind.limits_text}")
    return check_range(out, kind, option, text)


def check_range(value: float, kind: Kind, option: str, text: str | None = None) -> float:
    """``value`` (home unit) when zero, negative (the caller's sign rule decides) or inside the
    kind's physical range.

    Raises:
        UserInputError: A positive value outside ``kind.limits``.
    """
    lo, hi = kind.limits
    if value > 0 and not lo * (1 - 1e-12) <= value <= hi * (1 + 1e-12):  # the ends in dB round by an ulp
        shown = text if text is not None else fmt(value, kind)
        raise UserInputError(f"{option} {shown!r}: outside {kind.limits_text}")
    return value


def fmt(value: float, kind: Kind, unit: str | None = None, digits: int | None = 4) -> str:
    """Write a home-unit value of ``kind`` as text that :func:`parse` reads back.

    Args:
        value: The value in the kind's home unit.
        kind: What it is.
        unit: The unit to write it in; None = the largest of ``kind.auto`` not above the value.
        digits: Significant digits (decibels: two decimals); None = as many as the float needs to parse
            back exactly.

    Raises:
        ValueError: ``unit`` is not one of the kind's spellings.
    """
    if unit is None:
        unit = next((u for u in kind.auto if abs(value) >= kind.units[u]), kind.auto[-1]) if value else kind.home
        unit = unit if unit in kind.units else kind.auto[-1]
    if unit in kind.decibels:
        number = 10.0 * math.log10(value / kind.decibels[unit])
    elif unit in kind.units:
        number = value / kind.units[unit]
    else:
        raise ValueError(f"{unit!r} is not a {kind.name} unit")
    if digits is None:
        text = repr(number)
    elif unit in kind.decibels:  # hundredths of a dB: within 0.12% of the value
        text = f"{number:.2f}".rstrip("0").rstrip(".")
    else:
        text = f"{number:.{digits}g}"
    return f"{text} {unit}" if unit else text


def _checked(value: float, text: str, option: str, rule: str) -> float:
    if not (value > 0 if rule == "positive" else value >= 0):
        raise UserInputError(f"{option} {text!r}: must {'be positive' if rule == 'positive' else 'not be negative'}")
    return value


def parse_rate_bps(text: str, option: str = "--rate") -> float:
    """Parse a link rate ('20Mbps', '1.5 Gbit/s', '2MB/s') into bit/s (> 0)."""
    return _checked(parse(text, RATE, option), text, option, "positive")


def parse_duration_ms(text: str, option: str = "--rtt") -> float:
    """Parse a duration ('10ms', '0.5s', '200us') into milliseconds (>= 0)."""
    return _checked(parse(text, DURATION, option), text, option, "not negative")


def parse_duration_s(text: str, option: str) -> float:
    """Parse a duration ('60s', '500ms') into seconds (>= 0)."""
    return parse_duration_ms(text, option) / 1e3


def parse_energy_j(text: str, option: str = "--max-energy") -> float:
    """Parse an energy ('5J', '300mJ', '1MJ', '0.01Wh') into joules (>= 0)."""
    return _checked(parse(text, ENERGY, option), text, option, "not negative")


def parse_power_w(text: str, option: str = "--tx-power") -> float:
    """Parse a power ('0.2W', '200mW', '23dBm') into watts (>= 0)."""
    return _checked(parse(text, POWER, option), text, option, "not negative")


def parse_bytes(text: str, option: str = "--max-memory") -> int:
    """Parse a size ('8GB', '512MiB', '1000B') into whole bytes (>= 0)."""
    return int(round(_checked(parse(text, SIZE, option), text, option, "not negative")))


def parse_frequency_hz(text: str, option: str = "--bandwidth") -> float:
    """Parse a frequency or bandwidth ('10MHz', '2.4GHz') into Hz (> 0)."""
    return _checked(parse(text, FREQUENCY, option), text, option, "positive")


def parse_distance_m(text: str, option: str = "--distance") -> float:
    """Parse a distance ('100m', '1.5km') into metres (> 0)."""
    return _checked(parse(text, DISTANCE, option), text, option, "positive")


def parse_noise_w_per_hz(text: str, option: str = "--noise-density") -> float:
    """Parse a noise power spectral density ('-174dBm/Hz', '4e-21W/Hz') into W/Hz (> 0)."""
    return _checked(parse(text, NOISE_DENSITY, option), text, option, "positive")


def parse_gain(text: str, option: str = "--channel-gain") -> float:
    """Parse a power gain: a plain ratio ('1e-7') or decibels ('-70dB'); > 0."""
    return _checked(parse(text, GAIN, option), text, option, "positive")


SCALE_LIMITS = (1e-3, 1e3)


def parse_scale(text: str, option: str = "--freq-range") -> float:
    """Parse a plain positive, finite number (a frequency scale), within :data:`SCALE_LIMITS`."""
    try:
        v = float(text)
    except ValueError:
        raise UserInputError(f"{option} {text!r}: not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise UserInputError(f"{option} {text!r}: must be a positive finite number")
    return check_factor(v, option, text)


def check_factor(value: float, option: str, text: str | None = None, limits: tuple[float, float] = SCALE_LIMITS) -> float:
    """A plain positive factor (a frequency scale, a speed-up) within ``limits``.

    Raises:
        UserInputError: Not finite, not positive, or outside ``limits``.
    """
    shown = text if text is not None else f"{value:g}"
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(f"{option} {shown}: must be a positive finite number")
    if not limits[0] <= value <= limits[1]:
        raise UserInputError(f"{option} {shown}: outside {limits[0]:g}..{limits[1]:g}")
    return value


def parse_range(text: str, option: str, parse_one: Callable[[str, str], float],
                default_steps: int) -> tuple[float, float, int]:
    """Parse 'LO:HI[:STEPS]' with each end parsed by ``parse_one(text, option)``.

    Returns:
        (lo, hi, steps) with lo <= hi and steps >= 1 (1 only when lo == hi).
    """
    parts = str(text).split(":")
    if len(parts) not in (2, 3):
        raise UserInputError(f"{option} {text!r}: expected LO:HI or LO:HI:STEPS")
    lo, hi = parse_one(parts[0], option), parse_one(parts[1], option)
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


def fmt_rate(bps: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A rate in bit/s for people: '20 Mbps', '1.5 Gbps'."""
    return fmt(bps, RATE, unit, digits)


def fmt_duration(ms: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A duration in ms for people: '10 ms', '1.5 s'."""
    return fmt(ms, DURATION, unit, digits)


def fmt_energy(j: float, unit: str | None = None, digits: int | None = 4) -> str:
    """An energy in J for people: '2 J', '300 mJ'."""
    return fmt(j, ENERGY, unit, digits)


def fmt_power(w: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A power in W for people: '200 mW'."""
    return fmt(w, POWER, unit, digits)


def fmt_size(n: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A size in bytes for people: '663.9 MB'."""
    return fmt(n, SIZE, unit, digits)


def fmt_frequency(hz: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A frequency in Hz for people: '10 MHz'."""
    return fmt(hz, FREQUENCY, unit, digits)


def fmt_distance(m: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A distance in metres for people: '100 m'."""
    return fmt(m, DISTANCE, unit, digits)


def fmt_noise_density(w_per_hz: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A noise density in W/Hz for people (``unit='dBm/Hz'`` for the usual form)."""
    return fmt(w_per_hz, NOISE_DENSITY, unit, digits)


def fmt_gain(ratio: float, unit: str | None = None, digits: int | None = 4) -> str:
    """A power gain for people: a plain ratio, or ``unit='dB'``."""
    return fmt(ratio, GAIN, unit, digits)
