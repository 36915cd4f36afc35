"""A plain table of strings: what the page, `coinfer compare` and the Markdown twin print."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Table:
    """A small table of the numbers a picture shows."""

    caption: str
    header: list[str]
    rows: list[list[str]]
