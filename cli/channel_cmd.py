"""`coinfer channel`: the quality cost of a corrupted or compressed link, per cut (a robustness profile)."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from coinfer.cli.app import app, console, err_console
from coinfer.models.robustness import (
    DEFAULT_DRAWS,
    DEFAULT_ERASURE,
    DEFAULT_EVAL_TOKENS,
    DEFAULT_SNR_DB,
    DEFAULT_WIRES,
)


@app.command("channel")
def channel_cmd(
    model: str = typer.Option("smollm2", "--model", "-m", help="a name from 'coinfer models', a folder or a GGUF file"),
    cuts: str = typer.Option(None, "--cuts", help="cuts to measure, stages on the device, 1..L+1 (default: after 1, 2, 4, 8, 16.. blocks)"),
    erasure: str = typer.Option(DEFAULT_ERASURE, "--erasure", help="erasure probabilities: a list, or A:B[:STEPS]; 'none' for none"),
    snr_db: str = typer.Option(DEFAULT_SNR_DB, "--snr-db", help="AWGN signal-to-noise ratios in dB: a list or A:B[:STEPS]; 'none' for none"),
    wire: str = typer.Option(DEFAULT_WIRES, "--wire", help="wire precisions measured alone: fp32, fp16, int8, int4 or all"),
    impair_wire: str = typer.Option(None, "--impair-wire", help="wire precisions the impairments are measured on (default: the first --wire; all)"),
    draws: int = typer.Option(DEFAULT_DRAWS, "--draws", help="random draws per impaired condition (confidence interval over them)"),
    seed: int = typer.Option(0, "--seed", help="seed of the channel's draws (and of a preset's random weights)"),
    eval_text: str = typer.Option(None, "--eval-text", help="UTF-8 text file, or shakespeare-eval (default), shakespeare-calib, builtin"),
    eval_tokens: int = typer.Option(DEFAULT_EVAL_TOKENS, "--eval-tokens", help="text tokens evaluated (whole windows)"),
    window: int = typer.Option(None, "--window", help="tokens per window (default: 512 for decoders, 128 for encoders)"),
    confidence: float = typer.Option(0.95, "--confidence", help="confidence level of the intervals"),
    threads: int = typer.Option(None, "--threads", help="CPU threads"),
    output: str = typer.Option("robustness.json", "--output", "-o", help="the robustness profile (JSON)"),
) -> None:
    """Measure, per cut, what erasure, noise and wire precision on the link do to the model's output."""
    from coinfer.models.robustness import ChannelOptions, check_options, measure_robustness
    from coinfer.reports.io import check_writable, write_json

    opts = ChannelOptions(model=model, cuts=cuts, erasure=erasure, snr_db=snr_db, wires=wire, impair_wires=impair_wire,
                          draws=draws, seed=seed, eval_text=eval_text, eval_tokens=eval_tokens, window=window,
                          confidence=confidence, threads=threads)
    check_options(opts)
    check_writable(output)
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not err_console.is_terminal) as bar:  # no bar (or its leftovers) in logs and pipes
        task = bar.add_task(f"loading {model}", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        profile = measure_robustness(opts, progress)
    elapsed = time.perf_counter() - start
    write_json(profile, output)
    _render(profile, elapsed, threads)
    console.print(f"wrote {output}")


def _est(e: Any, fmt: str) -> str:
    if e is None:
        return "-"
    if e.draws == 1:
        return format(e.mean, fmt)
    return f"{e.mean:{fmt}}±{(e.ci_high - e.ci_low) / 2:.1g}"


def _render(p: Any, elapsed: float, threads: int | None) -> None:
    m = p.model
    names = {pt.cut: pt.cut_name for pt in p.points}
    console.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label}), {m.num_blocks} blocks; cuts "
                  + ", ".join(f"{c} (after {names[c]})" for c in p.cuts), highlight=False)
    pay = {pt.condition.wire_dtype: pt.payload_bytes_per_token for pt in p.points}
    console.print("payload per token: " + ", ".join(f"{w} {b:,} B" for w, b in pay.items()), highlight=False)
    dec = p.metric == "perplexity_ratio"
    if dec:
        console.print(f"clean perplexity {p.clean_perplexity:.4g}; protocol: {p.protocol.describe()}", markup=False,
                      highlight=False)
    table = Table(title=f"per cut and condition: mean ± half the {p.confidence:.0%} CI over draws", box=box.SIMPLE_HEAD)
    table.add_column("cut", justify="right")
    table.add_column("condition", no_wrap=True)
    cols = (("ppl ratio", ".4f"), ("KL nats", ".3g"), ("top-1", ".3f")) if dec else (("pooled cos", ".4f"),)
    for col, _ in (*cols, ("rel-MSE", ".3g")):
        table.add_column(col, justify="right")
    last = None
    for pt in p.points:
        figs = (pt.perplexity_ratio, pt.kl_nats, pt.top1_agreement) if dec else (pt.pooled_cosine,)
        table.add_row(str(pt.cut) if pt.cut != last else "", pt.condition.label(),
                      *(_est(f, fmt) for f, (_, fmt) in zip(figs, cols, strict=True)), _est(pt.output_rel_mse, ".3g"))
        last = pt.cut
    console.print(table)
    for note in p.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    import torch

    console.print(f"{p.model_evaluations:,} server-part evaluations in {elapsed:.1f} s "
                  f"({threads or torch.get_num_threads()} threads, model load included)", highlight=False)
