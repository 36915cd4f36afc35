"""From the command line's strings to a :class:`~coinfer.planner.plan.PlanRequest` (validation only)."""

from __future__ import annotations

import math

import numpy as np

from coinfer.errors import UserInputError
from coinfer.planner.cost import Budgets
from coinfer.planner.link import Link, wireless_link
from coinfer.planner.plan import ChainSpec, PlanRequest, member_name
from coinfer.units import (
    check_factor,
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
from coinfer.vocab import check_wire_dtype

# Physical ranges of the plain-number options (the quantities' ranges are in coinfer.units).
SERVER_SPEEDUP_LIMITS = (1e-3, 1e6)
PATH_LOSS_EXP_LIMITS = (0.5, 10.0)  # free space is 2, dense urban 3-6
ENERGY_WEIGHT_MAX_MS_PER_J = 1e9


def _positive(value: float | None, option: str, limits: tuple[float, float]) -> float | None:
    return None if value is None else check_factor(value, option, limits=limits)


def _link_arg(text: str) -> tuple[str, tuple[float, float]]:
    """'a-b:100Mbps[:5ms]' -> ('a-b', (rate_bps, rtt_ms))."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or "-" not in parts[0]:
        raise UserInputError(f"--link {text!r}: expected A-B:RATE or A-B:RATE:RTT (e.g. phone-laptop:100Mbps:5ms)")
    rtt = parse_duration_ms(parts[2], "--link") if len(parts) == 3 else 0.0
    return parts[0], (parse_rate_bps(parts[1], "--link"), rtt)


def _member_memory(text: str) -> tuple[str, float]:
    name, sep, size = text.rpartition(":")
    if not sep or not name:
        raise UserInputError(f"--member-memory {text!r}: expected NAME:SIZE (e.g. phone:4GB)")
    return name, float(parse_bytes(size, "--member-memory"))


def request_from_cli(
    *,
    devices: list[str],
    server: str | None = None,
    server_speedup: float | None = None,
    prune: str | None = None,
    precision: str | None = None,
    rate: str | None = None,
    down_rate: str | None = None,
    rtt: str = "0ms",
    wire_dtype: str = "fp32",
    bandwidth: str | None = None,
    tx_power: str | None = None,
    tx_power_range: str | None = None,
    channel_gain: str | None = None,
    distance: str | None = None,
    path_loss_exp: float = 3.0,
    ref_gain: str = "-30dB",
    noise_density: str = "-174dBm/Hz",
    prompt_tokens: int | None = None,
    decode_steps: int | None = None,
    objective: str = "latency",
    energy_weight: float = 1000.0,
    max_latency: str | None = None,
    max_energy: str | None = None,
    max_memory: str | None = None,
    max_distortion: float | None = None,
    max_ppl_ratio: float | None = None,
    freq_range: str | None = None,
    sweep_rate: str | None = None,
    links: list[str] | None = None,
    chain_objective: str = "latency",
    member_memory: list[str] | None = None,
) -> PlanRequest:
    """Parse and check every option of `coinfer plan`; nothing is read from disk here.

    Raises:
        UserInputError: The first bad option, in one line.
    """
    _positive(server_speedup, "--server-speedup", SERVER_SPEEDUP_LIMITS)
    if math.isfinite(energy_weight) and energy_weight > ENERGY_WEIGHT_MAX_MS_PER_J:  # the rest: Objective's check
        raise UserInputError(f"--energy-weight {energy_weight:g}: outside 0..{ENERGY_WEIGHT_MAX_MS_PER_J:g} ms per J")
    if prompt_tokens is not None and prompt_tokens < 1:
        raise UserInputError(f"--prompt-tokens {prompt_tokens}: must be at least 1")
    if decode_steps is not None and decode_steps < 0:
        raise UserInputError(f"--decode-steps {decode_steps}: must not be negative")
    if max_distortion is not None and (not math.isfinite(max_distortion) or max_distortion < 0):
        raise UserInputError(f"--max-distortion {max_distortion!r}: must be a finite number, not negative")
    if max_ppl_ratio is not None and not (math.isfinite(max_ppl_ratio) and max_ppl_ratio >= 1):
        raise UserInputError(f"--max-ppl-ratio {max_ppl_ratio!r}: must be a number >= 1 (1 = the dense model)")
    budgets = Budgets(
        latency_ms=parse_duration_ms(max_latency, "--max-latency") if max_latency is not None else None,
        energy_j=parse_energy_j(max_energy, "--max-energy") if max_energy is not None else None,
        memory_bytes=float(parse_bytes(max_memory, "--max-memory")) if max_memory is not None else None,
        distortion=max_distortion,
        ppl_ratio=max_ppl_ratio,
    )
    rtt_ms = parse_duration_ms(rtt, "--rtt")
    down = parse_rate_bps(down_rate, "--down-rate") if down_rate is not None else None
    if tx_power is not None and tx_power_range is not None:
        raise UserInputError("give --tx-power or --tx-power-range, not both")
    powers: tuple[float, ...] = ()
    if tx_power is not None:
        powers = (parse_power_w(tx_power, "--tx-power"),)
    elif tx_power_range is not None:
        lo, hi, n = parse_range(tx_power_range, "--tx-power-range", parse_power_w, 8)
        powers = tuple(float(p) for p in (np.linspace(lo, hi, n) if n > 1 else [lo]))
    wireless_opts = [o for o, v in (("--channel-gain", channel_gain), ("--distance", distance)) if v is not None]
    link: Link | None = None
    if bandwidth is not None:
        if rate is not None:
            raise UserInputError("give --rate (a fixed link) or --bandwidth (a wireless uplink), not both")
        link = wireless_link(
            bandwidth_hz=parse_frequency_hz(bandwidth), noise_w_per_hz=parse_noise_w_per_hz(noise_density),
            tx_powers_w=powers, channel_gain=parse_gain(channel_gain) if channel_gain is not None else None,
            distance_m=parse_distance_m(distance) if distance is not None else None,
            path_loss_exponent=_positive(path_loss_exp, "--path-loss-exp", PATH_LOSS_EXP_LIMITS),
            reference_gain=parse_gain(ref_gain, "--ref-gain"),
            downlink_rate_bps=down, rtt_ms=rtt_ms, wire_dtype=wire_dtype,
        )
    else:
        if wireless_opts:
            raise UserInputError(f"{wireless_opts[0]} describes a wireless uplink: give --bandwidth too")
        if len(powers) > 1:
            raise UserInputError("--tx-power-range needs a wireless uplink (--bandwidth ...): on a fixed-rate link "
                                 "the power only costs energy; give --tx-power")
        if rate is not None:
            link = Link(rate_bps=parse_rate_bps(rate), downlink_rate_bps=down, rtt_ms=rtt_ms, wire_dtype=wire_dtype,
                        tx_powers_w=powers)
        else:
            check_wire_dtype(wire_dtype)
    freq = (1.0, 1.0, 1)
    if freq_range is not None:
        freq = parse_range(freq_range, "--freq-range", parse_scale, 6)
    sweep = None
    if sweep_rate is not None:
        if link is None:
            raise UserInputError("--sweep-rate needs --rate too: the link rate the plan itself is made for "
                                 "(the sweep then varies it)")
        if link.wireless:
            raise UserInputError("--sweep-rate varies a fixed link's rate: give --rate instead of --bandwidth (a "
                                 "wireless uplink's rate follows from its power and channel)")
        sweep = parse_range(sweep_rate, "--sweep-rate", parse_rate_bps, 200)
    chain = None
    members = [member_name(d) for d in devices]
    is_chain = len(members) > 1 or bool(links)
    if objective == "throughput":
        if not is_chain:
            raise UserInputError("--objective throughput is for chains (several --device-profile and --link)")
        objective, chain_objective = "latency", "throughput"
    if is_chain:
        chain = ChainSpec(links=dict(_link_arg(x) for x in (links or [])), objective=chain_objective,
                          memory_caps=dict(_member_memory(x) for x in (member_memory or [])))
        if chain_objective not in ("latency", "throughput"):
            raise UserInputError(f"--chain-objective {chain_objective!r}: expected latency or throughput")
    elif member_memory:
        raise UserInputError("--member-memory is for chains; a single device takes --max-memory")
    return PlanRequest(
        devices=members, link=link, server=server, server_speedup=server_speedup, prune=prune, precision=precision,
        prompt_tokens=prompt_tokens, decode_steps=decode_steps, objective=objective,
        energy_weight_ms_per_j=energy_weight, budgets=budgets, freq_range=freq, sweep=sweep, chain=chain,
        wire_dtype=wire_dtype,
    )
