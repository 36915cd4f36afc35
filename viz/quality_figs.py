"""Pictures of quality files: a robustness profile (quality against channel severity per cut) and a
precision report (speed-up against quality cost per precision and engine)."""

from __future__ import annotations

from coinfer.reports.precision import PrecisionReport
from coinfer.reports.robustness import RobustnessPoint, RobustnessProfile
from coinfer.viz.style import BLACK, BLUE, GREEN, ORANGE, VERMILION, Picture, new_figure

_COLOURS = (BLUE, ORANGE, GREEN, VERMILION, BLACK)


def _metric(p: RobustnessProfile, pt: RobustnessPoint):
    return pt.perplexity_ratio if p.metric == "perplexity_ratio" else pt.pooled_cosine


def severity_picture(p: RobustnessProfile, impairment: str) -> Picture | None:
    """Quality (mean and confidence band over draws) against erasure probability or SNR, one line per cut.

    Returns None when the profile holds no point of that impairment.
    """
    pts = [pt for pt in p.points if pt.condition.impairment == impairment and _metric(p, pt) is not None]
    if not pts:
        return None
    wire = pts[0].condition.wire_dtype
    pts = [pt for pt in pts if pt.condition.wire_dtype == wire]
    fig, ax = new_figure(width_in=5.8, height_in=3.6)
    for i, cut in enumerate(sorted({pt.cut for pt in pts})):
        row = sorted((pt for pt in pts if pt.cut == cut),
                     key=lambda q: q.condition.erasure_p if impairment == "erasure" else -(q.condition.snr_db or 0))
        xs = [q.condition.erasure_p if impairment == "erasure" else q.condition.snr_db for q in row]
        est = [_metric(p, q) for q in row]
        colour = _COLOURS[i % len(_COLOURS)]
        ax.plot(xs, [e.mean for e in est], marker="o", color=colour, label=f"cut {cut} ({row[0].cut_name})")
        ax.fill_between(xs, [e.ci_low for e in est], [e.ci_high for e in est], color=colour, alpha=0.15, linewidth=0)
    decoder = p.metric == "perplexity_ratio"
    if decoder:
        ax.set_yscale("log")
    ax.set_xlabel("erasure probability p" if impairment == "erasure" else "SNR (dB)")
    if impairment != "erasure":
        ax.invert_xaxis()  # worse channels to the right, as for erasure
    ax.set_ylabel("perplexity over the clean model (x)" if decoder else "pooled cosine to the clean model")
    ax.set_title(f"{p.model.name}: quality against the channel ({wire} wire)")
    ax.legend(loc="best", frameon=False, fontsize=7)
    what = "element erasure" if impairment == "erasure" else "white Gaussian noise"
    return Picture(f"channel-{impairment}", f"Quality against {what}, per cut",
                   f"Mean over draws with the {p.confidence:.0%} confidence band; the activation crossing each cut is "
                   f"sent in {wire} and corrupted on the way.", fig)


def precision_picture(rep: PrecisionReport) -> Picture | None:
    """Decode (or prefill) speed-up against the quality cost, one point per precision, engine and ratio."""
    rows = [r for r in rep.results if r.supported and r.quality is not None]
    if not rows:
        return None
    decoder = rep.model.is_decoder
    fig, ax = new_figure(width_in=5.6, height_in=3.6)
    for i, engine in enumerate(sorted({r.engine for r in rows})):
        sel = [r for r in rows if r.engine == engine]
        xs = [(r.quality.perplexity_ratio if decoder else r.quality.pooled_cosine) for r in sel]
        ys = [(r.decode_speedup if decoder else r.prefill_speedup) for r in sel]
        keep = [(x, y, r) for x, y, r in zip(xs, ys, sel, strict=True) if x is not None and y is not None]
        ax.scatter([k[0] for k in keep], [k[1] for k in keep], color=_COLOURS[i % len(_COLOURS)], label=engine)
        for x, y, r in keep:
            ax.annotate(f"{r.precision} r{r.pruning_ratio:g}", (x, y), textcoords="offset points", xytext=(3, 3),
                        fontsize=7)
    ax.axhline(1.0, color=BLACK, linewidth=0.6)
    ax.set_xlabel("perplexity over fp32 (x)" if decoder else "pooled cosine to fp32")
    ax.set_ylabel(("decode" if decoder else "prefill") + " speed-up over torch fp32")
    ax.set_title(f"{rep.model.name}: weight precision, speed against quality")
    ax.legend(loc="best", frameon=False)
    return Picture("precision", "Weight precision: speed-up against quality cost",
                   f"Each point a precision (and pruning ratio r) of the {rep.scope} scope, timed against torch fp32 "
                   f"unpruned, interleaved ({rep.repeats} repeats, {rep.threads} threads).", fig)
