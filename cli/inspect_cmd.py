"""`coinfer models` and `coinfer inspect`: what a model is made of and what crosses each cut."""

from __future__ import annotations

import typer
from rich.table import Table

from coinfer.cli.app import app, console
from coinfer.errors import UserInputError
from coinfer.models.presets import PRESETS, REAL_MODELS, weights_label
from coinfer.vocab import check_wire_dtype


@app.command("models")
def models_cmd() -> None:
    """List the models --model accepts (besides a local Hugging Face folder or a GGUF file)."""
    table = Table(title="models")
    table.add_column("name")
    table.add_column("weights")
    table.add_column("what")
    for name, what in REAL_MODELS.items():
        table.add_row(name, weights_label(name), what)
    for name, (what, _) in PRESETS.items():
        table.add_row(name, weights_label(name), what)
    console.print(table)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.3f}"


@app.command("inspect")
def inspect_cmd(
    model: str = typer.Option("minilm", "--model", "-m", help="minilm, a preset (see 'coinfer models') or a local HF folder"),
    seq_len: int = typer.Option(128, "--seq-len", help="prompt tokens for the payload sizes"),
    batch: int = typer.Option(1, "--batch"),
    wire_dtype: str = typer.Option("fp32", "--wire-dtype", help="fp32, fp16 or int8"),
    verify: int = typer.Option(-1, "--verify", help="check that the split after this many blocks reproduces the model"),
) -> None:
    """Show a model's stages, weights and the bytes crossing each possible cut."""
    if seq_len <= 0 or batch <= 0:
        raise UserInputError("--seq-len and --batch must be positive")
    check_wire_dtype(wire_dtype)
    from coinfer.models.loading import load_model
    from coinfer.models.summary import input_payload_bytes, summarize, verify_split

    loaded = load_model(model)
    ident = loaded.identity
    console.print(
        f"[bold]{ident.name}[/]  family={ident.family} type={ident.model_type} blocks={ident.num_blocks} "
        f"hidden={ident.hidden_size} params={ident.num_parameters:,} weights: {ident.weights_label}"
    )
    table = Table(title=f"cuts (batch {batch}, {seq_len} tokens, wire {wire_dtype})")
    for col in ("stage", "weights MB", "cut after: shape", "prefill MB", "per token KB"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    table.add_row("(none: all on server)", "-", f"({batch}, {seq_len}) int64", _mb(input_payload_bytes(batch, seq_len)), "-")
    for row in summarize(loaded, batch, seq_len, wire_dtype):
        per = "-" if row.per_token_payload_bytes is None else f"{row.per_token_payload_bytes / 1e3:,.3f}"
        shape = str(row.cut_shape) if row.cut_shape else "nothing (all on device)"
        table.add_row(row.name, _mb(row.param_bytes), shape, _mb(row.prefill_payload_bytes), per)
    console.print(table)
    if verify >= 0:
        if verify > ident.num_blocks:
            raise UserInputError(f"--verify {verify} outside 0..{ident.num_blocks}")
        diff = verify_split(loaded, verify)
        console.print(f"split after {verify} blocks: max |split - unsplit| = {diff:.3g}")
