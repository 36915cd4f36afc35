"""`coinfer run`: execute a split for real and hold the plan's predictions against it."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from coinfer.cli.app import app, console, err_console
from coinfer.errors import UserInputError


def _cuts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserInputError(f"--chain-cuts {text!r}: expected stage counts such as 3,7") from None


def _event(ev: dict[str, Any]) -> None:
    kind = ev.get("event")
    detail = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("event", "trace"))
    err_console.print(f"[{kind}] {detail}", markup=False, highlight=False)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.1f}%" if pct else f"{x:,.2f}"


@app.command("run")
def run_cmd(
    plan: str = typer.Option(None, "--plan", help="plan.json from 'coinfer plan': cut, wire dtype, prompt and predictions"),
    cut: int = typer.Option(None, "--cut", help="stages on the device: 0 = all on server .. L+2 = all on device"),
    chain_cuts: str = typer.Option(None, "--chain-cuts", help="a chain: stage counts where each part ends, e.g. 3,7"),
    model: str = typer.Option(None, "--model", "-m", help="minilm, a preset or a local HF folder (default: the plan's)"),
    seed: int = typer.Option(0, "--seed", help="seed of preset weights and of the random prompt"),
    role: str = typer.Option("local", "--role", help="local (both roles here), server or device"),
    listen: str = typer.Option("127.0.0.1:29600", "--listen", help="server: HOST:PORT to listen on (loopback by default)"),
    server: str = typer.Option(None, "--server", help="device: the server's HOST:PORT"),
    via: list[str] = typer.Option([], "--via", help="device: a relay's HOST:PORT, once per relay, in chain order"),
    wire_dtype: str = typer.Option(None, "--wire-dtype", help="fp32, fp16 or int8 (default: the plan's, else fp32)"),
    prompt_tokens: int = typer.Option(None, "--prompt-tokens", help="prompt length (default: the plan's, else 32)"),
    new_tokens: int = typer.Option(
        None, "--new-tokens",
        help="decode steps after the prefill, each crossing the link (the plan's m; m+1 tokens come out; default: the plan's, else 8)",
    ),
    batch: int = typer.Option(1, "--batch"),
    ragged: bool = typer.Option(False, "--ragged", help="encoders: pad the batch to ragged lengths (the mask crosses)"),
    emulate_rate: str = typer.Option(None, "--emulate-rate", help="e.g. 20Mbps: shape a private namespace's loopback (root)"),
    emulate_rtt: str = typer.Option(None, "--emulate-rtt", help="e.g. 10ms: added at the transport boundary"),
    threads: int = typer.Option(None, "--threads", help="torch threads per process (default: all cores; the roles take turns)"),
    warmup: int = typer.Option(1, "--warmup", help="unmeasured requests first"),
    repeats: int = typer.Option(1, "--repeats", help="measured requests (medians are reported)"),
    timeout_s: float = typer.Option(60.0, "--timeout-s", help="per-operation timeout of a session"),
    out: str = typer.Option("run.json", "--out", "-o", help="result file"),
    check: bool = typer.Option(True, "--check/--no-check", help="compare the output with the unsplit model"),
    device_profile: str = typer.Option(None, "--device-profile", help="without --plan: predict from this profile"),
    server_profile: str = typer.Option(None, "--server-profile", help="the server's profile (default: the device's)"),
    prune_report: str = typer.Option(None, "--prune-report", help="run the shards 'coinfer prune' exported (sha256-checked)"),
    ratio: float = typer.Option(None, "--ratio", help="which pruning ratio of --prune-report"),
    strict: bool = typer.Option(False, "--strict", help="refuse to write a result measured on a contended machine"),
) -> None:
    """Run a split for real (both roles here, or one role per machine) and compare with the plan."""
    from coinfer.runner.api import RunOptions, run_command

    opts = RunOptions(
        role=role, plan=plan, cut=cut, chain_cuts=_cuts(chain_cuts), model=model, seed=seed, listen=listen,
        server=server, via=list(via), wire_dtype=wire_dtype, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
        batch=batch, ragged=ragged, emulate_rate=emulate_rate, emulate_rtt=emulate_rtt, threads=threads,
        warmup=warmup, repeats=repeats, timeout_s=timeout_s, out=None if role == "server" else out, check=check,
        device_profile=device_profile, server_profile=server_profile, prune_report=prune_report, ratio=ratio,
        strict=strict,
    )
    if role == "server":
        console.print("note: gloo has no authentication or encryption; listen on loopback or a trusted network only")
    result = run_command(opts, on_event=_event)
    if result is None:
        return
    _render(result, out)


def _render(r: Any, out: str) -> None:
    link = r.link
    shaped = f"{link.rate_bps / 1e6:g} Mbit/s (tc tbf)" if link.rate_bps else "unshaped loopback"
    rtt = f", RTT {link.rtt_ms:g} ms (emulated at transport)" if link.rtt_ms else ""
    console.print(
        f"[bold]{r.model.name}[/] ({r.model.family}, weights: {r.model.weights})  cut {r.cut} after {r.cut_name}  "
        f"wire {r.wire_dtype}  {r.mode}: {shaped}{rtt}"
    )
    console.print("chain: " + "  ->  ".join(f"{m.role} ({m.stages})" for m in r.chain), markup=False)
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
    console.print(table)
    t = r.traffic
    per = f", {t.per_token_uplink_bytes:,} B per decode step" if t.per_token_uplink_bytes is not None else ""
    console.print(f"sent: prefill uplink {t.prefill_uplink_bytes:,} B{per}, downlink {t.downlink_bytes:,} B, total {t.total_bytes:,} B")
    if r.matches_unsplit is not None:
        what = "tokens" if r.model.is_decoder else f"output (max |diff| {r.max_abs_diff:.3g})"
        console.print(f"{what} identical to the unsplit model: {'yes' if r.matches_unsplit else 'NO'}")
    from coinfer.quiet import warning_line

    loud = warning_line(r.contention, "this run")
    if loud:
        err_console.print(loud, markup=False, highlight=False, soft_wrap=True)
    for note in r.notes:
        if note != loud:  # already on stderr
            console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"wrote {out}", markup=False, highlight=False, soft_wrap=True)
