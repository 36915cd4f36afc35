"""Link models: a fixed-rate link, or a wireless uplink whose rate follows Shannon's formula.

For the wireless uplink, ``r = B log2(1 + P g / (N0 B))`` (SCIENCE.md): bandwidth ``B`` [Hz],
transmit power ``P`` [W], channel gain ``g`` and noise density ``N0`` [W/Hz]. The gain is given
directly or from a distance with a log-distance path loss ``g = g_ref * d^-alpha`` (``g_ref`` is
the gain at 1 m). Transmit power is a decision variable over a grid within the user's bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coinfer.errors import UserInputError
from coinfer.reports.plan import LinkModel
from coinfer.units import GAIN, RATE, fmt_gain, fmt_power, fmt_rate
from coinfer.vocab import check_wire_dtype


def shannon_rate_bps(bandwidth_hz: float, tx_power_w, channel_gain: float, noise_w_per_hz: float):
    """Shannon capacity of an AWGN channel, in bit/s (works on floats and numpy arrays)."""
    snr = np.asarray(tx_power_w, dtype=float) * channel_gain / (noise_w_per_hz * bandwidth_hz)
    out = bandwidth_hz * np.log1p(snr) / math.log(2.0)  # log1p: a tiny SNR keeps its tiny rate, not 0
    return float(out) if np.ndim(out) == 0 else out


def path_loss_gain(distance_m: float, exponent: float, reference_gain: float) -> float:
    """Log-distance path loss: the gain at ``distance_m`` given the gain at 1 m."""
    return reference_gain * distance_m ** (-exponent)


@dataclass(frozen=True)
class Link:
    """A device-server link as the planner searches it.

    Attributes:
        rate_bps: Fixed uplink rate; None for a wireless uplink (rate from the power).
        downlink_rate_bps: Downlink rate; for wireless, None means the uplink rate at the top power.
        rtt_ms: Round-trip time, paid once per phase that waits on the link.
        wire_dtype: Element type of the activation on the wire.
        tx_powers_w: The transmit powers to search (one value when fixed; empty when unknown,
            in which case transmit energy is not counted).
        bandwidth_hz, channel_gain, noise_w_per_hz: Wireless parameters (all set, or none).
        distance_m, path_loss_exponent, reference_gain: Where the gain came from, if derived.
    """

    rate_bps: float | None = None
    downlink_rate_bps: float | None = None
    rtt_ms: float = 0.0
    wire_dtype: str = "fp32"
    tx_powers_w: tuple[float, ...] = ()
    bandwidth_hz: float | None = None
    channel_gain: float | None = None
    noise_w_per_hz: float | None = None
    distance_m: float | None = None
    path_loss_exponent: float | None = None
    reference_gain: float | None = None

    def __post_init__(self) -> None:
        check_wire_dtype(self.wire_dtype)
        if not (math.isfinite(self.rtt_ms) and self.rtt_ms >= 0):
            raise UserInputError(f"rtt {self.rtt_ms!r} ms: must be finite and not negative")
        for name in ("rate_bps", "downlink_rate_bps"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UserInputError(f"{name} {v!r}: a rate must be positive and finite")
        if any(not (math.isfinite(p) and p >= 0) for p in self.tx_powers_w):
            raise UserInputError("transmit powers must be finite and not negative")
        if self.wireless:
            if self.rate_bps is not None:
                raise UserInputError("give either --rate or a wireless uplink (--bandwidth ...), not both")
            if not self.tx_powers_w:
                raise UserInputError("a wireless uplink needs --tx-power or --tx-power-range")
            if max(self.tx_powers_w) <= 0:
                raise UserInputError("a wireless uplink needs a positive transmit power")
            self._check_wireless_rates()
        elif self.rate_bps is None:
            raise UserInputError("give a link: --rate RATE, or --bandwidth/--tx-power/--channel-gain/--noise-density")

    def _check_wireless_rates(self) -> None:
        # A rate below the slowest link coinfer plans for gives latencies beyond any float.
        lowest = min(self.tx_powers_w)
        rate = float(self.uplink_rates(np.array([lowest]))[0])
        if not rate >= RATE.limits[0]:
            raise UserInputError(
                f"the wireless uplink's Shannon rate at {fmt_power(lowest)} is {rate:.3g} bit/s, below "
                f"{fmt_rate(RATE.limits[0])}: raise the power or the gain (channel gain {fmt_gain(self.channel_gain)})")

    @property
    def wireless(self) -> bool:
        """True when the uplink rate follows from transmit power (Shannon)."""
        return self.bandwidth_hz is not None

    def powers(self) -> np.ndarray:
        """The transmit-power grid; [0] when transmit power is unknown (fixed link, none given)."""
        return np.array(self.tx_powers_w if self.tx_powers_w else (0.0,), dtype=float)

    def uplink_rates(self, powers: np.ndarray | None = None) -> np.ndarray:
        """Uplink rate for each transmit power of the grid (constant for a fixed link)."""
        p = self.powers() if powers is None else np.asarray(powers, dtype=float)
        if not self.wireless:
            return np.full(p.shape, float(self.rate_bps))
        return np.asarray(shannon_rate_bps(self.bandwidth_hz, p, self.channel_gain, self.noise_w_per_hz))

    def downlink_rate(self) -> float:
        """The downlink rate in bit/s."""
        if self.downlink_rate_bps is not None:
            return float(self.downlink_rate_bps)
        if not self.wireless:
            return float(self.rate_bps)
        return float(self.uplink_rates(np.array([max(self.tx_powers_w)]))[0])

    def describe(self, tx_power_w: float | None) -> LinkModel:
        """The link as the plan records it, with the chosen transmit power."""
        up = float(self.uplink_rates(np.array([tx_power_w or 0.0]))[0]) if self.wireless else float(self.rate_bps)
        return LinkModel(
            kind="wireless" if self.wireless else "fixed",
            uplink_rate_bps=up,
            downlink_rate_bps=self.downlink_rate(),
            rtt_ms=self.rtt_ms,
            wire_dtype=self.wire_dtype,
            tx_power_w=tx_power_w if self.tx_powers_w else None,
            tx_power_min_w=min(self.tx_powers_w) if self.tx_powers_w else None,
            tx_power_max_w=max(self.tx_powers_w) if self.tx_powers_w else None,
            tx_power_steps=max(1, len(self.tx_powers_w)),
            bandwidth_hz=self.bandwidth_hz,
            channel_gain=self.channel_gain,
            noise_w_per_hz=self.noise_w_per_hz,
            distance_m=self.distance_m,
            path_loss_exponent=self.path_loss_exponent,
            reference_gain=self.reference_gain,
        )


def wireless_link(
    bandwidth_hz: float,
    noise_w_per_hz: float,
    tx_powers_w: tuple[float, ...],
    channel_gain: float | None = None,
    distance_m: float | None = None,
    path_loss_exponent: float = 3.0,
    reference_gain: float = 1e-3,
    **kw,
) -> Link:
    """Build a wireless-uplink :class:`Link` from a gain or a distance.

    Raises:
        UserInputError: Neither or both of gain and distance given.
    """
    if (channel_gain is None) == (distance_m is None):
        raise UserInputError("a wireless uplink needs exactly one of --channel-gain and --distance")
    if channel_gain is None:
        channel_gain = path_loss_gain(distance_m, path_loss_exponent, reference_gain)
        if not GAIN.limits[0] <= channel_gain <= GAIN.limits[1]:
            raise UserInputError(f"--distance {distance_m:g} m with path-loss exponent {path_loss_exponent:g} gives a "
                                 f"channel gain of {channel_gain:.3g}, outside {GAIN.limits_text}")
        return Link(bandwidth_hz=bandwidth_hz, channel_gain=channel_gain, noise_w_per_hz=noise_w_per_hz,
                    tx_powers_w=tx_powers_w, distance_m=distance_m, path_loss_exponent=path_loss_exponent,
                    reference_gain=reference_gain, **kw)
    return Link(bandwidth_hz=bandwidth_hz, channel_gain=channel_gain, noise_w_per_hz=noise_w_per_hz,
                tx_powers_w=tx_powers_w, **kw)
