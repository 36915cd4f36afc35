"""Predictions for a given cut without a plan (what `coinfer run --cut K` compares against)."""

from __future__ import annotations

import os

from coinfer.errors import UserInputError
from coinfer.planner.cost import derive_server_profile, evaluate
from coinfer.planner.link import Link
from coinfer.reports.io import load_document
from coinfer.reports.plan import Candidate
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport

# An unemulated local link (loopback): transfers take no modelled time, only the RTT counts.
UNLIMITED_RATE_BPS = 1e18


def _profile(p: str | os.PathLike[str] | Profile) -> Profile:
    return p if isinstance(p, Profile) else load_document(p, Profile)


def predict_cut(
    device_profile: str | os.PathLike[str] | Profile,
    server_profile: str | os.PathLike[str] | Profile | None,
    cut: int,
    rate_bps: float | None = None,
    rtt_ms: float | None = 0.0,
    wire_dtype: str = "fp32",
    *,
    downlink_rate_bps: float | None = None,
    prompt_tokens: int | None = None,
    new_tokens: int = 0,
    server_speedup: float | None = None,
    prune: str | os.PathLike[str] | PruneReport | None = None,
    ratio: float = 0.0,
    freq_scale: float = 1.0,
    tx_power_w: float | None = None,
) -> Candidate:
    """Predict one cut's latency (prefill and per token), energy and memory from profiles.

    Args:
        device_profile: Path of (or) the device Profile.
        server_profile: Path of (or) the server Profile; None with ``server_speedup``.
        cut: Stages on the device, 0..L+2.
        rate_bps: Uplink rate; None = unlimited (a local run without link emulation).
        rtt_ms: Round-trip time (None = 0).
        wire_dtype: fp32, fp16 or int8.
        downlink_rate_bps: Downlink rate (default: the uplink's).
        prompt_tokens: Prompt length (default: the device profile's seq_len).
        new_tokens: Generated tokens; ``per_token`` is the mean over them (at the prompt length if 0).
        server_speedup: Derive the server profile from the device's, this many times faster.
        prune: Pruning report (path or object) when ``ratio`` > 0.
        ratio: Pruning ratio.
        freq_scale: Device DVFS scale.
        tx_power_w: Transmit power, for transmit energy.

    Returns:
        The :class:`~coinfer.reports.plan.Candidate` (``prefill``, ``per_token``, ``energy``...).

    Raises:
        UserInputError, SchemaError: Bad values or files, one line each.
    """
    dev = _profile(device_profile)
    if server_profile is None:
        if server_speedup is None:
            raise UserInputError("a prediction needs a server profile or a server speed-up")
        srv = derive_server_profile(dev, server_speedup)
    else:
        srv = _profile(server_profile)
    rep = prune if (prune is None or isinstance(prune, PruneReport)) else load_document(prune, PruneReport)
    link = Link(rate_bps=UNLIMITED_RATE_BPS if rate_bps is None else float(rate_bps),
                downlink_rate_bps=downlink_rate_bps, rtt_ms=float(rtt_ms or 0.0), wire_dtype=wire_dtype,
                tx_powers_w=() if tx_power_w is None else (float(tx_power_w),))
    return evaluate(dev, srv, link, cut, ratio=ratio, freq_scale=freq_scale, prompt_tokens=prompt_tokens,
                    new_tokens=new_tokens, wire_dtype=wire_dtype, prune=rep)
