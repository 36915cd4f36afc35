"""What every command shares: option names, defaults, help panels, output modes and old spellings.

One vocabulary across commands:

* ``--model/-m`` (default :data:`DEFAULT_MODEL`), ``--prompt-tokens`` (default
  :data:`DEFAULT_PROMPT_TOKENS`), ``--threads`` (default: physical cores), ``--decode-steps``
  (decoding steps after the prefill; the prefill already yields the first token, so m steps give
  m + 1 generated tokens);
* ``--device`` is the compute device (``profile``); profile files are ``--device-profile`` and
  ``--server-profile``; ``--server`` is a server's HOST:PORT (``run``); a pruning report is
  ``--prune-report``;
* ``-o/--output`` writes the file, ``--json`` prints the same document on stdout and nothing
  else; ``-q`` hides notes and tables, ``-v`` shows every note.

Old spellings keep working for one version through :func:`command` and print one line on stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import typer
from typer.core import TyperCommand

from coinfer import vocab
from coinfer.cli.app import app, console, err_console
from coinfer.vocab import (  # noqa: F401  (re-exported)
    DEFAULT_DECODE_STEPS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT_TOKENS,
    MAX_CONTEXT_TOKENS,
)

REMOVED_IN = "0.3"
# More threads than any machine has cores; beyond it OpenMP would try to start millions.
MAX_THREADS = 1024

# Help panels, the same names in every command.
MODEL = "Model"
MEASUREMENT = "Measurement"
LINK = "Link"
SEARCH = "Search"
BUDGETS = "Budgets"
CHAIN = "Chain"
ROLES = "Roles and addresses"
CHANNEL = "Channel"
OUTPUT = "Output"


class Device(StrEnum):
    """Compute device of a measurement."""

    cpu = "cpu"
    cuda = "cuda"


class Dtype(StrEnum):
    """Weights and activations of a measurement."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


# Choices shown as choices in --help, built from their one home in coinfer.vocab.
WireDtype = StrEnum("WireDtype", {d: d for d in vocab.WIRE_DTYPES})  # the activation's dtype on the link
Precision = StrEnum("Precision", {p: p for p in vocab.WEIGHT_PRECISIONS})  # the device shard's weights
EngineName = StrEnum("EngineName", {e: e for e in vocab.ENGINES})  # what runs the device shard


# -- old spellings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Renamed:
    """An old option spelling and its replacement.

    Attributes:
        new: The option that replaces it.
        unit: The unit the old option's bare number was in ('W' for ``--power-w 8``), appended so
            the new option, which takes a quantity, reads the same value.
    """

    new: str
    unit: str = ""


def _rewrite(command: str, args: Sequence[str], renamed: dict[str, Renamed]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        r = renamed.get(name)
        if r is None:
            out.append(arg)
        else:
            err_console.print(f"warning: coinfer {command} {name} is deprecated, use {r.new} (the old spelling goes "
                              f"in coinfer {REMOVED_IN})", markup=False, highlight=False, soft_wrap=True)
            if eq:
                out.append(f"{r.new}={value}{r.unit}")
            elif r.unit and i + 1 < len(args):
                out += [r.new, f"{args[i + 1]}{r.unit}"]
                i += 1
            else:
                out.append(r.new)
        i += 1
    return out


def command(name: str, renamed: dict[str, Renamed] | None = None) -> Callable[[Any], Any]:
    """Register a command on the app; ``renamed`` old spellings still work, with one warning line each."""
    table = dict(renamed or {})

    class _Command(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            return super().parse_args(ctx, _rewrite(name, args, table))

    epilog = None
    if table:
        olds = ", ".join(f"{old} → {r.new}" for old, r in table.items())
        epilog = f"Renamed (the old spellings work until coinfer {REMOVED_IN}): {olds}."
    return app.command(name, cls=_Command, epilog=epilog)


# -- shared options -----------------------------------------------------------------------------

def model_option(default: str | None = DEFAULT_MODEL, help: str | None = None) -> Any:
    """``--model/-m``."""
    return typer.Option(default, "--model", "-m", rich_help_panel=MODEL,
                        help=help or "minilm (real weights), a preset (see 'coinfer models') or a local Hugging Face folder")


def prompt_tokens_option(default: int | None = DEFAULT_PROMPT_TOKENS, help: str = "prompt length in tokens",
                         minimum: int = 1) -> Any:
    """``--prompt-tokens``: the one name for a prompt's length."""
    return typer.Option(default, "--prompt-tokens", min=minimum, max=MAX_CONTEXT_TOKENS, rich_help_panel=MODEL,
                        help=help)


def decode_steps_option(help: str) -> Any:
    """``--decode-steps``: steps after the prefill (m steps give m + 1 generated tokens)."""
    return typer.Option(None, "--decode-steps", min=0, max=MAX_CONTEXT_TOKENS, rich_help_panel=MODEL, help=help)


def threads_option() -> Any:
    """``--threads`` (default: physical cores)."""
    return typer.Option(None, "--threads", min=1, max=MAX_THREADS, rich_help_panel=MEASUREMENT,
                        help="CPU threads \\[default: the physical cores this process may use]")


def output_option(what: str, default: str | None = None) -> Any:
    """``-o/--output``."""
    return typer.Option(default, "--output", "-o", metavar="FILE", rich_help_panel=OUTPUT,
                        help=f"write the {what} (JSON) here")


def json_option(what: str) -> Any:
    """``--json``: the document on stdout and nothing else."""
    return typer.Option(False, "--json", rich_help_panel=OUTPUT,
                        help=f"print the {what} as JSON on stdout instead of tables (nothing else goes to stdout)")


def quiet_option() -> Any:
    """``-q/--quiet``."""
    return typer.Option(False, "--quiet", "-q", rich_help_panel=OUTPUT, help="no notes, tables or progress")


def verbose_option() -> Any:
    """``-v/--verbose``."""
    return typer.Option(False, "--verbose", "-v", rich_help_panel=OUTPUT, help="every note, in full")


def physical_cores() -> int:
    """The default of every ``--threads``: physical cores this process may use."""
    from coinfer.profiler.hardware import physical_cores as cores

    return cores()


def check_outputs(files: Sequence[Any | None] = (), folders: dict[str, Any | None] | None = None) -> None:
    """Every command's first step: each file it will write (``-o``) and folder it will create
    (``--export``) is writable, so no work is done for output that cannot be kept.

    Args:
        files: Output files (None entries skipped), checked as ``-o``.
        folders: Option name -> folder (None entries skipped).

    Raises:
        CoinferError: One line naming the option and the reason.
    """
    from coinfer.reports.io import check_writable, check_writable_folder

    for f in files:
        if f is not None:
            check_writable(f, "-o")
    for option, folder in (folders or {}).items():
        if folder is not None:
            check_writable_folder(folder, option)


# -- output modes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Output:
    """How a command prints: quiet, normal or verbose; tables and notes, or one JSON document."""

    quiet: bool = False
    verbose: bool = False
    as_json: bool = False

    @classmethod
    def of(cls, quiet: bool, verbose: bool, as_json: bool = False) -> Output:
        """Check the combination and build the mode.

        Raises:
            typer.BadParameter: Both -q and -v.
        """
        if quiet and verbose:
            raise typer.BadParameter("give -q or -v, not both", param_hint="-q/-v")
        return cls(quiet, verbose, as_json)

    @property
    def tables(self) -> bool:
        """Print tables and summary lines."""
        return not (self.quiet or self.as_json)

    @property
    def progress(self) -> bool:
        """Show progress (on a terminal only; never in pipes or logs)."""
        return not (self.quiet or self.as_json) and err_console.is_terminal

    def print(self, *objects: Any, **kw: Any) -> None:
        """Print on stdout unless quiet or JSON."""
        if self.tables:
            console.print(*objects, **kw)

    def notes(self, notes: Sequence[str], method: Callable[[str], bool] = lambda n: False, prefix: str = "note: ") -> None:
        """Notes: by default those about this run; ``method`` notes (how things are modelled) with -v."""
        if not self.tables:
            return
        shown = list(notes) if self.verbose else [n for n in notes if not method(n)]
        for n in shown:
            console.print(f"{prefix}{n}", markup=False, highlight=False)
        hidden = len(notes) - len(shown)
        if hidden:
            console.print(f"({hidden} more note{'s' if hidden > 1 else ''} on method: -v shows them; they are in "
                          "the JSON too)", markup=False, highlight=False)

    def wrote(self, path: Any) -> None:
        """Say which file was written (not with -q or --json)."""
        if self.tables and path is not None:
            console.print(f"wrote {path}", markup=False, highlight=False)

    def emit_json(self, document: Any) -> None:
        """Print one document as JSON on stdout."""
        from coinfer.reports.io import to_json

        sys.stdout.write(to_json(document))
        sys.stdout.flush()

    @contextlib.contextmanager
    def work(self, description: str, spinner: bool = True) -> Iterator[Callable[[str], None]]:
        """Run long work: a spinner with the elapsed time on a terminal's stderr, nothing when piped.

        With ``--json`` anything the work prints on stdout (an exporter's chatter) goes to stderr,
        so stdout holds the document only.

        Args:
            description: The status text to start with.
            spinner: False when the caller shows its own progress bar (one live display at a time).

        Yields:
            A function that replaces the status text.
        """
        quiet_stdout = contextlib.redirect_stdout(sys.stderr) if self.as_json else contextlib.nullcontext()
        with quiet_stdout:
            if not (self.progress and spinner):
                yield lambda text: None
                return
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console,
                          transient=True) as bar:
                task = bar.add_task(description, total=None)
                yield lambda text: bar.update(task, description=text)
