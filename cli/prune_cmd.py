"""`coinfer prune`: structured pruning with measured distortion and speed-up, optional shard export."""

from __future__ import annotations

import typer
from rich import box
from rich.table import Table

from coinfer.cli.app import app, console


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


@app.command("prune")
def prune_cmd(
    model: str = typer.Option("minilm", "--model", "-m", help="minilm, a preset (see 'coinfer models') or a local HF folder"),
    ratios: str = typer.Option("0.1,0.2,0.3,0.5", "--ratios", help="comma-separated pruning ratios in [0, 1)"),
    split: int | None = typer.Option(None, "--split", help="device blocks K (needed for --scope device and --export)"),
    scope: str = typer.Option("all", "--scope", help="all: prune every block; device: only blocks 1..K"),
    importance: str = typer.Option("auto", "--importance", help="auto (measured default), magnitude, activation, fluctuation or taylor"),
    allocation: str = typer.Option("auto", "--allocation", help="auto, uniform, sensitivity, global or standardized"),
    compensation: str = typer.Option("auto", "--compensation", help="auto, none, bias or lstsq"),
    calib: str | None = typer.Option(None, "--calib", help="UTF-8 calibration text (default: the shipped sample)"),
    export: str | None = typer.Option(None, "--export", help="folder for device/server shards per ratio"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --export folder"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="also export ONNX shards"),
    seq_len: int = typer.Option(64, "--seq-len", help="tokens per calibration window and timed prompt"),
    windows: int = typer.Option(8, "--windows", help="calibration windows at most"),
    repeats: int = typer.Option(10, "--repeats", help="timed repeats per model (medians reported)"),
    no_speed: bool = typer.Option(False, "--no-speed", help="skip the speed measurement"),
    output: str = typer.Option("prune.json", "--output", "-o", help="pruning report (JSON)"),
) -> None:
    """Prune attention heads and MLP channels at several ratios; measure what each costs and gains."""
    from coinfer.pruner.api import PruneOptions, parse_ratios, run_prune

    opts = PruneOptions(
        model=model, ratios=parse_ratios(ratios), split=split, scope=scope, importance=importance, calib=calib,
        allocation=allocation, compensation=compensation,
        export_dir=export, force=force, onnx=onnx, seq_len=seq_len, max_windows=windows, repeats=repeats,
        measure_speed=not no_speed, output=output,
    )
    rep = run_prune(opts)
    m = rep.model
    console.print(
        f"[bold]{m.name}[/] ({m.family}, weights: {m.weights}) scope={rep.scope}"
        + (f" split={rep.split}" if rep.split is not None else "")
        + f" importance={rep.importance} allocation={rep.allocation} compensation={rep.compensation} calib={rep.calibration.source} ({rep.calibration.tokens} tokens) threads={rep.threads}"
    )
    table = Table(title="pruning: what each ratio removed, cost and gained", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    task = "KL" if m.is_decoder else "cos"
    # Short headers so the table fits 80 columns; the caption spells them out.
    cols = ["ratio", "removed", "heads/MLP", "D_w", "D_y", task, "ppl", "prefill x", "decode"]
    if not m.is_decoder:
        cols.remove("ppl")
        cols.remove("decode")
    table.caption = (
        "removed: fraction of scope parameters; D_w/D_y: parameter/output distortion; "
        + ("KL: next-token nats; " if m.is_decoder else "cos: pooled-embedding cosine; ")
        + "prefill x: measured speed-up (FLOPs ratio)"
    )
    for c in cols:
        table.add_column(c, justify="right", no_wrap=True)
    for r in rep.results:
        d, s = r.distortion, r.speedup
        row = [
            f"{r.requested_ratio:g}",
            f"{r.achieved_param_ratio:.3f}" if r.pruned_anything else "none",
            f"{r.achieved_head_ratio:.2f}/{r.achieved_channel_ratio:.2f}",
            _f(d.param_distortion, ".3f"),
            _f(d.output_rel_mse, ".3f"),
            _f(d.kl_next_token, ".3f") if m.is_decoder else _f(d.pooled_cosine, ".3f"),
        ]
        if m.is_decoder:
            row.append(_f(d.perplexity_after, ".3g"))
        row.append(f"{s.prefill_measured:.2f} ({s.prefill_flops_ratio:.2f})" if s else "-")
        if m.is_decoder:
            row.append(_f(s.decode_measured if s else None, ".2f"))
        table.add_row(*row)
    console.print(table)
    ppl0 = next((r.distortion.perplexity_before for r in rep.results if r.distortion.perplexity_before), None)
    if ppl0 is not None:
        console.print(f"perplexity of the original on the calibration text: {ppl0:.4g}")
    console.print(
        f"empirical C = {_f(rep.empirical_c)}; bound D_y <= C_fit * D_w on held-out windows: "
        + ("-" if rep.bound_holds is None else ("holds" if rep.bound_holds else "violated"))
    )
    for r in rep.results:
        for n in r.notes:
            console.print(f"ratio {r.requested_ratio:g}: {n}", markup=False, highlight=False)
        if r.onnx_max_abs_diff:
            diffs = ", ".join(f"{k} tok {v:.2g}" for k, v in r.onnx_max_abs_diff.items())
            console.print(f"ratio {r.requested_ratio:g}: ONNX vs torch max |diff|: {diffs}", markup=False, highlight=False)
    for n in rep.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
    if rep.export_dir:
        console.print(f"shards exported to {rep.export_dir}", markup=False, highlight=False)
    console.print(f"report written to {output}", markup=False, highlight=False)
