"""`coinfer run`: execute a split for real and hold the plan's predictions against it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer
from rich.table import Table

from coinfer.cli.app import err_console
from coinfer.cli.common import (
    CHANNEL,
    DEFAULT_DECODE_STEPS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT_TOKENS,
    LINK,
    MEASUREMENT,
    MODEL,
    OUTPUT,
    ROLES,
    EngineName,
    Output,
    Precision,
    Renamed,
    WireDtype,
    check_outputs,
    command,
    decode_steps_option,
    json_option,
    model_option,
    physical_cores,
    prompt_tokens_option,
    quiet_option,
    threads_option,
    verbose_option,
)
from coinfer.errors import UserInputError
from coinfer.units import fmt_rate, parse_duration_s

PREDICTION = "Prediction without a plan"
DEFAULT_OUTPUT = "run.json"


def _cuts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--chain-cuts {text!r}: expected stage counts such as 3,7") from None


def _event_text(ev: dict[str, Any]) -> str:
    kind = ev.get("event")
    detail = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "trace"))
    return f"[{kind}] {detail}"


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.1f}%" if pct else f"{x:,.2f}"


class EmulatedLink(StrEnum):
    """Where --emulate-rate shapes: one namespace's loopback, or a veth between two namespaces."""

    loopback = "loopback"
    veth = "veth"


class Role(StrEnum):
    """Which side(s) of the split this process runs."""

    local = "local"
    server = "server"
    device = "device"


@command("run", renamed={"--out": Renamed("--output"), "--new-tokens": Renamed("--decode-steps"),
                         "--timeout-s": Renamed("--timeout", "s")})
def run_cmd(
    plan: str | None = typer.Option(None, "--plan", metavar="FILE", rich_help_panel=MODEL,
                                    help="plan from 'coinfer plan': cut, wire dtype, prompt and predictions"),
    cut: int | None = typer.Option(None, "--cut", min=0, rich_help_panel=MODEL,
                                   help="stages on the device: 0 = all on server .. L+2 = all on device "
                                        "\\[default: the plan's]"),
    chain_cuts: str | None = typer.Option(None, "--chain-cuts", metavar="C1,C2,...", rich_help_panel=MODEL,
                                          help="a chain: the stage counts where each part ends, e.g. 3,7"),
    model: str | None = model_option(
        None, help=f"minilm (real weights), a preset (see 'coinfer models') or a local Hugging Face folder "
                   f"\\[default: the plan's, else {DEFAULT_MODEL}]"),
    seed: int = typer.Option(0, "--seed", rich_help_panel=MODEL, help="seed of preset weights and of the random prompt"),
    prompt_tokens: int | None = prompt_tokens_option(
        None, help=f"prompt length \\[default: the plan's, else {DEFAULT_PROMPT_TOKENS}]"),
    decode_steps: int | None = decode_steps_option(
        "decoding steps after the prefill, each crossing the link; the prefill yields the first token, so m steps "
        f"give m + 1 generated tokens \\[default: the plan's, else {DEFAULT_DECODE_STEPS}]"),
    prompt: str | None = typer.Option(
        None, "--prompt", metavar="TEXT", rich_help_panel=MODEL,
        help="decoders: the prompt's last words; real text (the Sonnets) comes before them up to --prompt-tokens "
             "\\[default: 'The capital of France is']"),
    batch: int = typer.Option(1, "--batch", min=1, rich_help_panel=MODEL, help="sequences per request"),
    ragged: bool = typer.Option(False, "--ragged", rich_help_panel=MODEL,
                                help="encoders: pad the batch to ragged lengths (the mask crosses)"),
    wire_dtype: WireDtype | None = typer.Option(None, "--wire-dtype", rich_help_panel=LINK,
                                                help="the activation's dtype on the link \\[default: the plan's, else "
                                                     "fp32]"),
    emulate_rate: str | None = typer.Option(None, "--emulate-rate", metavar="RATE", rich_help_panel=LINK,
                                            help="shape a private namespace's loopback to this rate, e.g. 20Mbps "
                                                 "(root; both roles here)"),
    emulate_link: EmulatedLink = typer.Option(
        EmulatedLink.loopback, "--emulate-link", rich_help_panel=LINK,
        help="with --emulate-rate: loopback (both roles in one namespace) or veth (device and server in two "
             "namespaces joined by a veth pair, each shaping its egress: a real TCP path)"),
    emulate_rtt: str | None = typer.Option(None, "--emulate-rtt", metavar="DURATION", rich_help_panel=LINK,
                                           help="add this round-trip time at the transport boundary, e.g. 10ms"),
    role: Role = typer.Option(Role.local, "--role", rich_help_panel=ROLES,
                              help="local: both roles here; server or device: one role per machine"),
    listen: str = typer.Option("127.0.0.1:29600", "--listen", metavar="HOST:PORT", rich_help_panel=ROLES,
                               help="--role server: the address to listen on (loopback unless you name another)"),
    server: str | None = typer.Option(None, "--server", metavar="HOST:PORT", rich_help_panel=ROLES,
                                      help="--role device: the server's address"),
    via: list[str] = typer.Option([], "--via", metavar="HOST:PORT", rich_help_panel=ROLES,
                                  help="--role device: a relay's address, once per relay, in chain order"),
    threads: int | None = threads_option(),
    warmup: int = typer.Option(1, "--warmup", min=0, rich_help_panel=MEASUREMENT, help="unmeasured requests first"),
    repeats: int = typer.Option(1, "--repeats", min=1, rich_help_panel=MEASUREMENT,
                                help="measured requests (medians are reported)"),
    timeout: str = typer.Option("60s", "--timeout", metavar="DURATION", rich_help_panel=MEASUREMENT,
                                help="per-operation timeout of a session"),
    check: bool = typer.Option(True, "--check/--no-check", rich_help_panel=MEASUREMENT,
                               help="compare the output with the unsplit model's"),
    device_profile: str | None = typer.Option(None, "--device-profile", metavar="FILE", rich_help_panel=PREDICTION,
                                              help="without --plan: predict from this device profile"),
    server_profile: str | None = typer.Option(None, "--server-profile", metavar="FILE", rich_help_panel=PREDICTION,
                                              help="the server's profile \\[default: the device's]"),
    prune_report: str | None = typer.Option(None, "--prune-report", metavar="FILE", rich_help_panel=MODEL,
                                            help="run the shards 'coinfer prune --export' wrote (sha256-checked)"),
    ratio: float | None = typer.Option(None, "--ratio", rich_help_panel=MODEL,
                                       help="which pruning ratio of --prune-report"),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="FILE", rich_help_panel=OUTPUT,
        help=f"write the result (JSON) here \\[default: {DEFAULT_OUTPUT}; with --json only when given]"),
    as_json: bool = json_option("result"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
    token_file: str | None = typer.Option(
        None, "--token-file", metavar="FILE", rich_help_panel=ROLES,
        help="a shared secret (both roles; else $COINFER_TOKEN): proved by challenge-response, never sent; "
             "required to listen beyond loopback"),
    max_sessions: int = typer.Option(1, "--max-sessions", min=1, rich_help_panel=ROLES,
                                     help="--role server: devices served at the same time; more get 'busy'"),
    precision: Precision = typer.Option(Precision.fp32, "--precision", rich_help_panel=MODEL,
                                        help="the device shard's weights (weight-only int8/int4: bf16 activations)"),
    engine: EngineName = typer.Option(EngineName.torch, "--engine", rich_help_panel=MODEL,
                                      help="what runs the device shard"),
    erasure: str | None = typer.Option(
        None, "--erasure", metavar="P", rich_help_panel=CHANNEL,
        help="emulated channel: each element of the crossing activation arrives as 0 with this probability"),
    snr_db: str | None = typer.Option(
        None, "--snr-db", metavar="DB", rich_help_panel=CHANNEL,
        help="emulated channel: white Gaussian noise on the crossing activation at this SNR (dB, per token)"),
    robustness: str | None = typer.Option(
        None, "--robustness", metavar="FILE", rich_help_panel=CHANNEL,
        help="robustness profile from 'coinfer channel': its prediction beside the measured quality"),
    strict: bool = typer.Option(False, "--strict", rich_help_panel=MEASUREMENT,
                                help="refuse to write a result measured on a contended machine (exit 2)"),
) -> None:
    """Run a split for real (both roles here, or one role per machine) and compare with the plan."""
    from coinfer.runner.api import RunOptions, run_command
    from coinfer.runner.linkemu import parse_duration_ms, parse_rate_bps

    out = Output.of(quiet, verbose, as_json)
    if output is None and not as_json:
        output = DEFAULT_OUTPUT
    check_outputs([None if role == Role.server else output])
    timeout_s = parse_duration_s(timeout, "--timeout")
    if timeout_s <= 0:
        raise UserInputError(f"--timeout {timeout!r}: must be positive")
    for text, parse_one in ((emulate_rate, parse_rate_bps), (emulate_rtt, parse_duration_ms)):
        if text is not None:
            parse_one(text)  # the unit parser's one line, before anything loads
    no_plan = plan is None
    opts = RunOptions(
        role=role.value, plan=plan, cut=cut, chain_cuts=_cuts(chain_cuts),
        model=model or (DEFAULT_MODEL if no_plan else None), seed=seed, listen=listen, server=server, via=list(via),
        wire_dtype=None if wire_dtype is None else wire_dtype.value,
        prompt_tokens=prompt_tokens if prompt_tokens is not None or not no_plan else DEFAULT_PROMPT_TOKENS,
        new_tokens=decode_steps if decode_steps is not None or not no_plan else DEFAULT_DECODE_STEPS,
        batch=batch, ragged=ragged, emulate_rate=emulate_rate, emulate_rtt=emulate_rtt, emulate_link=emulate_link.value,
        threads=threads or physical_cores(), warmup=warmup, repeats=repeats, timeout_s=timeout_s,
        out=None if role == Role.server else output, check=check, device_profile=device_profile,
        server_profile=server_profile, prune_report=prune_report, ratio=ratio,
        token_file=token_file, max_sessions=max_sessions,
        precision=precision.value, engine=engine.value,
        erasure=erasure, snr_db=snr_db, robustness=robustness, prompt=prompt,
        strict=strict,
    )
    if role == Role.server:
        def server_log(ev: dict[str, Any]) -> None:
            _log_event(ev)
            if ev.get("event") == "listening":  # said once the options passed their checks
                err_console.print("note: tensors cross unencrypted (gloo over plain TCP; this torch has no gloo "
                                  "TLS): use a trusted network or a tunnel", markup=False, highlight=False)

        # A server's events are its log: on stderr, unless -q.
        run_command(opts, on_event=None if quiet else server_log)
        return
    with out.work("running the split") as status:
        def on_event(ev: dict[str, Any]) -> None:
            status(_event_text(ev))
            if verbose:
                _log_event(ev)

        result = run_command(opts, on_event=on_event)
    if result is None:
        return
    if as_json:
        out.emit_json(result)
        return
    from coinfer.quiet import warning_line

    loud = warning_line(result.contention, "this run")
    if loud:
        err_console.print(loud, markup=False, highlight=False, soft_wrap=True)
    render(result, out, on_stderr=loud)
    out.wrote(output)


def _log_event(ev: dict[str, Any]) -> None:
    err_console.print(_event_text(ev), markup=False, highlight=False)


def render(r: Any, out: Output, on_stderr: str | None = None) -> None:
    """What ``coinfer run`` prints for a run result (also ``coinfer show``).

    Args:
        r: The run result.
        out: How to print.
        on_stderr: A note already printed on stderr (the contention warning), not repeated.
    """
    link = r.link
    shaped = f"{fmt_rate(link.rate_bps)} (tc tbf)" if link.rate_bps else "unshaped loopback"
    rtt = f", RTT {link.rtt_ms:g} ms (emulated at transport)" if link.rtt_ms else ""
    steps = f" + {r.decode_steps} decode steps" if r.model.is_decoder else ""
    dev = (f"  device {r.device_precision} on {r.device_engine}"
           if (r.device_precision, r.device_engine) != ("fp32", "torch") else "")
    out.print(
        f"[bold]{r.model.name}[/] ({r.model.family}, weights: {r.model.weights_label})  cut {r.cut} after {r.cut_name}  "
        f"wire {r.wire_dtype}  {r.prompt_tokens} prompt tokens{steps}  {r.mode}: {shaped}{rtt}{dev}"
    )
    out.print("chain: " + "  ->  ".join(f"{m.role} ({m.stages})" for m in r.chain), markup=False)
    table = Table(title=f"measured vs predicted (ms; {r.prediction_source or 'no prediction'})")
    table.add_column("phase")
    table.add_column("term")
    for col in ("measured", "predicted", "error"):
        table.add_column(col, justify="right")
    phases = [("prefill", r.prefill), ("per token", r.per_token), ("total", r.total)]
    for name, ph in phases:
        if ph is None:
            continue
        for i, term in enumerate(("device_compute", "transfer", "server_compute", "end_to_end")):
            m = getattr(ph, term)
            table.add_row(name if i == 0 else "", term.replace("_", " "), _fmt(m.measured_ms), _fmt(m.predicted_ms),
                          _fmt(m.error_pct, True), end_section=i == 3)
    if r.per_generated_token is not None:
        m = r.per_generated_token
        table.add_row("per generated token", "end to end", _fmt(m.measured_ms), _fmt(m.predicted_ms), _fmt(m.error_pct, True))
    out.print(table)
    t = r.traffic
    per = f", {t.per_token_uplink_bytes:,} B per decode step" if t.per_token_uplink_bytes is not None else ""
    if r.generated_text is not None:
        tail = r.prompt_text[-120:].replace("\n", " ") if r.prompt_text else ""
        out.print(f"prompt (last 120 characters): ...{tail}", markup=False, highlight=False)
        out.print(f"generated ({r.decode_steps + 1} tokens): {r.generated_text!r}", markup=False, highlight=False)
    out.print(f"sent: prefill uplink {t.prefill_uplink_bytes:,} B{per}, downlink {t.downlink_bytes:,} B, total {t.total_bytes:,} B")
    if r.matches_unsplit is not None:
        what = "tokens" if r.model.is_decoder else f"output (max |diff| {r.max_abs_diff:.3g})"
        ref = "the unsplit model" if r.shards is None and (r.device_precision, r.device_engine) == ("fp32", "torch") \
            else "the same shards run in one process"
        out.print(f"{what} identical to {ref}: {'yes' if r.matches_unsplit else 'NO'}")
    if r.channel is not None:
        _render_channel(r.channel, r.model.is_decoder, out)
    out.notes([n for n in r.notes if n != on_stderr])


def _render_channel(c: Any, decoder: bool, out: Output) -> None:
    def say(text: str) -> None:
        out.print(text, markup=False)

    seed = "" if c.condition.deterministic else f", seed {c.seed}"
    say(f"channel: {c.condition.label()}{seed}: {c.applied}")
    q = c.measured
    if q is not None and decoder:
        div = "none" if q.first_divergence is None else f"at token {q.first_divergence}"
        say(f"measured on the {q.tokens} generated tokens: top-1 agreement with the clean model after the same tokens "
            f"{q.top1_agreement:.3f}; equal to the clean run {q.clean_run_agreement:.3f} (first divergence {div}); "
            f"clean-model NLL {q.nll_nats:.3f} nats/token (clean run's own {q.clean_run_nll_nats:.3f})")
    elif q is not None:
        say(f"measured: pooled cosine to the clean embedding {q.pooled_cosine:.4f}")
    p = c.predicted
    if p is not None:
        est = (("top-1 agreement", p.top1_agreement), ("perplexity ratio", p.perplexity_ratio), ("KL", p.kl_nats)) \
            if decoder else (("pooled cosine", p.pooled_cosine),)
        say("predicted by the robustness profile (" + str(c.prediction) + "): " + "; ".join(
            f"{k} {e.mean:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]" for k, e in est if e is not None))
    elif c.prediction:
        say(c.prediction)
