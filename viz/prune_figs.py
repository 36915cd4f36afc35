"""Pictures of a pruning report: quality, distortion against the bound and references, speed-up."""

from __future__ import annotations

import numpy as np

from coinfer.reports.prune import PruneReport
from coinfer.viz.style import BLACK, BLUE, GREEN, ORANGE, VERMILION, Picture, new_figure


def quality_series(rep: PruneReport) -> tuple[str, list[float], list[float]] | None:
    """(y label, ratios, values) of the task-level quality, or None when the report has none.

    Decoders: perplexity over dense on the evaluation text when measured, else on the calibration
    text, else next-token KL; encoders: the pooled-embedding cosine.
    """
    rs = rep.results
    if rep.model.is_decoder:
        if rep.dense_quality is not None and all(r.quality is not None for r in rs):
            dense = rep.dense_quality.perplexity
            return ("perplexity over dense on the evaluation text (x)", [r.requested_ratio for r in rs],
                    [r.quality.perplexity / dense for r in rs])
        if all(r.distortion.perplexity_after and r.distortion.perplexity_before for r in rs):
            vals = [r.distortion.perplexity_after / r.distortion.perplexity_before for r in rs]
            return "perplexity, pruned over original (x)", [r.requested_ratio for r in rs], vals
        if all(r.distortion.kl_next_token is not None for r in rs):
            return "next-token KL divergence (nats)", [r.requested_ratio for r in rs], [
                r.distortion.kl_next_token for r in rs]
        return None
    if all(r.distortion.pooled_cosine is not None for r in rs):
        return "pooled-embedding cosine to the original", [r.requested_ratio for r in rs], [
            r.distortion.pooled_cosine for r in rs]
    return None


def quality_picture(rep: PruneReport) -> Picture | None:
    """Task-level quality and output distortion against the pruning ratio."""
    q = quality_series(rep)
    if q is None:
        return None
    label, xs, ys = q
    fig, ax = new_figure(width_in=5.6, height_in=3.4)
    ax.plot(xs, ys, marker="o", color=BLUE, label=label.split(",")[0].split(" (")[0])
    ax.set_xlabel("requested pruning ratio")
    ax.set_ylabel(label)
    ax.set_title(f"quality against pruning ratio ({rep.importance} importance, scope {rep.scope})")
    ax2 = ax.twinx()
    ax2.plot(xs, [r.distortion.output_rel_mse for r in rep.results], marker="s", linestyle="--", color=ORANGE,
             label="output distortion D_y")
    ax2.set_ylabel("output distortion D_y (relative MSE)")
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", frameon=False)
    worst = ys[-1]
    return Picture("prune-quality", "Quality against pruning ratio",
                   f"{label} at each ratio (at {xs[-1]:g}: {worst:.4g}), with the output distortion D_y on the "
                   f"right axis; quality on "
                   + (rep.dense_quality.protocol.describe() if rep.dense_quality is not None and "evaluation" in label
                      else f"{rep.calibration.tokens} calibration tokens ({rep.calibration.source})") + ".",
                   fig)


def distortion_picture(rep: PruneReport) -> Picture:
    """D_y against D_w with the fitted bound; D_w against ratio with the Laplace references."""
    rs = rep.results
    dw = np.array([r.distortion.param_distortion for r in rs])
    dy = np.array([r.distortion.output_rel_mse for r in rs])
    lap = rep.laplace
    fig, axes = new_figure(ncols=3 if lap else 1, width_in=12 if lap else 4.6, height_in=3.6)
    axes = list(np.atleast_1d(axes))
    ax = axes[0]
    ax.plot(dw, dy, linestyle="none", marker="o", color=BLUE, label="measured (one per ratio)")
    for r, x, y in zip(rs, dw, dy, strict=True):
        ax.annotate(f"{r.requested_ratio:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    c = rep.empirical_c_fit if rep.empirical_c_fit is not None else rep.empirical_c
    if c is not None and len(dw):
        grid = np.linspace(0, max(dw.max(), 1e-12) * 1.1, 50)
        which = "C_fit" if rep.empirical_c_fit is not None else "C"
        ax.plot(grid, c * grid, color=VERMILION, linestyle="--", label=f"bound D_y = {which} x D_w ({which} = {c:.3g})")
    ax.set_xlabel("parameter distortion D_w (relative)")
    ax.set_ylabel("output distortion D_y (relative MSE)")
    ax.set_title("output against parameter distortion")
    ax.legend(loc="upper left", frameon=False)
    if lap:
        ax = axes[1]
        ax.plot([p.x for p in lap.magnitude_pruning_curve], [p.distortion for p in lap.magnitude_pruning_curve],
                color=GREEN, label="Laplace, magnitude pruning D(rho)/sigma^2")
        ax.plot([r.achieved_param_ratio for r in rs], dw, linestyle="none", marker="o", color=BLUE,
                label="measured D_w (structured)")
        ax.set_xlabel("fraction of parameters removed, rho")
        ax.set_ylabel("parameter distortion (relative to sigma^2)")
        ax.set_title(f"parameter distortion against ratio (lambda = {lap.lam:.3g})")
        ax.legend(loc="upper left", frameon=False)
        ax = axes[2]
        ax.semilogy([p.x for p in lap.shannon_lower_bound], [p.distortion for p in lap.shannon_lower_bound],
                    color=BLACK, label="Shannon lower bound (e/pi) 2^(-2R)")
        for i, (r, d) in enumerate(zip(rs, dw, strict=True)):
            if d > 0:
                ax.axhline(d, color=(ORANGE, VERMILION, BLUE, GREEN)[i % 4], linestyle=":",
                           label=f"D_w at ratio {r.requested_ratio:g}")
        ax.set_xlabel("rate R (bits per weight)")
        ax.set_ylabel("distortion (relative to sigma^2)")
        ax.set_title("rate-distortion reference")
        ax.legend(loc="lower left", frameon=False)
    bound = {True: "holds", False: "is violated", None: "was not checked"}[rep.bound_holds]
    return Picture("prune-distortion", "Output against parameter distortion, with the bound and references",
                   f"Each point is one pruning ratio. The fitted bound D_y <= C_fit x D_w {bound} on the held-out "
                   "windows" + ("; the Laplace curves use the scope's fitted lambda." if lap else "."), fig)


def speedup_picture(rep: PruneReport) -> Picture | None:
    """Measured (realised) against FLOPs-ratio (ideal) speed-up per ratio; None when none was measured."""
    rs = [r for r in rep.results if r.speedup is not None]
    if not rs:
        return None
    xs = [r.requested_ratio for r in rs]
    fig, ax = new_figure(width_in=5.6, height_in=3.4)
    ax.plot(xs, [r.speedup.prefill_flops_ratio for r in rs], color=BLUE, linestyle="--", marker="o",
            label="prefill, ideal (FLOPs before / after)")
    ax.plot(xs, [r.speedup.prefill_measured for r in rs], color=BLUE, marker="s", label="prefill, measured")
    if all(r.speedup.decode_measured is not None and r.speedup.decode_flops_ratio is not None for r in rs):
        ax.plot(xs, [r.speedup.decode_flops_ratio for r in rs], color=ORANGE, linestyle="--", marker="o",
                label="decode, ideal")
        ax.plot(xs, [r.speedup.decode_measured for r in rs], color=ORANGE, marker="s", label="decode, measured")
    ax.axhline(1.0, color=BLACK, linewidth=0.8)
    ax.set_xlabel("requested pruning ratio")
    ax.set_ylabel("speed-up over the original (x)")
    ax.set_title("realised against ideal speed-up")
    ax.legend(loc="upper left", frameon=False)
    last = rs[-1].speedup
    ms = last.measured_stages
    over = f"{ms[0]}..{ms[-1]}" if len(ms) > 1 else (ms[0] if ms else "the scope")
    return Picture("prune-speedup", "Realised against ideal speed-up",
                   f"Original and pruned timed interleaved over {over} "
                   f"({last.prefill_tokens} tokens, {last.repeats} repeats). At ratio {rs[-1].requested_ratio:g} the "
                   f"prefill is {last.prefill_measured:.2f}x faster of an ideal {last.prefill_flops_ratio:.2f}x "
                   f"({last.realised_over_ideal:.0%} realised).", fig)
