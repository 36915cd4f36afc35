"""`coinfer report`, `coinfer show` and `coinfer compare`: read coinfer files back, draw and compare them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table as RichTable

from coinfer.cli.app import app, console


@app.command("report")
def report_cmd(
    files: list[Path] = typer.Argument(..., help="coinfer files: profiles, prune reports, plans, run results"),
    output: Path = typer.Option(Path("report"), "--output", "-o", help="folder for report.html, report.md, figures/"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output folder"),
) -> None:
    """Draw what coinfer files say: one self-contained HTML page, a Markdown twin and PNG/SVG pictures."""
    from coinfer.viz.report import build_report, check_output_dir, write_report

    check_output_dir(output, force)
    report = build_report(files)
    page = write_report(report, output, force=force)
    console.print(f"{len(report.pictures)} pictures from {len(report.items)} files", highlight=False)
    console.print(f"wrote {page}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {page.with_name('report.md')}", markup=False, highlight=False, soft_wrap=True)


@app.command("show")
def show_cmd(file: Path = typer.Argument(..., help="any coinfer file")) -> None:
    """Print a coinfer file as the tables the command that wrote it printed."""
    import importlib

    from coinfer.errors import SchemaError
    from coinfer.viz.documents import load_any

    item = load_any(file)
    module = {"profile": "profile_cmd", "prune_report": "prune_cmd", "plan": "plan_cmd", "run_result": "run_cmd"}
    if item.kind not in module:
        raise SchemaError(f"{file}: no table view for {item.kind!r} files yet (coinfer report draws them)")
    importlib.import_module(f"coinfer.cli.{module[item.kind]}").render(item.doc)


@app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., help="first file (A)"),
    b: Path = typer.Argument(..., help="second file of the same kind (B)"),
) -> None:
    """Set two coinfer files of one kind side by side (profiles per stage, prune reports per ratio)."""
    from coinfer.viz.compare import compare
    from coinfer.viz.documents import load_any

    cmp = compare(load_any(a), load_any(b))
    console.print(cmp.title, markup=False, highlight=False, soft_wrap=True)
    for t in cmp.tables:
        rt = RichTable(title=t.caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for i, h in enumerate(t.header):
            rt.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
        for row in t.rows:
            rt.add_row(*row)
        console.print(rt)
    for n in cmp.notes:
        console.print(f"note: {n}", markup=False, highlight=False)
