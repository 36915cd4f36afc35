"""`coinfer profile`: what each stage of a model costs on this machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coinfer.cli.app import app, console, err_console


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.3f}"


def _fmt_j(x: float | None, estimate: bool) -> str:
    if x is None:
        return "-"
    return f"~{x:.3g}" if estimate else f"{x:.3g}"


def _fmt_bw(costs) -> str:
    """Decode steps' shares of the memory bandwidth, one per context: ``38/41/52%``."""
    shares = [d.bandwidth_fraction for d in costs]
    if not shares or any(x is None for x in shares):
        return "-"
    return "/".join(f"{100 * x:.0f}" for x in shares) + "%"


def render_profile(profile) -> Table:
    """The end-of-run table: stage, prefill ms, decode ms, energy, share of GEMM peak (prefill) and of
    memory bandwidth (decode, per context), payload bytes, share of total.

    Energy estimates are marked ``~``; noisy stages (IQR over median above 10%) get a ``*``.
    """
    ctx = profile.context
    estimate = ctx.energy_source == "estimate"
    total = sum(s.prefill.median_ms for s in profile.stages) or 1.0
    title = (
        f"{profile.model.name} on {ctx.device} {ctx.dtype}, batch {ctx.batch}, {ctx.seq_len} tokens, "
        f"{ctx.threads} threads, weights: {profile.model.weights}"
    )
    caption = "* noisy (IQR/median > 10%)   ~ estimate, not a measurement"
    if profile.memory_bandwidth is not None and ctx.decode_context_tokens:
        caption += "   of BW: decode bytes / memory bandwidth / time, per context"
    table = Table(title=title, caption=caption)
    width = max(len(s.name) for s in profile.stages) + 2
    table.add_column("stage", no_wrap=True, min_width=max(width, 11))
    table.add_column("prefill ms", justify="right")
    for c in ctx.decode_context_tokens:
        table.add_column(f"dec ms @{c}", justify="right")
    table.add_column(f"J ({ctx.energy_source})", justify="right")
    table.add_column("of peak", justify="right")
    table.add_column("of BW", justify="right")
    table.add_column("cut B fp32", justify="right")
    table.add_column("share", justify="right")
    for s in profile.stages:
        frac = "-" if s.achieved_flops_fraction is None else f"{s.achieved_flops_fraction:.0%}"
        table.add_row(
            f"{s.name}*" if s.noisy else s.name,
            _fmt_ms(s.prefill.median_ms),
            *[_fmt_ms(d.timing.median_ms) for d in s.decode],
            _fmt_j(s.prefill_energy_j, estimate),
            frac,
            _fmt_bw(s.decode),
            f"{s.payload_after['fp32'].prefill_bytes:,}",
            f"{s.prefill.median_ms / total:.1%}",
        )
    wm = profile.whole_model
    if wm is not None:
        table.add_row(
            "whole",
            _fmt_ms(wm.prefill.median_ms),
            *[_fmt_ms(d.timing.median_ms) for d in wm.decode],
            "",
            "",
            _fmt_bw(wm.decode),
            "",
            f"cov {wm.prefill_coverage:.2f}",
        )
    return table


def bandwidth_lines(profile) -> list[str]:
    """How far whole-model decode is from the memory-bandwidth limit, one line per context."""
    bw, wm = profile.memory_bandwidth, profile.whole_model
    if bw is None or wm is None:
        return []
    out = []
    for d in wm.decode:
        if d.read_bytes is None or d.bandwidth_bound_ms is None or d.bandwidth_fraction is None:
            continue
        out.append(
            f"decode @{d.context_tokens}: whole model at {d.bandwidth_fraction:.0%} of memory bandwidth: "
            f"{d.read_bytes / 1e6:,.1f} MB per step / {bw.bytes_per_s / 1e9:.3g} GB/s = bound {d.bandwidth_bound_ms:.3g} ms, "
            f"measured {d.timing.median_ms:.3g} ms ({d.timing.median_ms / d.bandwidth_bound_ms:.1f}x the bound)"
        )
    return out


@app.command("profile")
def profile_cmd(
    model: str = typer.Option("gpt2", "--model", "-m", help="minilm, a preset (see 'coinfer models') or a local HF folder"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or bf16"),
    seq_len: int = typer.Option(128, "--seq-len", help="prompt tokens per sequence"),
    batch: int = typer.Option(1, "--batch"),
    decode_context: str | None = typer.Option(
        None, "--decode-context", help="context lengths for per-token decode, e.g. 128,512,2048 ('' = none)"
    ),
    repeats: int = typer.Option(10, "--repeats", help="timed repeats per measurement"),
    warmup: int = typer.Option(2, "--warmup", help="untimed passes first"),
    min_time_s: float = typer.Option(
        1.0, "--min-time-s", help="repeat fast measurements until their timed passes add up to this"
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: physical cores)"),
    power_w: float | None = typer.Option(None, "--power-w", help="power model for energy estimates, watts"),
    emissions: bool = typer.Option(True, "--emissions/--no-emissions", help="codecarbon whole-run summary"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the versioned profile JSON here"),
    as_json: bool = typer.Option(False, "--json", help="print the profile JSON instead of the table"),
    strict: bool = typer.Option(False, "--strict", help="refuse to write a profile measured on a contended machine"),
) -> None:
    """Measure per-stage latency, energy, memory, FLOPs and cut payloads on this machine."""
    from coinfer.profiler.measure import ProfileOptions, parse_context_list, run_profile, validate_options
    from coinfer.reports.io import check_writable, to_json, write_json

    opts = ProfileOptions(
        device=device,
        dtype=dtype,
        seq_len=seq_len,
        batch=batch,
        decode_context=None if decode_context is None else parse_context_list(decode_context),
        repeats=repeats,
        warmup=warmup,
        min_time_s=min_time_s,
        threads=threads,
        power_w=power_w,
        emissions=emissions,
        strict=strict,
    )
    validate_options(opts)
    if output is not None:
        check_writable(output)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json or not err_console.is_terminal,  # no bar (or its leftovers) in logs and pipes
    ) as bar:
        task = bar.add_task(f"profiling {model}", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        profile = run_profile(model, opts, progress)
    from coinfer.quiet import warning_line

    loud = warning_line(profile.contention, "this profile")
    if loud:
        err_console.print(loud, markup=False, highlight=False, soft_wrap=True)
    if output is not None:
        write_json(profile, output)
    if as_json:
        print(to_json(profile), end="")
        return
    console.print(render_profile(profile))
    for line in bandwidth_lines(profile):
        console.print(line, markup=False, highlight=False)
    for note in profile.notes:
        if note != loud:  # already on stderr
            console.print(f"note: {note}", markup=False, highlight=False)
    if output is not None:
        console.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)
