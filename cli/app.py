"""The typer application every command module registers on, and the consoles it prints with."""

from __future__ import annotations

import typer
from rich.console import Console, ConsoleDimensions

import coinfer

# Lines of piped or logged output are not wrapped: a table is as wide as its content needs.
PLAIN_WIDTH = 10_000


class AdaptiveConsole(Console):
    """A console as wide as the terminal, or unbounded when not writing to one.

    Rich's default is 80 columns for anything that is not a terminal, which cut tables in logs
    and pipes with ``…`` inside the numbers. ``COLUMNS`` still wins when set.
    """

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size on a terminal; otherwise ``COLUMNS`` or a plain, wide layout."""
        if self._width is None and not self.is_terminal and not (self._environ.get("COLUMNS") or "").isdigit():
            return ConsoleDimensions(PLAIN_WIDTH, super().size.height)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


app = typer.Typer(
    name="coinfer",
    help="Plan, prune, profile and run large AI models split between an edge device and a server.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = AdaptiveConsole()
err_console = AdaptiveConsole(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"coinfer {coinfer.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """coinfer: where to cut a model, how much to prune it, and what it costs over a link."""
