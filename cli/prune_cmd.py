"""`coinfer prune`: structured pruning with measured distortion and speed-up, optional shard export."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import typer
from rich import box
from rich.table import Table

from coinfer.cli.app import err_console
from coinfer.cli.common import (
    MEASUREMENT,
    OUTPUT,
    Output,
    Renamed,
    check_outputs,
    command,
    json_option,
    model_option,
    physical_cores,
    prompt_tokens_option,
    quiet_option,
    threads_option,
    verbose_option,
)

PRUNING = "Pruning"
# The calibration the recipe's quality was measured with: 32 windows of 512 tokens reach 1.24x dense
# perplexity on SmolLM2 at ratio 0.2 (8 of 512: 1.26x on the device part; 32 of 128: 1.47x).
CALIB_WINDOWS = 32
CALIB_WINDOW_TOKENS = 512
DEFAULT_OUTPUT = "prune.json"



class Importance(StrEnum):
    """What ranks heads and channels (the pruner's IMPORTANCES; its module imports torch, the CLI must not)."""

    auto = "auto"
    magnitude = "magnitude"
    activation = "activation"
    fluctuation = "fluctuation"
    taylor = "taylor"


class Allocation(StrEnum):
    """How the ratio is shared across blocks (the pruner's ALLOCATIONS)."""

    auto = "auto"
    uniform = "uniform"
    sensitivity = "sensitivity"
    global_ = "global"
    standardized = "standardized"


class Compensation(StrEnum):
    """What makes up for removed units (the pruner's COMPENSATIONS)."""

    auto = "auto"
    none = "none"
    bias = "bias"
    lstsq = "lstsq"


class Scope(StrEnum):
    """Which blocks are pruned."""

    all = "all"
    device = "device"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


@command("prune", renamed={"--seq-len": Renamed("--prompt-tokens")})
def prune_cmd(
    model: str = model_option(),
    prompt_tokens: int = prompt_tokens_option(CALIB_WINDOW_TOKENS, minimum=8,
                                              help="tokens per calibration window and per timed prompt (clipped to "
                                                   "the model's positions)"),
    ratios: str = typer.Option("0.1,0.2,0.3,0.5", "--ratios", rich_help_panel=PRUNING,
                               help="comma-separated pruning ratios in [0, 1)"),
    split: int | None = typer.Option(None, "--split", min=0, rich_help_panel=PRUNING,
                                     help="device blocks K: needed for --scope device and --export"),
    scope: Scope = typer.Option(Scope.all, "--scope", rich_help_panel=PRUNING,
                                help="all: prune every block; device: only blocks 1..K of --split"),
    importance: Importance = typer.Option(
        Importance.auto, "--importance", rich_help_panel=PRUNING,
        help="what ranks heads and channels: weight magnitude, activation-aware (Wanda-style), fluctuation of the "
             "unit's input (FLAP-style) or first-order Taylor on the calibration text; auto: the measured best for "
             "the model kind (see README)"),
    allocation: Allocation = typer.Option(
        Allocation.auto, "--allocation", rich_help_panel=PRUNING,
        help="how the ratio is shared across blocks: uniform, by each block's measured sensitivity, or global / "
             "standardized score ranking across blocks"),
    compensation: Compensation = typer.Option(
        Compensation.auto, "--compensation", rich_help_panel=PRUNING,
        help="what makes up for removed units: none, their mean folded into the out-projection's bias, or a "
             "least-squares refit of the out-projection on the calibration text"),
    calib: str | None = typer.Option(None, "--calib", metavar="FILE|NAME", rich_help_panel=PRUNING,
                                     help="calibration text: a UTF-8 file, shakespeare-calib or builtin (a small "
                                          "shipped sample) \\[default: shakespeare-calib]"),
    windows: int = typer.Option(CALIB_WINDOWS, "--windows", min=1, rich_help_panel=PRUNING,
                                help="calibration windows at most"),
    repeats: int = typer.Option(10, "--repeats", min=1, rich_help_panel=MEASUREMENT,
                                help="timed repeats per model (medians are reported)"),
    no_speed: bool = typer.Option(False, "--no-speed", rich_help_panel=MEASUREMENT,
                                  help="skip the speed measurement"),
    eval_text: str | None = typer.Option(None, "--eval-text", metavar="FILE|NAME", rich_help_panel=MEASUREMENT,
                                         help="decoders: evaluation text for perplexity, KL and top-1 against the "
                                              "dense model \\[default: shakespeare-eval, disjoint from the "
                                              "calibration works]"),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", min=2, rich_help_panel=MEASUREMENT,
                                    help="evaluation tokens (whole non-overlapping windows)"),
    eval_window: int = typer.Option(512, "--eval-window", min=2, rich_help_panel=MEASUREMENT,
                                    help="tokens per evaluation window"),
    no_quality: bool = typer.Option(False, "--no-quality", rich_help_panel=MEASUREMENT,
                                    help="skip the evaluation text (perplexity, KL, top-1)"),
    threads: int | None = threads_option(),
    export: str | None = typer.Option(None, "--export", metavar="FOLDER", rich_help_panel=OUTPUT,
                                      help="folder for the device/server shards of every ratio (needs --split)"),
    force: bool = typer.Option(False, "--force", rich_help_panel=OUTPUT, help="replace a non-empty --export folder"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", rich_help_panel=OUTPUT,
                              help="with --export: ONNX shards beside the safetensors ones"),
    output: str | None = typer.Option(
        None, "--output", "-o", metavar="FILE", rich_help_panel=OUTPUT,
        help=f"write the pruning report (JSON) here \\[default: {DEFAULT_OUTPUT}; with --json only when given]"),
    as_json: bool = json_option("pruning report"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
    strict: bool = typer.Option(False, "--strict", rich_help_panel=MEASUREMENT,
                                help="refuse to write speed-ups measured on a contended machine (exit 2)"),
) -> None:
    """Prune attention heads and MLP channels at several ratios; measure what each costs and gains."""
    from coinfer.pruner.api import PruneOptions, parse_ratios, run_prune

    out = Output.of(quiet, verbose, as_json)
    if output is None and not as_json:
        output = DEFAULT_OUTPUT
    check_outputs([output], {"--export": export})
    opts = PruneOptions(
        model=model, ratios=parse_ratios(ratios), split=split, scope=scope.value, importance=importance.value, allocation=allocation.value,
        compensation=compensation.value,
        calib=calib, eval_text=eval_text, eval_tokens=eval_tokens, eval_window=eval_window, quality=not no_quality,
        export_dir=export, force=force, onnx=onnx, seq_len=prompt_tokens, max_windows=windows,
        repeats=repeats, measure_speed=not no_speed, output=output, threads=threads or physical_cores(), strict=strict,
    )
    with out.work(f"pruning {model} at {ratios}"):
        rep = run_prune(opts)
    from coinfer.quiet import warning_line

    loud = [line for r in rep.results if (line := warning_line(r.speedup.contention if r.speedup else None,
                                                               f"the speed-up at ratio {r.requested_ratio:g}"))]
    for line in loud:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if as_json:
        out.emit_json(rep)
        return
    render(rep, out, on_stderr=loud)
    out.wrote(output)


def render(rep: Any, out: Output, on_stderr: Sequence[str] = ()) -> None:
    """What ``coinfer prune`` prints for a pruning report (also ``coinfer show``).

    Args:
        rep: The pruning report.
        out: How to print.
        on_stderr: Notes already printed on stderr (contention warnings), not repeated.
    """
    m = rep.model
    out.print(
        f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label}) scope={rep.scope}"
        + (f" split={rep.split}" if rep.split is not None else "")
        + f" importance={rep.importance} allocation={rep.allocation} compensation={rep.compensation} "
        f"calib={rep.calibration.source} ({rep.calibration.tokens} tokens) threads={rep.threads}"
    )
    out.print(_table(rep))
    if rep.dense_quality is not None:
        out.print(f"dense perplexity {rep.dense_quality.perplexity:.4g}; protocol: "
                  f"{rep.dense_quality.protocol.describe()}", markup=False, highlight=False)
    else:
        ppl0 = next((r.distortion.perplexity_before for r in rep.results if r.distortion.perplexity_before), None)
        if ppl0 is not None:
            out.print(f"perplexity of the original on the calibration text: {ppl0:.4g}")
    out.print(
        f"empirical C = {_f(rep.empirical_c)}; bound D_y <= C_fit * D_w on held-out windows: "
        + ("-" if rep.bound_holds is None else ("holds" if rep.bound_holds else "violated"))
    )
    out.notes([f"ratio {r.requested_ratio:g}: {n}" for r in rep.results for n in r.notes if n not in on_stderr],
              prefix="")
    for r in rep.results:
        if r.onnx_max_abs_diff:
            diffs = ", ".join(f"{k} tok {v:.2g}" for k, v in r.onnx_max_abs_diff.items())
            out.print(f"ratio {r.requested_ratio:g}: ONNX vs torch max |diff|: {diffs}", markup=False, highlight=False)
    out.notes(rep.notes)
    if rep.export_dir:
        out.print(f"shards exported to {rep.export_dir}", markup=False, highlight=False)


def _table(rep) -> Table:
    m = rep.model
    table = Table(title="pruning: what each ratio removed, cost and gained", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    held_out = rep.dense_quality is not None
    task = "KL" if m.is_decoder else "cos"
    cols = ["ratio", "removed", "heads/MLP", "D_w", "D_y", task, "ppl", "prefill x", "decode"]
    if held_out:
        cols[6:7] = ["ppl", "x dense", "top-1"]
    if not m.is_decoder:
        cols.remove("ppl")
        cols.remove("decode")
    where = "the evaluation text (below)" if held_out else "the calibration text"
    table.caption = (
        "removed: fraction of scope parameters; D_w/D_y: parameter/output distortion on the calibration text; "
        + (f"KL: next-token nats to dense, ppl, top-1: on {where}; " if m.is_decoder else "cos: pooled-embedding cosine; ")
        + "prefill x: measured speed-up (FLOPs ratio); ! measured on a contended machine"
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
        ]
        q = r.quality
        if held_out and q is not None:
            row += [_f(q.kl_nats, ".3f"), _f(q.perplexity, ".4g"), _f(q.perplexity / rep.dense_quality.perplexity, ".3f"),
                    _f(q.top1_agreement, ".3f")]
        elif held_out:
            row += ["-"] * 4
        elif m.is_decoder:
            row += [_f(d.kl_next_token, ".3f"), _f(d.perplexity_after, ".3g")]
        else:
            row.append(_f(d.pooled_cosine, ".3f"))
        busy = "!" if s and s.contention and s.contention.verdict == "contended" else ""
        row.append(f"{s.prefill_measured:.2f}{busy} ({s.prefill_flops_ratio:.2f})" if s else "-")
        if m.is_decoder:
            row.append(_f(s.decode_measured if s else None, ".2f"))
        table.add_row(*row)
    return table
