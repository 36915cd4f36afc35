"""`coinfer perplexity`: a decoder's perplexity on a text, with the protocol beside the number."""

from __future__ import annotations

from pathlib import Path

import typer

from coinfer.cli.app import app, console
from coinfer.cli.common import MAX_CONTEXT_TOKENS, MAX_THREADS, check_outputs
from coinfer.reports.quality import DEFAULT_EVAL_TOKENS, DEFAULT_WINDOW


@app.command("perplexity")
def perplexity_cmd(
    model: str = typer.Option("smollm2", "--model", "-m", help="a decoder: a name from 'coinfer models', a folder or a GGUF file"),
    eval_text: str | None = typer.Option(
        None, "--eval-text", help="UTF-8 text file, or shakespeare-eval (default), shakespeare-calib, builtin"
    ),
    eval_tokens: int = typer.Option(DEFAULT_EVAL_TOKENS, "--eval-tokens", min=2, max=MAX_CONTEXT_TOKENS,
                                    help="text tokens evaluated (whole windows)"),
    window: int = typer.Option(DEFAULT_WINDOW, "--window", min=2, max=MAX_CONTEXT_TOKENS,
                               help="tokens per window (clipped to the model's positions)"),
    stride: int | None = typer.Option(None, "--stride", min=1, max=MAX_CONTEXT_TOKENS,
                                      help="tokens between window starts (default: the window)"),
    bos: bool = typer.Option(False, "--bos", help="prepend the BOS token to each window"),
    score_first: bool = typer.Option(False, "--score-first", help="with --bos: score each window's first token"),
    seed: int = typer.Option(0, "--seed", help="seed of a preset's random weights"),
    threads: int | None = typer.Option(None, "--threads", min=1, max=MAX_THREADS, help="CPU threads"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write the versioned report JSON here"),
) -> None:
    """Perplexity of a decoder on a text under a fixed protocol (text, tokens, window, stride, BOS)."""
    from coinfer.models.perplexity import measure
    from coinfer.reports.io import write_json

    check_outputs([output])
    rep = measure(model, eval_text, tokens=eval_tokens, window=window, stride=stride, bos=bos,
                  first_token_scored=score_first, seed=seed, threads=threads)
    if output is not None:
        write_json(rep, output)
    m, f = rep.model, rep.figures
    console.print(f"[bold]{m.name}[/] ({m.family}, weights: {m.weights_label})")
    console.print(f"perplexity {f.perplexity:.4g} (mean NLL {f.nll_nats:.4f} nats/token) in {rep.eval_s:.1f} s, "
                  f"{rep.threads} threads", highlight=False)
    console.print(f"protocol: {f.protocol.describe()}", markup=False, highlight=False)
    console.print(f"text sha256: {f.protocol.text.sha256}; {f.protocol.text.source}", markup=False, highlight=False)
    if output is not None:
        console.print(f"wrote {output}")
