"""`coinfer channel`: the quality cost of a corrupted or compressed link, per cut (a robustness profile)."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich import box
from rich.table import Table

from coinfer.cli.common import (
    CHANNEL,
    MEASUREMENT,
    MODEL,
    Output,
    check_outputs,
    command,
    json_option,
    model_option,
    output_option,
    physical_cores,
    quiet_option,
    threads_option,
    verbose_option,
)
from coinfer.models.robustness import (
    DEFAULT_DRAWS,
    DEFAULT_ERASURE,
    DEFAULT_EVAL_TOKENS,
    DEFAULT_SNR_DB,
    DEFAULT_WIRES,
)

DEFAULT_OUTPUT = "robustness.json"


@command("channel")
def channel_cmd(
    model: str = model_option("smollm2"),
    cuts: str | None = typer.Option(None, "--cuts", metavar="C1,C2,...", rich_help_panel=MODEL,
                                    help="cuts to measure, stages on the device, 1..L+1 "
                                         "\\[default: after 1, 2, 4, 8, 16.. blocks]"),
    erasure: str = typer.Option(DEFAULT_ERASURE, "--erasure", metavar="P1,P2|A:B[:STEPS]", rich_help_panel=CHANNEL,
                                help="erasure probabilities: a list, or A:B[:STEPS]; 'none' for none"),
    snr_db: str = typer.Option(DEFAULT_SNR_DB, "--snr-db", metavar="DB1,DB2|A:B[:STEPS]", rich_help_panel=CHANNEL,
                               help="AWGN signal-to-noise ratios in dB: a list or A:B[:STEPS]; 'none' for none"),
    wire: str = typer.Option(DEFAULT_WIRES, "--wire", metavar="W1,W2", rich_help_panel=CHANNEL,
                             help="wire precisions measured alone: fp32, fp16, int8, int4 or all"),
    impair_wire: str | None = typer.Option(None, "--impair-wire", metavar="W1,W2", rich_help_panel=CHANNEL,
                                           help="wire precisions the impairments are measured on "
                                                "\\[default: the first --wire; all]"),
    draws: int = typer.Option(DEFAULT_DRAWS, "--draws", rich_help_panel=MEASUREMENT,
                              help="random draws per impaired condition (confidence interval over them)"),
    seed: int = typer.Option(0, "--seed", rich_help_panel=MEASUREMENT,
                             help="seed of the channel's draws (and of a preset's random weights)"),
    eval_text: str | None = typer.Option(None, "--eval-text", metavar="FILE|NAME", rich_help_panel=MEASUREMENT,
                                         help="UTF-8 text file, or shakespeare-eval (default), shakespeare-calib, "
                                              "builtin"),
    eval_tokens: int = typer.Option(DEFAULT_EVAL_TOKENS, "--eval-tokens", rich_help_panel=MEASUREMENT,
                                    help="text tokens evaluated (whole windows)"),
    window: int | None = typer.Option(None, "--window", rich_help_panel=MEASUREMENT,
                                      help="tokens per window \\[default: 512 for decoders, 128 for encoders]"),
    confidence: float = typer.Option(0.95, "--confidence", rich_help_panel=MEASUREMENT,
                                     help="confidence level of the intervals"),
    threads: int | None = threads_option(),
    output: str | None = output_option("robustness profile", default=None),
    as_json: bool = json_option("robustness profile"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Measure, per cut, what erasure, noise and wire precision on the link do to the model's output."""
    from coinfer.models.robustness import ChannelOptions, check_options, measure_robustness
    from coinfer.reports.io import write_json

    out = Output.of(quiet, verbose, as_json)
    if output is None and not as_json:
        output = DEFAULT_OUTPUT
    opts = ChannelOptions(model=model, cuts=cuts, erasure=erasure, snr_db=snr_db, wires=wire, impair_wires=impair_wire,
                          draws=draws, seed=seed, eval_text=eval_text, eval_tokens=eval_tokens, window=window,
                          confidence=confidence, threads=threads or physical_cores())
    check_options(opts)
    check_outputs([output])
    start = time.perf_counter()
    with out.work(f"loading {model}") as status:
        profile = measure_robustness(opts, lambda what, done, total: status(f"{what} {done}/{total}"))
    elapsed = time.perf_counter() - start
    if output is not None:
        write_json(profile, output)
    if as_json:
        out.emit_json(profile)
        return
    render(profile, out)
    out.print(f"{profile.model_evaluations:,} server-part evaluations in {elapsed:.1f} s "
              f"({opts.threads} threads, model load included)", highlight=False)
    out.wrote(output)


def _est(e: Any, fmt: str) -> str:
    if e is None:
        return "-"
    if e.draws == 1:
        return format(e.mean, fmt)
    return f"{e.mean:{fmt}}±{(e.ci_high - e.ci_low) / 2:.1g}"


def render(p: Any, out: Output) -> None:
    """What ``coinfer channel`` prints for a robustness profile (also ``coinfer show``)."""
    m = p.model
    names = {pt.cut: pt.cut_name for pt in p.points}
    out.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label}), {m.num_blocks} blocks; cuts "
                  + ", ".join(f"{c} (after {names[c]})" for c in p.cuts), highlight=False)
    pay = {pt.condition.wire_dtype: pt.payload_bytes_per_token for pt in p.points}
    out.print("payload per token: " + ", ".join(f"{w} {b:,} B" for w, b in pay.items()), highlight=False)
    dec = p.metric == "perplexity_ratio"
    if dec and p.clean_perplexity is not None:
        proto = p.protocol.describe() if p.protocol is not None else "not recorded"
        out.print(f"clean perplexity {p.clean_perplexity:.4g}; protocol: {proto}", markup=False, highlight=False)
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
    out.print(table)
    out.notes(p.notes)
