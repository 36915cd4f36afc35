"""The typer application every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

import coinfer

app = typer.Typer(
    name="coinfer",
    help="Plan, prune, profile and run large AI models split between an edge device and a server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"coinfer {coinfer.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """coinfer: where to cut a model, how much to prune it, and what it costs over a link."""
