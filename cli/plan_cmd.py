"""`coinfer plan`: the best cut, pruning ratio, frequency and transmit power for a link."""

from __future__ import annotations

import sys

import typer
from rich import box
from rich.table import Table

from coinfer.cli.app import app, console
from coinfer.cli.policy_view import render_policy_plan
from coinfer.errors import UserInputError
from coinfer.planner.options import request_from_cli
from coinfer.planner.plan import make_plan
from coinfer.planner.robust import robust_plan, robust_spec_from_cli
from coinfer.planner.units import fmt_rate
from coinfer.reports.io import check_writable, to_json, write_json
from coinfer.reports.plan import Candidate, Plan


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}" if v < 1e4 else f"{v:,.0f}"


def _power(c: Candidate) -> str:
    return "-" if c.tx_power_w is None else f"{c.tx_power_w:.3g}"


def _render_best(plan: Plan) -> None:
    b = plan.best
    console.print(
        f"[bold]best[/]: cut {b.cut} ({b.cut_name}), ratio {b.ratio:g}, freq scale {b.freq_scale:g}, "
        f"tx power {_power(b)} W, uplink {fmt_rate(b.uplink_rate_bps or plan.link.uplink_rate_bps)}"
    )
    t = Table(title="predicted latency (ms)")
    for col in ("phase", "device", "uplink", "server", "downlink", "total"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for name, ph in (("prefill", b.prefill), ("per token", b.per_token)):
        if ph is not None:
            t.add_row(name, _ms(ph.device_ms), _ms(ph.uplink_ms), _ms(ph.server_ms), _ms(ph.downlink_ms),
                      _ms(ph.total_ms))
    console.print(t)
    console.print(
        f"total {b.total_latency_ms:,.3f} ms for {plan.prompt_tokens} prompt + {plan.new_tokens} new tokens; "
        f"device energy {b.energy.total_j:.4g} J (compute {b.energy.compute_j:.4g}, transmit "
        f"{b.energy.transmit_j:.4g}); device memory {b.device_memory_bytes / 1e6:,.2f} MB; "
        f"distortion {b.distortion:.4g}"
    )
    for label, base, gain in (("all on device", plan.all_device, plan.gain_over_all_device),
                              ("all on server", plan.all_server, plan.gain_over_all_server)):
        if base is not None and gain is not None:
            broken = "" if base.feasible else f" (breaks: {'; '.join(base.violations)})"
            console.print(f"vs {label} (unpruned): {base.total_latency_ms:,.4g} ms, {base.energy.total_j:.4g} J; "
                          f"the plan's {plan.objective} is {gain:.3g}x better{broken}", highlight=False)


def _render_cuts(plan: Plan) -> None:
    # Only the columns that vary, with short headers, so the table fits in 80 columns.
    show_ratio = len(plan.ratios) > 1
    show_freq = len(plan.freq_scales) > 1
    show_power = plan.link.tx_power_steps > 1
    show_energy = plan.objective != "latency" or "energy_j" in plan.budgets or plan.link.tx_power_w is not None
    t = Table(title=f"every cut, best configuration at each ({plan.objective}); * = chosen", box=box.SIMPLE_HEAD,
              pad_edge=False, collapse_padding=True, show_edge=False)
    cols = ["cut", "device to"] + (["ratio"] if show_ratio else []) + (["freq"] if show_freq else []) + (
        ["tx W"] if show_power else []) + ["prefill", "token", "total ms"] + (
        ["J"] if show_energy else []) + ["MB"] + (["D_y"] if show_ratio else []) + ["ok"]
    for col in cols:
        t.add_column(col, justify="left" if col == "device to" else "right", no_wrap=True)
    broken: dict[str, list[int]] = {}
    for c in plan.candidates:
        chosen = plan.best is not None and c.cut == plan.best.cut
        row = [f"{'*' if chosen else ''}{c.cut}", c.cut_name]
        row += [f"{c.ratio:g}"] if show_ratio else []
        row += [f"{c.freq_scale:.2g}"] if show_freq else []
        row += [_power(c)] if show_power else []
        row += [_ms(c.prefill.total_ms), _ms(c.per_token.total_ms if c.per_token else None), _ms(c.total_latency_ms)]
        row += [f"{c.energy.total_j:.3g}"] if show_energy else []
        row += [f"{c.device_memory_bytes / 1e6:,.1f}"]
        row += [f"{c.distortion:.3g}"] if show_ratio else []
        row += ["y" if c.feasible else "n"]
        t.add_row(*row, style="bold green" if chosen else None)
        if not c.feasible:
            kinds = ", ".join(sorted({v.split()[0] for v in c.violations}))
            broken.setdefault(kinds, []).append(c.cut)
    console.print(t)
    console.print("prefill and token (one decode step) in ms; J = device energy; MB = device memory", highlight=False)
    for kinds, cuts in broken.items():
        console.print(f"cut {', '.join(map(str, cuts))}: no configuration meets every budget; shown: the best "
                      f"ignoring budgets, which breaks {kinds}", highlight=False)


def _render_sweep(plan: Plan) -> None:
    t = Table(title="best configuration by uplink rate")
    for col in ("rate from", "rate to", "cut", "device to", "ratio", "freq"):
        t.add_column(col, justify="right" if col != "device to" else "left")
    for p in plan.rate_sweep:
        t.add_row(fmt_rate(p.rate_from_bps), fmt_rate(p.rate_to_bps), "-" if p.cut is None else str(p.cut),
                  p.cut_name, f"{p.ratio:g}", f"{p.freq_scale:g}")
    console.print(t)


def _render_chain(plan: Plan) -> None:
    ch = plan.chain
    t = Table(title=f"chain partition ({ch.objective})")
    for col in ("member", "stages", "compute ms", "memory MB"):
        t.add_column(col, justify="left" if col in ("member", "stages") else "right")
    for s in ch.segments:
        stages = f"{s.stage_names[0]}..{s.stage_names[-1]}" if s.stage_names else "(none)"
        t.add_row(s.member, stages, _ms(s.compute_ms), f"{s.memory_bytes / 1e6:,.2f}")
    console.print(t)
    h = Table(title="hops")
    for col in ("link", "rate", "payload KB", "transfer ms"):
        h.add_column(col, justify="left" if col == "link" else "right")
    for hop in ch.hops:
        h.add_row(hop.link, fmt_rate(hop.rate_bps), f"{hop.payload_bytes / 1e3:,.1f}", _ms(hop.transfer_ms))
    console.print(h)
    console.print(f"total latency {ch.total_latency_ms:,.3f} ms; bottleneck {ch.bottleneck_ms:,.3f} ms "
                  f"({ch.throughput_rps:,.2f} requests/s pipelined)")


@app.command("plan")
def plan_cmd(
    device: list[str] = typer.Option(..., "--device", "-d", help="device profile (NAME=PATH for chain members); repeat for a chain"),
    server: str | None = typer.Option(None, "--server", "-s", help="server profile"),
    server_speedup: float | None = typer.Option(None, "--server-speedup", help="derive the server: every stage X times faster"),
    prune: str | None = typer.Option(None, "--prune", help="pruning report (coinfer prune)"),
    rate: str | None = typer.Option(None, "--rate", help="fixed uplink rate, e.g. 20Mbps"),
    down_rate: str | None = typer.Option(None, "--down-rate", help="downlink rate (default: the uplink's)"),
    rtt: str = typer.Option("0ms", "--rtt", help="round-trip time, e.g. 10ms"),
    wire_dtype: str = typer.Option("fp32", "--wire-dtype", help="fp32, fp16 or int8"),
    bandwidth: str | None = typer.Option(None, "--bandwidth", help="wireless uplink bandwidth, e.g. 10MHz"),
    tx_power: str | None = typer.Option(None, "--tx-power", help="transmit power, e.g. 0.2W or 23dBm"),
    tx_power_range: str | None = typer.Option(None, "--tx-power-range", help="LO:HI[:STEPS] transmit power to choose from"),
    channel_gain: str | None = typer.Option(None, "--channel-gain", help="channel power gain, e.g. 1e-9 or -90dB"),
    distance: str | None = typer.Option(None, "--distance", help="or: distance, e.g. 100m (log-distance path loss)"),
    path_loss_exp: float = typer.Option(3.0, "--path-loss-exp", help="path-loss exponent"),
    ref_gain: str = typer.Option("-30dB", "--ref-gain", help="channel gain at 1 m"),
    noise_density: str = typer.Option("-174dBm/Hz", "--noise-density", help="noise density, W/Hz or dBm/Hz"),
    prompt_tokens: int | None = typer.Option(None, "--prompt-tokens", help="prompt length (default: profiled)"),
    new_tokens: int = typer.Option(0, "--new-tokens", help="generated tokens (each crosses the link when split)"),
    objective: str = typer.Option("latency", "--objective", help="latency, energy or weighted; chains: latency or throughput"),
    energy_weight: float = typer.Option(1000.0, "--energy-weight", help="weighted: ms worth one joule"),
    max_latency: str | None = typer.Option(None, "--max-latency", help="budget, e.g. 500ms"),
    max_energy: str | None = typer.Option(None, "--max-energy", help="budget on device energy, e.g. 2J"),
    max_memory: str | None = typer.Option(None, "--max-memory", help="budget on device memory, e.g. 4GB"),
    max_distortion: float | None = typer.Option(None, "--max-distortion", help="budget on output relative MSE"),
    freq_range: str | None = typer.Option(None, "--freq-range", help="device frequency scale LO:HI[:STEPS], e.g. 0.5:1.0:6"),
    sweep_rate: str | None = typer.Option(None, "--sweep-rate", help="LO:HI[:N] log-spaced rates, e.g. 1Mbps:1Gbps"),
    link: list[str] | None = typer.Option(None, "--link", help="chain hop A-B:RATE[:RTT]; repeat"),
    chain_objective: str = typer.Option("latency", "--chain-objective", help="chain: latency or throughput"),
    member_memory: list[str] | None = typer.Option(None, "--member-memory", help="chain: NAME:SIZE memory cap"),
    robustness: str | None = typer.Option(None, "--robustness", help="robustness profile (coinfer channel): choose the wire precision with the cut"),
    max_ppl_ratio: float | None = typer.Option(None, "--max-ppl-ratio", help="decoders: quality budget, perplexity over the clean model's, e.g. 1.05"),
    min_cosine: float | None = typer.Option(None, "--min-cosine", help="encoders: quality budget, pooled cosine to the clean model, e.g. 0.99"),
    erasure: str | None = typer.Option(None, "--erasure", help="channel state: element erasure probability in [0, 1]"),
    snr_db: str | None = typer.Option(None, "--snr-db", help="channel state: SNR in dB (AWGN; with --bandwidth also the rate)"),
    states: str | None = typer.Option(None, "--states", help="channel states with probabilities (JSON or CSV)"),
    trace: str | None = typer.Option(None, "--trace", help="trace of time-stamped channel states (JSON or CSV): replayed"),
    switch_delay: str | None = typer.Option(None, "--switch-delay", help="replay: delay of a change of cut (default: one RTT)"),
    replay_out: str | None = typer.Option(None, "--replay-out", help="replay: write every step of every method here (JSON)"),
    rl_timesteps: int = typer.Option(0, "--rl-timesteps", help="replay: also train the paper's PPO baseline this long (needs coinfer[rl])"),
    rl_seed: int = typer.Option(0, "--rl-seed", help="seed of the PPO baseline"),
    output: str | None = typer.Option(None, "--output", "-o", help="write the plan (JSON) here"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON instead of tables"),
) -> None:
    """Find the best way to run the model across device and server over a link."""
    if output is not None:
        check_writable(output)
    robust = robust_spec_from_cli(
        robustness=robustness, max_ppl_ratio=max_ppl_ratio, min_cosine=min_cosine, erasure=erasure, snr_db=snr_db,
        states=states, trace=trace, switch_delay=switch_delay, rl_timesteps=rl_timesteps, rl_seed=rl_seed)
    if replay_out is not None:
        if robust is None or robust.trace is None:
            raise UserInputError("--replay-out needs --robustness and --trace")
        check_writable(replay_out)
    req = request_from_cli(
        devices=device, server=server, server_speedup=server_speedup, prune=prune, rate=rate, down_rate=down_rate,
        rtt=rtt, wire_dtype=wire_dtype, bandwidth=bandwidth, tx_power=tx_power, tx_power_range=tx_power_range,
        channel_gain=channel_gain, distance=distance, path_loss_exp=path_loss_exp, ref_gain=ref_gain,
        noise_density=noise_density, prompt_tokens=prompt_tokens, new_tokens=new_tokens, objective=objective,
        energy_weight=energy_weight, max_latency=max_latency, max_energy=max_energy, max_memory=max_memory,
        max_distortion=max_distortion, freq_range=freq_range, sweep_rate=sweep_rate, links=link,
        chain_objective=chain_objective, member_memory=member_memory,
    )
    req.robust = robust
    result = robust_plan(req) if robust is not None else None
    plan = result.plan if result is not None else make_plan(req)
    if output is not None:
        write_json(plan, output)
    if replay_out is not None:
        write_json(result.replay, replay_out)
    if as_json:
        sys.stdout.write(to_json(plan))
        return
    ident = plan.model
    console.print(f"[bold]{ident.name}[/] ({ident.family}, {ident.num_blocks} blocks, weights: {ident.weights_label}); link "
                  f"{fmt_rate(plan.link.uplink_rate_bps)} up / {fmt_rate(plan.link.downlink_rate_bps)} down, "
                  f"RTT {plan.link.rtt_ms:g} ms, wire {plan.link.wire_dtype}; objective {plan.objective}")
    if plan.chain is not None:
        _render_chain(plan)
    elif plan.policy is not None:
        render_policy_plan(plan)
    else:
        _render_best(plan)
        _render_cuts(plan)
        if plan.rate_sweep:
            _render_sweep(plan)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    for path in (output, replay_out):
        if path is not None:
            console.print(f"wrote {path}")
