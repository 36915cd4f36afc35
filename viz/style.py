"""One look for every picture: a colour-blind-safe palette, paper-sized fonts, PNG and SVG output."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display anywhere; set before anything draws

from matplotlib.figure import Figure  # noqa: E402

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, YELLOW, BLACK = OKABE_ITO
HATCHES = ("", "//", "..", "xx")

RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "svg.fonttype": "none",  # text stays text: small files, selectable in the page
    "svg.hashsalt": "coinfer",  # stable element ids: the same input gives the same SVG
    "path.simplify": True,
}


@dataclass
class Picture:
    """One figure of the report, with the name its files get and the sentence under it."""

    name: str
    title: str
    caption: str
    figure: Figure


@contextmanager
def house_style() -> Iterator[None]:
    """Draw and save inside this block so every figure gets the same look."""
    with matplotlib.rc_context(RC):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, width_in: float = 6.4, height_in: float = 3.4):
    """A figure (not registered with pyplot, so nothing global leaks) and its axes, squeezed."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def render_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (no timestamp, so output is reproducible)."""
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {"Software": None}
    with house_style():
        fig.savefig(buf, format=fmt, metadata=meta)
    return buf.getvalue()
