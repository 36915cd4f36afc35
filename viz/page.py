"""The page: one self-contained HTML file (pictures embedded) and its Markdown twin."""

from __future__ import annotations

import base64
import html
import re

from coinfer.reports.common import ModelIdentity
from coinfer.viz.documents import Loaded
from coinfer.viz.sections import Section
from coinfer.viz.tables import Table

CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; border-bottom: 1px solid #ccc; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #444; } dt { font-weight: 600; } dd { margin: 0 0 0.4rem 1.2rem; }
.notes { font-size: 0.85rem; color: #555; } code { font-size: 0.85rem; }
"""


def model_line(m: ModelIdentity) -> str:
    """The model in one line: name, family, size, weights real or random, config hash."""
    seed = f" (seed {m.weights_seed})" if m.weights == "random" and m.weights_seed is not None else ""
    return (f"{m.name} ({m.family} / {m.model_type}, {m.num_blocks} blocks, hidden {m.hidden_size}, "
            f"{m.num_parameters:,} parameters), weights: {m.weights_label}{seed}, config sha256 {m.config_sha256[:12]}")


def files_table(items: list[Loaded]) -> Table:
    """Which files the report reads, with their hash and when and by what they were written."""
    return Table("files", ["kind", "file", "sha256", "written (UTC)", "coinfer"], [
        [i.kind, str(i.path), i.sha256[:12], i.doc.created_utc, i.doc.coinfer_version] for i in items])


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


_NUMBER = re.compile(r"^[*~+-]?[0-9][0-9,.]*(e[+-]?[0-9]+)?( ± [0-9,.]+)?[*%x]?( \(.*\))?$")


def _td(cell: str) -> str:
    cls = " class='n'" if _NUMBER.match(cell) else ""
    return f"<td{cls}>{_esc(cell)}</td>"


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in t.rows)
    return f"<table><caption>{_esc(t.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(title: str, model: ModelIdentity, items: list[Loaded], sections: list[Section],
            images: dict[int, tuple[str, bytes]]) -> str:
    """The page as one HTML document; ``images`` maps id(picture) to (file stem, SVG bytes)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1><p><strong>Model:</strong> {_esc(model_line(model))}</p>",
             _html_table(files_table(items))]
    n = 0
    for sec in sections:
        parts.append(f"<section><h2>{_esc(sec.title)}</h2><p class='notes'>from {_esc(', '.join(sec.sources))}</p>")
        if sec.facts:
            parts.append("<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in sec.facts) + "</dl>")
        for pic in sec.pictures:
            n += 1
            stem, svg = images[id(pic)]
            uri = "data:image/svg+xml;base64," + base64.b64encode(svg).decode("ascii")
            parts.append(f"<figure id='{_esc(stem)}'><img src='{uri}' alt='{_esc(pic.title)}'>"
                         f"<figcaption><strong>Figure {n}: {_esc(pic.title)}.</strong> {_esc(pic.caption)}</figcaption>"
                         "</figure>")
        parts += [_html_table(t) for t in sec.tables]
        if sec.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{_esc(x)}</li>" for x in sec.notes) + "</ul>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> str:
    lines = [f"*{t.caption}*", "", "| " + " | ".join(_md_cell(h) or " " for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


def to_markdown(title: str, model: ModelIdentity, items: list[Loaded], sections: list[Section],
                images: dict[int, tuple[str, bytes]], folder: str) -> str:
    """The Markdown twin: the same text, pictures as PNG files in ``folder`` (SVG beside them)."""
    out = [f"# {title}", "", f"**Model:** {model_line(model)}", "", _md_table(files_table(items))]
    n = 0
    for sec in sections:
        out += [f"## {sec.title}", "", f"from {', '.join(sec.sources)}", ""]
        out += [f"- **{k}:** {v}" for k, v in sec.facts]
        out.append("")
        for pic in sec.pictures:
            n += 1
            stem = images[id(pic)][0]
            out += [f"![{pic.title}]({folder}/{stem}.png)", "",
                    f"**Figure {n}: {pic.title}.** {pic.caption} ([SVG]({folder}/{stem}.svg))", ""]
        out += [_md_table(t) for t in sec.tables]
        if sec.notes:
            out += [f"- {x}" for x in sec.notes] + [""]
    return "\n".join(out).rstrip("\n") + "\n"
