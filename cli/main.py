"""Entry point: registers every command, runs the app, and turns bad input into one line and exit code 2."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from coinfer.openmp import configure_openmp_wait

configure_openmp_wait()  # before any command imports torch

# Every command module registers itself on the app when imported. The imports are explicit: a
# command module that fails to import must crash here, loudly, not vanish from the CLI.
from coinfer.cli import (  # noqa: E402
    channel_cmd,
    inspect_cmd,
    perplexity_cmd,
    plan_cmd,
    profile_cmd,
    prune_cmd,
    quantize_cmd,
    report_cmd,
    run_cmd,
    trace_cmd,
)
from coinfer.cli.app import app, err_console  # noqa: E402
from coinfer.errors import CoinferError  # noqa: E402

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, NoArgsIsHelpError
from typer import Abort  # noqa: E402

COMMAND_MODULES = (profile_cmd, prune_cmd, plan_cmd, run_cmd, inspect_cmd, perplexity_cmd, report_cmd, trace_cmd,
                   quantize_cmd, channel_cmd)
COMMANDS = ("profile", "prune", "plan", "run", "models", "inspect", "perplexity", "report", "show", "compare", "trace",
            "quantize", "channel")
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C: every ``finally`` and ``except
    BaseException`` on the way out runs, so temporary files and folders are removed and child
    processes stopped (by default SIGTERM ends the process on the spot and leaves them behind)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[list[bool]]:
    """While inside, SIGTERM raises :class:`Terminated` once (a second one during the clean-up is
    ignored, so the clean-up finishes). Yields a flag set when it fired."""
    fired = [False]
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield fired
        return

    def handler(signum: int, frame: object) -> None:
        if not fired[0]:
            fired[0] = True
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text: str) -> None:
    # A message that quotes a library's multi-line text still takes one line.
    err_console.print(f"error: {' '.join(text.split())}", markup=False, highlight=False, soft_wrap=True)


def _usage_hint(exc: ClickException, argv: list[str] | None) -> str:
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f" (see '{ctx.command_path} --help')"
    # Errors found while parsing (a missing value) carry no context: the command is the first word.
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if a in COMMANDS), None)
    return f" (see 'coinfer {command} --help')" if command else " (see 'coinfer --help')"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input (options or library errors) becomes one line on stderr and exit code 2.

    Ctrl-C and SIGTERM interrupt the command cleanly: nothing half-written stays (exit 130 or 143).
    """
    with _sigterm_raises() as terminated:
        rv = _run(argv)
    if terminated[0]:
        err_console.print("terminated", markup=False)
        return EXIT_TERMINATED
    return rv


def _run(argv: list[str] | None) -> int:
    try:
        rv = app(args=argv, prog_name="coinfer", standalone_mode=False)
    except KeyboardInterrupt:  # raised outside the command (typer turns those inside into exit 130)
        return EXIT_INTERRUPTED
    except CoinferError as exc:
        _one_line(str(exc))
        return EXIT_USER_ERROR
    except NoArgsIsHelpError as exc:  # the help was printed already (rich help prints as it formats)
        if exc.format_message().strip():
            exc.show()
        return 0
    except ClickException as exc:
        _one_line(" ".join(exc.format_message().split()) + _usage_hint(exc, argv))
        return EXIT_USER_ERROR
    except Abort:
        err_console.print("aborted", markup=False)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
