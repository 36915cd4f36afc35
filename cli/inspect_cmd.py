"""`coinfer models` and `coinfer inspect`: what a model is made of and what crosses each cut."""

from __future__ import annotations

import typer
from rich.table import Table

from coinfer.cli.common import (
    LINK,
    MEASUREMENT,
    MODEL,
    Output,
    Renamed,
    WireDtype,
    command,
    json_option,
    model_option,
    prompt_tokens_option,
    quiet_option,
    verbose_option,
)
from coinfer.errors import UserInputError
from coinfer.models.presets import PRESETS, REAL_MODELS, weights_label


@command("models")
def models_cmd(
    as_json: bool = json_option("model list"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """List the models --model accepts (besides a local Hugging Face folder or a GGUF file)."""
    from coinfer.reports.catalog import ModelEntry, ModelList

    out = Output.of(quiet, verbose, as_json)
    doc = ModelList(models=[ModelEntry(name=n, weights="real", description=w) for n, w in REAL_MODELS.items()]
                    + [ModelEntry(name=n, weights="random", description=w) for n, (w, _) in PRESETS.items()])
    if as_json:
        out.emit_json(doc)
        return
    table = Table(title="models")
    for col in ("name", "weights", "what"):
        table.add_column(col)
    for m in doc.models:
        table.add_row(m.name, weights_label(m.name), m.description)
    out.print(table)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.3f}"


@command("inspect", renamed={"--seq-len": Renamed("--prompt-tokens")})
def inspect_cmd(
    model: str = model_option(),
    prompt_tokens: int = prompt_tokens_option(help="prompt length the payload sizes are for"),
    batch: int = typer.Option(1, "--batch", min=1, rich_help_panel=MODEL, help="sequences per request"),
    wire_dtype: WireDtype = typer.Option(WireDtype.fp32, "--wire-dtype", rich_help_panel=LINK,
                                         help="the activation's dtype on the link"),
    verify: int = typer.Option(-1, "--verify", min=-1, metavar="K", rich_help_panel=MEASUREMENT,
                               help="check that the split after K blocks reproduces the unsplit model "
                                    "(-1: no check)"),
    as_json: bool = json_option("stages and cuts"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Show a model's stages, weights and the bytes crossing each possible cut."""
    from coinfer.models.loading import load_model
    from coinfer.models.summary import input_payload_bytes, summarize, verify_split
    from coinfer.reports.catalog import Inspection, SplitCheck, StageCut

    out = Output.of(quiet, verbose, as_json)
    with out.work(f"loading {model}"):
        loaded = load_model(model)
        ident = loaded.identity
        if verify > ident.num_blocks:
            raise UserInputError(f"--verify {verify} outside 0..{ident.num_blocks}")
        rows = summarize(loaded, batch, prompt_tokens, wire_dtype.value)
        check = None if verify < 0 else SplitCheck(blocks=verify, max_abs_diff=verify_split(loaded, verify))
    doc = Inspection(
        model=ident, batch=batch, prompt_tokens=prompt_tokens, wire_dtype=wire_dtype.value,
        input_payload_bytes=input_payload_bytes(batch, prompt_tokens), verify=check,
        stages=[StageCut(name=r.name, param_bytes=r.param_bytes, cut_shape=list(r.cut_shape),
                         prefill_payload_bytes=r.prefill_payload_bytes,
                         per_token_payload_bytes=r.per_token_payload_bytes) for r in rows],
    )
    if as_json:
        out.emit_json(doc)
        return
    _render(doc, out)


def _render(doc, out: Output) -> None:
    ident = doc.model
    out.print(
        f"[bold]{ident.name}[/]  family={ident.family} type={ident.model_type} blocks={ident.num_blocks} "
        f"hidden={ident.hidden_size} params={ident.num_parameters:,} weights: {ident.weights_label}"
    )
    table = Table(title=f"cuts (batch {doc.batch}, {doc.prompt_tokens} tokens, wire {doc.wire_dtype})")
    for col in ("stage", "weights MB", "cut after: shape", "prefill MB", "per token KB"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    table.add_row("(none: all on server)", "-", f"({doc.batch}, {doc.prompt_tokens}) int64",
                  _mb(doc.input_payload_bytes), "-")
    for row in doc.stages:
        per = "-" if row.per_token_payload_bytes is None else f"{row.per_token_payload_bytes / 1e3:,.3f}"
        shape = str(tuple(row.cut_shape)) if row.cut_shape else "nothing (all on device)"
        table.add_row(row.name, _mb(row.param_bytes), shape, _mb(row.prefill_payload_bytes), per)
    out.print(table)
    if doc.verify is not None:
        out.print(f"split after {doc.verify.blocks} blocks: max |split - unsplit| = {doc.verify.max_abs_diff:.3g}")
