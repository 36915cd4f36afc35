"""Entry point: runs the typer app and maps CoinferError to one line and exit code 2."""

from __future__ import annotations

import sys

from coinfer.openmp import configure_openmp_wait

configure_openmp_wait()  # before any command imports torch

from coinfer.cli import inspect_cmd  # noqa: E402, F401  (registers commands)
from coinfer.cli.app import app, err_console  # noqa: E402
from coinfer.errors import CoinferError  # noqa: E402

EXIT_USER_ERROR = 2


def _register_optional() -> None:
    # Each stage's command lives in its own module; import them so they register on the app.
    import importlib

    for name in ("profile_cmd", "prune_cmd", "plan_cmd", "run_cmd", "perplexity_cmd", "channel_cmd"):
        try:
            importlib.import_module(f"coinfer.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"coinfer.cli.{name}":
                raise


_register_optional()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="coinfer")
    except CoinferError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
