"""`coinfer profile`: what each stage of a model costs on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coinfer.cli.app import err_console
from coinfer.cli.common import (
    MEASUREMENT,
    MODEL,
    Device,
    Dtype,
    Output,
    Renamed,
    check_outputs,
    command,
    json_option,
    model_option,
    output_option,
    physical_cores,
    prompt_tokens_option,
    quiet_option,
    threads_option,
    verbose_option,
)
from coinfer.errors import UserInputError
from coinfer.units import parse_duration_s, parse_power_w


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
        f"{ctx.threads} threads, weights: {profile.model.weights_label}"
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


# Notes on how the profiler measures (the same for every run): shown with -v.
METHOD_NOTES = ("GEMM peak:", "decode: KV cache filled", "context building", "stage peak_memory_bytes", "FLOPs:",
                "head timed with", "GPT-2's tied", "emissions: codecarbon's whole-run estimate")


@command("profile", renamed={"--seq-len": Renamed("--prompt-tokens"), "--power-w": Renamed("--power", "W"),
                             "--min-time-s": Renamed("--min-time", "s")})
def profile_cmd(
    model: str = model_option(),
    prompt_tokens: int = prompt_tokens_option(help="prompt tokens per sequence of the prefill"),
    batch: int = typer.Option(1, "--batch", min=1, rich_help_panel=MODEL, help="sequences per batch"),
    device: Device = typer.Option(Device.cpu, "--device", rich_help_panel=MEASUREMENT,
                                  help="the compute device measured on"),
    dtype: Dtype = typer.Option(Dtype.fp32, "--dtype", rich_help_panel=MEASUREMENT,
                                help="weights and activations"),
    decode_context: str | None = typer.Option(
        None, "--decode-context", metavar="N,N,...", rich_help_panel=MEASUREMENT,
        help="KV-cache context lengths at which one decode step is timed, e.g. 128,512,2048; '' = no decode timing "
             "\\[default: 128,512,2048, each beyond the model's positions replaced by the longest that fits]"),
    repeats: int = typer.Option(10, "--repeats", min=1, rich_help_panel=MEASUREMENT,
                                help="timed repeats per measurement (at least; see --min-time)"),
    warmup: int = typer.Option(2, "--warmup", min=0, rich_help_panel=MEASUREMENT, help="untimed passes first"),
    min_time: str = typer.Option("1s", "--min-time", metavar="DURATION", rich_help_panel=MEASUREMENT,
                                 help="repeat a fast measurement until its timed passes add up to this"),
    threads: int | None = threads_option(),
    power: str | None = typer.Option(
        None, "--power", metavar="POWER", rich_help_panel=MEASUREMENT,
        help="power model for energy estimates where no hardware counter exists, e.g. 15W "
             "\\[default: codecarbon's model of this CPU]"),
    emissions: bool = typer.Option(True, "--emissions/--no-emissions", rich_help_panel=MEASUREMENT,
                                   help="codecarbon's whole-run energy and emissions summary (a few seconds)"),
    output: Path | None = output_option("versioned profile"),
    as_json: bool = json_option("profile"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
    strict: bool = typer.Option(False, "--strict", rich_help_panel=MEASUREMENT,
                                help="refuse to write a profile measured on a contended machine (exit 2)"),
) -> None:
    """Measure per-stage latency, energy, memory, FLOPs and cut payloads on this machine."""
    from coinfer.profiler.measure import ProfileOptions, parse_context_list, run_profile, validate_options
    from coinfer.reports.io import write_json

    out = Output.of(quiet, verbose, as_json)
    check_outputs([output])
    opts = ProfileOptions(
        device=device.value,
        dtype=dtype.value,
        seq_len=prompt_tokens,
        batch=batch,
        decode_context=None if decode_context is None else parse_context_list(decode_context),
        repeats=repeats,
        warmup=warmup,
        min_time_s=parse_duration_s(min_time, "--min-time"),
        threads=threads or physical_cores(),
        power_w=None if power is None else _positive(parse_power_w(power, "--power"), power, "--power"),
        emissions=emissions,
        strict=strict,
    )
    validate_options(opts)
    with out.work(f"profiling {model}", spinner=False), Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not out.progress,  # no bar (or its leftovers) in logs, pipes, -q and --json
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
        out.emit_json(profile)
        return
    render(profile, out, on_stderr=loud)
    out.wrote(output)


def render(profile: Any, out: Output, on_stderr: str | None = None) -> None:
    """The table and notes ``coinfer profile`` prints for a profile (also ``coinfer show``).

    Args:
        profile: The profile.
        out: How to print.
        on_stderr: A note already printed on stderr (the contention warning), not repeated.
    """
    out.print(render_profile(profile))
    for line in bandwidth_lines(profile):
        out.print(line, markup=False, highlight=False)
    out.notes([n for n in profile.notes if n != on_stderr], lambda n: n.startswith(METHOD_NOTES))


def _positive(value: float, text: str, option: str) -> float:
    if value <= 0:
        raise UserInputError(f"{option} {text!r}: must be positive")
    return value
