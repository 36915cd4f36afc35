"""Channel states as the planner uses them: parsing, the impairment they select, their link rate.

A state carries any of ``rate_bps``, ``snr_db`` and ``erasure_p``. What each one does:

* **quality**: a state with ``erasure_p`` is judged on the robustness profile's erasure points
  (each element of the activation arrives as zero with that probability, the adaptive-splitting
  paper's model); a state with ``snr_db`` and no ``erasure_p`` on its AWGN points (the SNR of the
  received tensor); a state with neither on the clean points (wire precision alone).
* **rate**: ``rate_bps`` when given; else, on a wireless uplink (``--bandwidth``) with an SNR,
  Shannon's ``B log2(1 + SNR)``; else the link's own uplink rate. The downlink is the link's
  ``--down-rate`` when given, else the state's uplink rate.

**SNR -> erasure (a model, used only by** ``coinfer trace --erasure-model``): a bit of BPSK at
SNR ``g`` (linear) is wrong with probability ``Q(sqrt(2 g)) = erfc(sqrt(g)) / 2``; Gray-coded QPSK
at symbol SNR ``g`` puts ``g / 2`` on each bit, ``erfc(sqrt(g / 2)) / 2``. An element of ``b`` bits
is taken to be erased (detected and zeroed) when any of its bits is wrong:
``p = 1 - (1 - BER)^b``. Uncoded, independent bit errors: real links code and interleave, so this
is a pessimistic stand-in, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coinfer.errors import UserInputError
from coinfer.planner.link import Link

IMPAIRMENTS = ("none", "erasure", "awgn")
ERASURE_MODELS = ("bpsk", "qpsk")


@dataclass(frozen=True)
class ChannelState:
    """One channel state; ``probability`` when it belongs to a distribution, ``t_s`` to a trace."""

    rate_bps: float | None = None
    snr_db: float | None = None
    erasure_p: float | None = None
    probability: float | None = None
    t_s: float | None = None

    def __post_init__(self) -> None:
        if self.erasure_p is not None:
            check_erasure(self.erasure_p)
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise UserInputError(f"--snr-db {self.snr_db!r}: not a finite number")
        if self.rate_bps is not None and not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
            raise UserInputError(f"rate {self.rate_bps!r} bps: must be positive and finite")

    @property
    def impairment(self) -> str:
        """'erasure', 'awgn' or 'none': which of the robustness profile's conditions judges it."""
        if self.erasure_p is not None:
            return "erasure"
        return "awgn" if self.snr_db is not None else "none"

    @property
    def level(self) -> float | None:
        """The impairment's parameter: erasure probability or SNR [dB]; None for 'none'."""
        return {"erasure": self.erasure_p, "awgn": self.snr_db, "none": None}[self.impairment]


def check_erasure(p: float, option: str = "--erasure") -> float:
    """``p`` when it is a probability.

    Raises:
        UserInputError: Not finite or outside [0, 1].
    """
    if not (isinstance(p, int | float) and math.isfinite(p) and 0.0 <= p <= 1.0):
        raise UserInputError(f"{option} {p!r}: an erasure probability must be in [0, 1]")
    return float(p)


def parse_erasure(text: str, option: str = "--erasure") -> float:
    """Parse an erasure probability such as '0.05'.

    Raises:
        UserInputError: Not a number, or outside [0, 1].
    """
    try:
        p = float(str(text).strip())
    except ValueError:
        raise UserInputError(f"{option} {text!r}: not a number (an erasure probability in [0, 1])") from None
    return check_erasure(p, option)


def parse_snr_db(text: str, option: str = "--snr-db") -> float:
    """Parse an SNR in dB: '10', '-3.5' or '10dB'.

    Raises:
        UserInputError: Not a finite number.
    """
    s = str(text).strip()
    if s.lower().endswith("db"):
        s = s[:-2].strip()
    try:
        v = float(s)
    except ValueError:
        raise UserInputError(f"{option} {text!r}: not a number (an SNR in dB, e.g. 10 or 10dB)") from None
    if not math.isfinite(v):
        raise UserInputError(f"{option} {text!r}: not a finite number")
    return v


def common_impairment(states: list[ChannelState]) -> str:
    """The impairment all ``states`` share.

    Raises:
        UserInputError: States that mix impairments (e.g. erasure in some rows, SNR only in others).
    """
    kinds = {s.impairment for s in states}
    if len(kinds) != 1:
        raise UserInputError(f"the channel states mix impairments ({', '.join(sorted(kinds))}): give erasure_p in "
                             "every state or in none")
    return kinds.pop()


def bit_error_rate(snr_db, modulation: str):
    """Uncoded bit error rate in AWGN at symbol SNR ``snr_db`` (floats or numpy arrays)."""
    if modulation not in ERASURE_MODELS:
        raise UserInputError(f"--erasure-model {modulation!r}: expected one of {', '.join(ERASURE_MODELS)}")
    g = 10.0 ** (np.asarray(snr_db, dtype=float) / 10.0)
    per_bit = g if modulation == "bpsk" else g / 2.0
    out = 0.5 * np.vectorize(math.erfc)(np.sqrt(per_bit))
    return float(out) if np.ndim(out) == 0 else out


def erasure_from_snr(snr_db, modulation: str, element_bits: int):
    """Element erasure probability ``1 - (1 - BER)^bits`` (see the module note: a model)."""
    if element_bits < 1:
        raise UserInputError(f"--element-bits {element_bits}: must be at least 1")
    ber = np.asarray(bit_error_rate(snr_db, modulation), dtype=float)
    out = -np.expm1(element_bits * np.log1p(-ber))
    return float(out) if np.ndim(out) == 0 else out


def shannon_rate_from_snr(bandwidth_hz: float, snr_db):
    """``B log2(1 + SNR)`` in bit/s (floats or numpy arrays)."""
    out = bandwidth_hz * np.log2(1.0 + 10.0 ** (np.asarray(snr_db, dtype=float) / 10.0))
    return float(out) if np.ndim(out) == 0 else out


def state_rates(states: list[ChannelState], link: Link) -> tuple[np.ndarray, np.ndarray]:
    """Uplink and downlink rate [bit/s] of each state (the rules in the module note)."""
    base = float(link.uplink_rates(np.array([link.powers()[-1]]))[0])
    up = []
    for s in states:
        if s.rate_bps is not None:
            up.append(s.rate_bps)
        elif link.wireless and s.snr_db is not None:
            up.append(shannon_rate_from_snr(link.bandwidth_hz, s.snr_db))
        else:
            up.append(base)
    up_arr = np.array(up, dtype=float)
    if np.any(up_arr <= 0):
        raise UserInputError("a channel state's rate comes out as 0 bit/s (SNR too low for any rate)")
    down = np.full_like(up_arr, link.downlink_rate_bps) if link.downlink_rate_bps is not None else up_arr.copy()
    return up_arr, down
