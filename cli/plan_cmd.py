"""`coinfer plan`: the best cut, pruning ratio, frequency and transmit power for a link."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import typer
from rich import box
from rich.table import Table

from coinfer.cli.common import (
    BUDGETS,
    CHAIN,
    CHANNEL,
    LINK,
    MODEL,
    OUTPUT,
    SEARCH,
    Output,
    Renamed,
    WireDtype,
    check_outputs,
    command,
    decode_steps_option,
    json_option,
    output_option,
    prompt_tokens_option,
    quiet_option,
    verbose_option,
)
from coinfer.cli.policy_view import render_policy_plan
from coinfer.errors import UserInputError
from coinfer.planner.options import request_from_cli
from coinfer.planner.plan import MODEL_NOTES, make_plan
from coinfer.planner.robust import robust_plan, robust_spec_from_cli
from coinfer.reports.io import check_document, write_json
from coinfer.reports.plan import Candidate, Plan
from coinfer.units import fmt_rate
from coinfer.vocab import DEFAULT_DECODE_STEPS


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}" if v < 1e4 else f"{v:,.0f}"


def _power(c: Candidate) -> str:
    return "-" if c.tx_power_w is None else f"{c.tx_power_w:.3g}"


def _render_best(plan: Plan, out: Output) -> None:
    b = plan.best
    out.print(
        f"[bold]best[/]: cut {b.cut} ({b.cut_name}), ratio {b.ratio:g}, "
        + ("" if (b.device_precision, b.device_engine) == ("fp32", "torch")
           else f"device {b.device_precision} on {b.device_engine}, ")
        + f"freq scale {b.freq_scale:g}, "
        + ("" if b.tx_power_w is None else f"tx power {_power(b)} W, ")
        + f"uplink {fmt_rate(b.uplink_rate_bps or plan.link.uplink_rate_bps)}"
    )
    t = Table(title="predicted latency (ms)")
    for col in ("phase", "device", "uplink", "server", "downlink", "total"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for name, ph in (("prefill", b.prefill), ("per token", b.per_token)):
        if ph is not None:
            t.add_row(name, _ms(ph.device_ms), _ms(ph.uplink_ms), _ms(ph.server_ms), _ms(ph.downlink_ms),
                      _ms(ph.total_ms))
    out.print(t)
    out.print(
        f"total {b.total_latency_ms:,.3f} ms for {plan.prompt_tokens} prompt tokens{_generated(plan)}; device energy {b.energy.total_j:.4g} J (compute {b.energy.compute_j:.4g}, transmit "
        f"{b.energy.transmit_j:.4g}); device memory {b.device_memory_bytes / 1e6:,.2f} MB; "
        f"distortion {b.distortion:.4g}"
        + ("" if b.ppl_ratio is None or b.ratio == 0 else f"; perplexity {b.ppl_ratio:.3f}x dense's")
    )
    for label, base, gain in (("all on device", plan.all_device, plan.gain_over_all_device),
                              ("all on server", plan.all_server, plan.gain_over_all_server)):
        if base is not None and gain is not None:
            out.print(f"vs {label} (unpruned): {base.total_latency_ms:,.4g} ms, {base.energy.total_j:.4g} J; "
                      f"{_compared(plan, base, gain)}", highlight=False)


def _generated(plan: Plan) -> str:
    if not plan.model.is_decoder:
        return " (an encoder: no decoding)"
    n = plan.new_tokens + 1
    return (f" + {plan.new_tokens} decode steps ({n} generated token{'s' if n > 1 else ''}: the prefill yields "
            "the first)")


def _compared(plan: Plan, base: Candidate, gain: float) -> str:
    """How the plan compares with a baseline, in words that fit when the plan is that baseline."""
    b = plan.best
    what = "weighted cost" if plan.objective == "weighted" else plan.objective
    same = (base.cut, base.ratio, base.freq_scale, base.tx_power_w) == (b.cut, b.ratio, b.freq_scale, b.tx_power_w)
    if same:
        return "the plan is this configuration"
    broken = "" if base.feasible else f" but breaks: {'; '.join(base.violations)}"
    if abs(gain - 1.0) <= 1e-9:
        return f"the same {what} as the plan{broken}"
    if gain > 1:
        return f"the plan's {what} is {_lower(gain)}{broken.replace(' but', ';')}"
    return f"{_lower(1 / gain)} {what} than the plan{broken}"


def _lower(ratio: float) -> str:
    """'8.4x lower' for a large ratio (higher / lower), '0.47% lower' for a small one (never '1x')."""
    return f"{ratio:.3g}x lower" if ratio >= 2 else f"{(1 - 1 / ratio) * 100:.2g}% lower"


def _render_cuts(plan: Plan, out: Output) -> None:
    # Only the columns that vary, with short headers, so the table fits a narrow terminal.
    show_ratio = len(plan.ratios) > 1
    show_freq = len(plan.freq_scales) > 1
    show_power = plan.link.tx_power_steps > 1
    show_energy = plan.objective != "latency" or "energy_j" in plan.budgets or plan.link.tx_power_w is not None
    t = Table(title=f"every cut at its best ({plan.objective}); * = chosen", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True, show_edge=False)
    show_prec = any((c.device_precision, c.device_engine) != ("fp32", "torch") for c in plan.candidates)
    cols = ["cut", "device to"] + (["ratio"] if show_ratio else []) + (["prec"] if show_prec else []) + (["freq"] if show_freq else []) + (
        ["tx W"] if show_power else []) + ["prefill", "token", "total ms"] + (
        ["J"] if show_energy else []) + ["MB"] + (["D_y", "ppl x"] if show_ratio else []) + ["ok"]
    for col in cols:
        t.add_column(col, justify="left" if col == "device to" else "right", no_wrap=True)
    broken: dict[str, list[int]] = {}
    for c in plan.candidates:
        chosen = plan.best is not None and c.cut == plan.best.cut
        row = [f"{'*' if chosen else ''}{c.cut}", c.cut_name]
        row += [f"{c.ratio:g}"] if show_ratio else []
        row += [c.device_precision + ("" if c.device_engine == "torch" else "/ort")] if show_prec else []
        row += [f"{c.freq_scale:.2g}"] if show_freq else []
        row += [_power(c)] if show_power else []
        row += [_ms(c.prefill.total_ms), _ms(c.per_token.total_ms if c.per_token else None), _ms(c.total_latency_ms)]
        row += [f"{c.energy.total_j:.3g}"] if show_energy else []
        row += [f"{c.device_memory_bytes / 1e6:,.1f}"]
        row += [f"{c.distortion:.3g}", "-" if c.ppl_ratio is None else f"{c.ppl_ratio:.3g}"] if show_ratio else []
        row += ["y" if c.feasible else "n"]
        t.add_row(*row, style="bold green" if chosen else None)
        if not c.feasible:
            kinds = ", ".join(sorted({v.split()[0] for v in c.violations}))
            broken.setdefault(kinds, []).append(c.cut)
    out.print(t)
    out.print("prefill and token (one decode step) in ms; J = device energy; MB = device memory", highlight=False)
    for kinds, cuts in broken.items():
        out.print(f"cut {', '.join(map(str, cuts))}: no configuration meets every budget; shown: the best "
                      f"ignoring budgets, which breaks {kinds}", highlight=False)


def _render_sweep(plan: Plan, out: Output) -> None:
    t = Table(title="best configuration by uplink rate")
    for col in ("rate from", "rate to", "cut", "device to", "ratio", "freq"):
        t.add_column(col, justify="right" if col != "device to" else "left")
    for p in plan.rate_sweep:
        t.add_row(fmt_rate(p.rate_from_bps), fmt_rate(p.rate_to_bps), "-" if p.cut is None else str(p.cut),
                  p.cut_name, f"{p.ratio:g}", f"{p.freq_scale:g}")
    out.print(t)


def _render_chain(plan: Plan, out: Output) -> None:
    ch = plan.chain
    t = Table(title=f"chain partition ({ch.objective})")
    for col in ("member", "stages", "compute ms", "memory MB"):
        t.add_column(col, justify="left" if col in ("member", "stages") else "right")
    for s in ch.segments:
        stages = f"{s.stage_names[0]}..{s.stage_names[-1]}" if s.stage_names else "(none)"
        t.add_row(s.member, stages, _ms(s.compute_ms), f"{s.memory_bytes / 1e6:,.2f}")
    out.print(t)
    h = Table(title="hops")
    for col in ("link", "rate", "payload KB", "transfer ms"):
        h.add_column(col, justify="left" if col == "link" else "right")
    for hop in ch.hops:
        h.add_row(hop.link, fmt_rate(hop.rate_bps), f"{hop.payload_bytes / 1e3:,.1f}", _ms(hop.transfer_ms))
    out.print(h)
    out.print(f"total latency {ch.total_latency_ms:,.3f} ms; bottleneck {ch.bottleneck_ms:,.3f} ms "
                  f"({ch.throughput_rps:,.2f} requests/s pipelined)")


class Objective(StrEnum):
    """What the plan minimises."""

    latency = "latency"
    energy = "energy"
    weighted = "weighted"
    throughput = "throughput"


class ChainObjective(StrEnum):
    """What a chain's partition minimises."""

    latency = "latency"
    throughput = "throughput"


@command("plan", renamed={"--device": Renamed("--device-profile"), "--server": Renamed("--server-profile"),
                          "--prune": Renamed("--prune-report"), "--new-tokens": Renamed("--decode-steps")})
def plan_cmd(
    device: list[str] = typer.Option(
        ..., "--device-profile", "-d", metavar="FILE|NAME=FILE", rich_help_panel=MODEL,
        help="the device's profile (coinfer profile); repeat as NAME=FILE for the members of a chain, in order"),
    server: str | None = typer.Option(None, "--server-profile", "-s", metavar="FILE", rich_help_panel=MODEL,
                                      help="the server's profile"),
    server_speedup: float | None = typer.Option(
        None, "--server-speedup", metavar="X", rich_help_panel=MODEL,
        help="no server profile: derive one from the device's, every stage X times faster (labelled derived)"),
    prune: str | None = typer.Option(None, "--prune-report", metavar="FILE", rich_help_panel=MODEL,
                                     help="pruning report (coinfer prune): choose the ratio with the cut"),
    precision: str | None = typer.Option(None, "--precision-report", metavar="FILE", rich_help_panel=MODEL,
                                         help="precision report (coinfer quantize): choose the device's weight "
                                              "precision (and engine) with the cut"),
    prompt_tokens: int | None = prompt_tokens_option(
        None, help="prompt length \\[default: the device profile's]"),
    decode_steps: int | None = decode_steps_option(
        f"decoding steps after the prefill, each crossing the link when split; the prefill yields the first token, "
        f"so m steps give m + 1 generated tokens \\[default: {DEFAULT_DECODE_STEPS} for a decoder, 0 for an encoder]"),
    rate: str | None = typer.Option(None, "--rate", metavar="RATE", rich_help_panel=LINK,
                                    help="fixed uplink rate, e.g. 20Mbps (megabits; MB/s = megabytes per second)"),
    down_rate: str | None = typer.Option(None, "--down-rate", metavar="RATE", rich_help_panel=LINK,
                                         help="downlink rate \\[default: the uplink's]"),
    rtt: str = typer.Option("0ms", "--rtt", metavar="DURATION", rich_help_panel=LINK, help="round-trip time"),
    wire_dtype: WireDtype = typer.Option(WireDtype.fp32, "--wire-dtype", rich_help_panel=LINK,
                                         help="the activation's dtype on the link"),
    bandwidth: str | None = typer.Option(None, "--bandwidth", metavar="FREQUENCY", rich_help_panel=LINK,
                                         help="instead of --rate, a wireless uplink (Shannon rate) of this bandwidth, "
                                              "e.g. 10MHz"),
    tx_power: str | None = typer.Option(None, "--tx-power", metavar="POWER", rich_help_panel=LINK,
                                        help="transmit power, e.g. 0.2W or 23dBm (counts transmit energy)"),
    tx_power_range: str | None = typer.Option(None, "--tx-power-range", metavar="LO:HI[:STEPS]", rich_help_panel=LINK,
                                              help="wireless: transmit powers to choose from, e.g. 10dBm:23dBm:8"),
    channel_gain: str | None = typer.Option(None, "--channel-gain", metavar="GAIN", rich_help_panel=LINK,
                                            help="wireless: channel power gain, e.g. 1e-9 or -90dB"),
    distance: str | None = typer.Option(None, "--distance", metavar="DISTANCE", rich_help_panel=LINK,
                                        help="wireless, instead of --channel-gain: distance, e.g. 100m "
                                             "(log-distance path loss)"),
    path_loss_exp: float = typer.Option(3.0, "--path-loss-exp", rich_help_panel=LINK,
                                        help="wireless with --distance: path-loss exponent"),
    ref_gain: str = typer.Option("-30dB", "--ref-gain", metavar="GAIN", rich_help_panel=LINK,
                                 help="wireless with --distance: channel gain at 1 m"),
    noise_density: str = typer.Option("-174dBm/Hz", "--noise-density", metavar="DENSITY", rich_help_panel=LINK,
                                      help="wireless: noise power spectral density, W/Hz or dBm/Hz"),
    objective: Objective = typer.Option(Objective.latency, "--objective", rich_help_panel=SEARCH,
                                        help="what to minimise; weighted = latency + energy x --energy-weight; "
                                             "throughput: chains only"),
    energy_weight: float = typer.Option(1000.0, "--energy-weight", metavar="MS_PER_J", rich_help_panel=SEARCH,
                                        help="--objective weighted: milliseconds worth one joule"),
    freq_range: str | None = typer.Option(None, "--freq-range", metavar="LO:HI[:STEPS]", rich_help_panel=SEARCH,
                                          help="device frequency scales to choose from (DVFS), e.g. 0.5:1:6 "
                                               "\\[default: 1, the profiled frequency]"),
    sweep_rate: str | None = typer.Option(None, "--sweep-rate", metavar="LO:HI[:N]", rich_help_panel=SEARCH,
                                          help="also the best choice at N log-spaced uplink rates (with --rate), "
                                               "e.g. 1Mbps:1Gbps"),
    max_latency: str | None = typer.Option(None, "--max-latency", metavar="DURATION", rich_help_panel=BUDGETS,
                                           help="end-to-end latency, e.g. 500ms"),
    max_energy: str | None = typer.Option(None, "--max-energy", metavar="ENERGY", rich_help_panel=BUDGETS,
                                          help="device energy per request, e.g. 2J"),
    max_memory: str | None = typer.Option(None, "--max-memory", metavar="SIZE", rich_help_panel=BUDGETS,
                                          help="device memory, e.g. 4GB or 512MiB"),
    max_distortion: float | None = typer.Option(None, "--max-distortion", rich_help_panel=BUDGETS,
                                                help="output relative MSE (D_y of the pruning report)"),
    link: list[str] | None = typer.Option(None, "--link", metavar="A-B:RATE[:RTT]", rich_help_panel=CHAIN,
                                          help="a hop between consecutive chain members; repeat"),
    chain_objective: ChainObjective = typer.Option(ChainObjective.latency, "--chain-objective", rich_help_panel=CHAIN,
                                                   help="a chain's partition: latency, or throughput (bottleneck; "
                                                        "ties broken by latency, then hops)"),
    member_memory: list[str] | None = typer.Option(None, "--member-memory", metavar="NAME:SIZE", rich_help_panel=CHAIN,
                                                   help="a chain member's memory cap; repeat"),
    robustness: str | None = typer.Option(None, "--robustness", metavar="FILE", rich_help_panel=CHANNEL,
                                          help="robustness profile (coinfer channel): choose the wire precision with "
                                               "the cut"),
    max_ppl_ratio: float | None = typer.Option(None, "--max-ppl-ratio", rich_help_panel=BUDGETS,
                                               help="decoders: perplexity over the dense model's, e.g. 1.25: bounds "
                                                    "the pruning ratio (the prune report's evaluation text) and, with "
                                                    "--robustness, the channel's cost, each on its own"),
    min_cosine: float | None = typer.Option(None, "--min-cosine", rich_help_panel=BUDGETS,
                                            help="encoders: pooled cosine to the clean model, e.g. 0.99 "
                                                 "(with --robustness)"),
    erasure: str | None = typer.Option(None, "--erasure", metavar="P", rich_help_panel=CHANNEL,
                                       help="channel state: element erasure probability in [0, 1]"),
    snr_db: str | None = typer.Option(None, "--snr-db", metavar="DB", rich_help_panel=CHANNEL,
                                      help="channel state: SNR in dB (AWGN; with --bandwidth also the rate)"),
    states: str | None = typer.Option(None, "--states", metavar="FILE", rich_help_panel=CHANNEL,
                                      help="channel states with probabilities (JSON or CSV)"),
    trace: str | None = typer.Option(None, "--trace", metavar="FILE", rich_help_panel=CHANNEL,
                                     help="time-stamped channel states (JSON or CSV, e.g. from coinfer trace): "
                                          "replayed"),
    switch_delay: str | None = typer.Option(None, "--switch-delay", metavar="DURATION", rich_help_panel=CHANNEL,
                                            help="replay: delay of a change of cut \\[default: one RTT]"),
    replay_out: str | None = typer.Option(None, "--replay-out", metavar="FILE", rich_help_panel=OUTPUT,
                                          help="replay: write every step of every method here (JSON)"),
    rl_timesteps: int = typer.Option(0, "--rl-timesteps", min=0, rich_help_panel=CHANNEL,
                                     help="replay: also train the paper's PPO baseline this long (needs coinfer[rl])"),
    rl_seed: int = typer.Option(0, "--rl-seed", rich_help_panel=CHANNEL, help="seed of the PPO baseline"),
    output: str | None = output_option("plan"),
    as_json: bool = json_option("plan"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Find the best way to run the model across device and server over a link."""
    out = Output.of(quiet, verbose, as_json)
    robust = robust_spec_from_cli(
        robustness=robustness, max_ppl_ratio=max_ppl_ratio, min_cosine=min_cosine, erasure=erasure, snr_db=snr_db,
        states=states, trace=trace, switch_delay=switch_delay, rl_timesteps=rl_timesteps, rl_seed=rl_seed)
    if replay_out is not None and (robust is None or robust.trace is None):
        raise UserInputError("--replay-out needs --robustness and --trace")
    check_outputs([output, replay_out])
    req = request_from_cli(
        devices=device, server=server, server_speedup=server_speedup, prune=prune, precision=precision, rate=rate, down_rate=down_rate,
        rtt=rtt, wire_dtype=wire_dtype.value, bandwidth=bandwidth, tx_power=tx_power, tx_power_range=tx_power_range,
        channel_gain=channel_gain, distance=distance, path_loss_exp=path_loss_exp, ref_gain=ref_gain,
        noise_density=noise_density, prompt_tokens=prompt_tokens, decode_steps=decode_steps,
        objective=objective.value, energy_weight=energy_weight, max_latency=max_latency, max_energy=max_energy,
        max_memory=max_memory, max_distortion=max_distortion, max_ppl_ratio=max_ppl_ratio, freq_range=freq_range,
        sweep_rate=sweep_rate,
        links=link, chain_objective=chain_objective.value, member_memory=member_memory,
    )
    req.robust = robust
    with out.work("planning"), np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        result = robust_plan(req) if robust is not None else None
        plan = result.plan if result is not None else make_plan(req)
    check_document(plan)  # a figure that overflowed is refused, printed or written alike
    if output is not None:
        write_json(plan, output)
    if replay_out is not None:
        write_json(result.replay, replay_out)
    if as_json:
        out.emit_json(plan)
        return
    render(plan, out)
    out.wrote(output)
    out.wrote(replay_out)


def render(plan: Plan, out: Output) -> None:
    """What ``coinfer plan`` prints for a plan (also ``coinfer show``)."""
    out.print(_header(plan), highlight=False)
    if plan.chain is not None:
        _render_chain(plan, out)
    elif plan.policy is not None:
        render_policy_plan(plan, out)
    else:
        _render_best(plan, out)
        _render_cuts(plan, out)
        if plan.rate_sweep:
            _render_sweep(plan, out)
    out.notes(plan.notes, lambda n: n in MODEL_NOTES)


def _header(plan: Plan) -> str:
    ident = plan.model
    head = f"[bold]{ident.name}[/] ({ident.family}, {ident.num_blocks} blocks, weights: {ident.weights_label}); "
    if plan.chain is not None:  # every hop, not only the last
        hops = ", ".join(f"{h.link} {fmt_rate(h.rate_bps)} RTT {h.rtt_ms:g} ms" for h in plan.chain.hops)
        return head + f"links {hops}; wire {plan.link.wire_dtype}; objective {plan.chain.objective}"
    return head + (f"link {fmt_rate(plan.link.uplink_rate_bps)} up / {fmt_rate(plan.link.downlink_rate_bps)} down, "
                   f"RTT {plan.link.rtt_ms:g} ms, wire {plan.link.wire_dtype}; objective {plan.objective}")
