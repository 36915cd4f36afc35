"""`coinfer perplexity`: a decoder's perplexity on a text, with the protocol beside the number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from coinfer.cli.common import (
    MAX_CONTEXT_TOKENS,
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
from coinfer.reports.quality import DEFAULT_EVAL_TOKENS, DEFAULT_WINDOW


@command("perplexity")
def perplexity_cmd(
    model: str = model_option("smollm2", help="a decoder: a name from 'coinfer models', a folder or a GGUF file"),
    eval_text: str | None = typer.Option(
        None, "--eval-text", metavar="FILE|NAME", rich_help_panel=MEASUREMENT,
        help="UTF-8 text file, or shakespeare-eval (default), shakespeare-calib, builtin"),
    eval_tokens: int = typer.Option(DEFAULT_EVAL_TOKENS, "--eval-tokens", min=2, max=MAX_CONTEXT_TOKENS,
                                    rich_help_panel=MEASUREMENT, help="text tokens evaluated (whole windows)"),
    window: int = typer.Option(DEFAULT_WINDOW, "--window", min=2, max=MAX_CONTEXT_TOKENS, rich_help_panel=MEASUREMENT,
                               help="tokens per window (clipped to the model's positions)"),
    stride: int | None = typer.Option(None, "--stride", min=1, max=MAX_CONTEXT_TOKENS, rich_help_panel=MEASUREMENT,
                                      help="tokens between window starts \\[default: the window]"),
    bos: bool = typer.Option(False, "--bos", rich_help_panel=MEASUREMENT, help="prepend the BOS token to each window"),
    score_first: bool = typer.Option(False, "--score-first", rich_help_panel=MEASUREMENT,
                                     help="with --bos: score each window's first token"),
    seed: int = typer.Option(0, "--seed", rich_help_panel=MODEL, help="seed of a preset's random weights"),
    threads: int | None = threads_option(),
    output: Path | None = output_option("perplexity report"),
    as_json: bool = json_option("perplexity report"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Perplexity of a decoder on a text under a fixed protocol (text, tokens, window, stride, BOS)."""
    from coinfer.models.perplexity import measure
    from coinfer.reports.io import write_json

    out = Output.of(quiet, verbose, as_json)
    check_outputs([output])
    with out.work(f"evaluating {model}"):
        rep = measure(model, eval_text, tokens=eval_tokens, window=window, stride=stride, bos=bos,
                      first_token_scored=score_first, seed=seed, threads=threads or physical_cores())
    if output is not None:
        write_json(rep, output)
    if as_json:
        out.emit_json(rep)
        return
    render(rep, out)
    out.wrote(output)


def render(rep: Any, out: Output) -> None:
    """What ``coinfer perplexity`` prints for a perplexity report (also ``coinfer show``)."""
    m, f = rep.model, rep.figures
    out.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label})")
    out.print(f"perplexity {f.perplexity:.4g} (mean NLL {f.nll_nats:.4f} nats/token) in {rep.eval_s:.1f} s, "
              f"{rep.threads} threads", highlight=False)
    out.print(f"protocol: {f.protocol.describe()}", markup=False, highlight=False)
    out.print(f"text sha256: {f.protocol.text.sha256}; {f.protocol.text.source}", markup=False, highlight=False)
