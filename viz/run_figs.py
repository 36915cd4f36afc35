"""Pictures of a run: measured against predicted latency per phase and term, with the error."""

from __future__ import annotations

import numpy as np

from coinfer.reports.run import RunResult
from coinfer.viz.style import BLUE, ORANGE, Picture, new_figure

TERMS = ("device_compute", "transfer", "server_compute", "end_to_end")


def phases(run: RunResult) -> list[tuple[str, object]]:
    """(name, PhaseTiming) of the phases the run has."""
    out = [("prefill", run.prefill), ("per token", run.per_token), ("whole request", run.total)]
    return [(n, p) for n, p in out if p is not None]


def predicted_picture(run: RunResult) -> Picture:
    """Grouped bars per phase: measured and predicted for each cost-model term, error above."""
    ph = phases(run)
    fig, axes = new_figure(ncols=len(ph), width_in=3.8 * len(ph), height_in=3.6)
    axes = list(np.atleast_1d(axes))
    x = np.arange(len(TERMS))
    for ax, (name, timing) in zip(axes, ph, strict=True):
        ms = [getattr(timing, t) for t in TERMS]
        meas = [m.measured_ms for m in ms]
        pred = [np.nan if m.predicted_ms is None else m.predicted_ms for m in ms]
        ax.bar(x - 0.2, meas, 0.4, color=BLUE, label="measured")
        ax.bar(x + 0.2, pred, 0.4, color=ORANGE, hatch="//", edgecolor="white", linewidth=0.3, label="predicted")
        for i, m in enumerate(ms):
            if m.error_pct is not None:
                top = max(m.measured_ms, m.predicted_ms or 0)
                ax.annotate(f"{m.error_pct:+.0f}%", (x[i], top), textcoords="offset points", xytext=(0, 3),
                            ha="center", fontsize=7)
        ax.set_xticks(x, [t.replace("_", " ") for t in TERMS], rotation=30, ha="right")
        ax.set_title(name)
        ax.set_ylabel("latency (ms, median)")
        ax.margins(y=0.15)
    axes[0].legend(loc="upper left", frameon=False)
    e2e = run.total.end_to_end
    err = "" if e2e.error_pct is None else f" ({e2e.error_pct:+.1f}% against the prediction)"
    return Picture("run-predicted", "Predicted against measured, per phase",
                   f"Cut {run.cut} ({run.cut_name}), {run.repeats} measured request(s), medians; whole request "
                   f"{e2e.measured_ms:,.1f} ms measured{err}. Error = (measured - predicted) / predicted; predictions: "
                   f"{run.prediction_source or 'none'}.", fig)
