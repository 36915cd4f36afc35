"""`coinfer report` as library calls: load and check the files, draw, write the folder atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from coinfer.errors import UserInputError
from coinfer.reports.common import ModelIdentity
from coinfer.viz.documents import Loaded, check_one_model, load_any, model_of
from coinfer.viz.page import to_html, to_markdown
from coinfer.viz.sections import Section, build_sections
from coinfer.viz.style import house_style, render_bytes

HTML_NAME = "report.html"
MD_NAME = "report.md"
FIG_DIR = "figures"


@dataclass
class Report:
    """Everything the page shows, pictures still as matplotlib figures."""

    title: str
    model: ModelIdentity
    items: list[Loaded]
    sections: list[Section]

    @property
    def pictures(self):
        """Every picture in page order."""
        return [p for s in self.sections for p in s.pictures]


def build_report(paths: list[str | os.PathLike[str]]) -> Report:
    """Load coinfer files of any kind and draw what they say.

    Raises:
        UserInputError: No file given, or a file is missing.
        SchemaError: A file of a kind the report cannot draw, an unknown version, bad content, or
            files about different models.
    """
    if not paths:
        raise UserInputError("give at least one coinfer file (profile, prune report, plan or run result)")
    items: list[Loaded] = []
    for p in paths:
        item = load_any(p)
        if all(item.sha256 != i.sha256 for i in items):  # the same file twice is drawn once
            items.append(item)
    check_one_model(items)
    model = model_of(items[0].doc)
    with house_style():
        sections = build_sections(items)
    return Report(f"coinfer report: {model.name}", model, items, sections)


def check_output_dir(out: str | os.PathLike[str], force: bool) -> Path:
    """Refuse, before any work, a destination that is a file, non-empty without ``force``, or unwritable.

    Raises:
        UserInputError: With the reason in one line.
    """
    dest = Path(out)
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.exists() and not dest.is_dir():
        raise UserInputError(f"cannot write the report to {dest}: it is a file")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UserInputError(f"{dest} is not empty: give --force to replace it")
    if not parent.is_dir():
        raise UserInputError(f"cannot write the report to {dest}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserInputError(f"cannot write the report to {dest}: folder {parent} is not writable")
    return dest


def _names(report: Report) -> dict[int, str]:
    used: set[str] = set()
    out = {}
    for pic in report.pictures:
        stem, k = pic.name, 2
        while stem in used:
            stem, k = f"{pic.name}-{k}", k + 1
        used.add(stem)
        out[id(pic)] = stem
    return out


def _fill(report: Report, folder: Path) -> None:
    figs = folder / FIG_DIR
    figs.mkdir()
    svgs: dict[int, tuple[str, bytes]] = {}
    names = _names(report)
    for pic in report.pictures:
        stem = names[id(pic)]
        (figs / f"{stem}.png").write_bytes(render_bytes(pic.figure, "png"))
        svg = render_bytes(pic.figure, "svg")
        (figs / f"{stem}.svg").write_bytes(svg)
        svgs[id(pic)] = (stem, svg)
    (folder / HTML_NAME).write_text(to_html(report.title, report.model, report.items, report.sections, svgs),
                                    encoding="utf-8")
    (folder / MD_NAME).write_text(to_markdown(report.title, report.model, report.items, report.sections, svgs, FIG_DIR),
                                  encoding="utf-8")


def write_report(report: Report, out: str | os.PathLike[str], force: bool = False) -> Path:
    """Write the page, its Markdown twin and the pictures into ``out``, all or nothing.

    Everything is written to a temporary folder beside ``out`` and renamed into place, so a reader
    sees the old folder or the new one; a failure leaves the old one intact.

    Returns:
        The path of the HTML page.
    """
    dest = check_output_dir(out, force)
    parent = dest.parent if str(dest.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        _fill(report, tmp)
        os.chmod(tmp, 0o755)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            os.replace(dest, old / "previous")
        try:
            os.replace(tmp, dest)
        except OSError:
            if old is not None:
                os.replace(old / "previous", dest)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest / HTML_NAME
