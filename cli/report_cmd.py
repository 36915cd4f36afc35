"""`coinfer report`, `coinfer show` and `coinfer compare`: read coinfer files back, draw and compare them."""

from __future__ import annotations

import importlib
from pathlib import Path

import typer
from rich import box
from rich.table import Table as RichTable

from coinfer.cli.common import OUTPUT, Output, command, json_option, quiet_option, verbose_option

# The command that wrote each kind of file, whose `render(document, out)` `show` reuses.
_RENDERERS = {"profile": "profile_cmd", "prune_report": "prune_cmd", "plan": "plan_cmd", "run_result": "run_cmd",
              "robustness_profile": "channel_cmd", "precision_report": "quantize_cmd",
              "perplexity_report": "perplexity_cmd"}


@command("report")
def report_cmd(
    files: list[Path] = typer.Argument(..., help="coinfer files about one model: profiles, prune reports, plans, "
                                                  "run results"),
    output: Path = typer.Option(Path("report"), "--output", "-o", metavar="FOLDER", rich_help_panel=OUTPUT,
                                help="folder for report.html, report.md and figures/"),
    force: bool = typer.Option(False, "--force", rich_help_panel=OUTPUT, help="replace a non-empty output folder"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Draw what coinfer files say: one self-contained HTML page, a Markdown twin and PNG/SVG pictures."""
    from coinfer.viz.report import build_report, check_output_dir, write_report

    out = Output.of(quiet, verbose)
    check_output_dir(output, force)
    with out.work(f"drawing {len(files)} file(s)"):
        report = build_report(files)
        page = write_report(report, output, force=force)
    out.print(f"{len(report.pictures)} pictures from {len(report.items)} files", highlight=False)
    out.wrote(page)
    out.wrote(page.with_name("report.md"))


@command("show")
def show_cmd(
    file: Path = typer.Argument(..., help="any coinfer file"),
    as_json: bool = json_option("document"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Print a coinfer file as the tables the command that wrote it printed."""
    from coinfer.errors import SchemaError
    from coinfer.viz.documents import load_any

    out = Output.of(quiet, verbose, as_json)
    item = load_any(file)
    if as_json:
        out.emit_json(item.doc)
        return
    if item.kind not in _RENDERERS:
        raise SchemaError(f"{file}: no table view for {item.kind!r} files yet (coinfer report draws them)")
    importlib.import_module(f"coinfer.cli.{_RENDERERS[item.kind]}").render(item.doc, out)


@command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="first file (A)"),
    b: Path = typer.Argument(..., help="second file of the same kind (B)"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Set two coinfer files of one kind side by side (profiles per stage, prune reports per ratio)."""
    from coinfer.viz.compare import compare
    from coinfer.viz.documents import load_any

    out = Output.of(quiet, verbose)
    cmp = compare(load_any(a), load_any(b))
    out.print(cmp.title, markup=False, highlight=False, soft_wrap=True)
    for t in cmp.tables:
        rt = RichTable(title=t.caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for i, h in enumerate(t.header):
            rt.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for row in t.rows:
            rt.add_row(*row)
        out.print(rt)
    out.notes(cmp.notes)
