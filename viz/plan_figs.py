"""Pictures of a plan: cost against the cut at several rates, and the best cut against the rate."""

from __future__ import annotations

import numpy as np

from coinfer.planner.cost import cut_name
from coinfer.reports.plan import Plan
from coinfer.units import fmt_rate
from coinfer.viz.plan_curves import CutCurve
from coinfer.viz.style import BLACK, OKABE_ITO, VERMILION, Picture, new_figure

CHOSEN_LABEL = "chosen cut"


def _cut_ticks(ax, num_blocks: int, cuts: list[int], axis: str = "x") -> None:
    labels = [f"{c}: {cut_name(c, num_blocks)}" for c in cuts]
    if axis == "x":
        ax.set_xticks(cuts, labels, rotation=45, ha="right")
    else:
        ax.set_yticks(cuts, labels)


def cuts_picture(plan: Plan, curves: list[CutCurve]) -> Picture:
    """End-to-end latency and device energy against the cut, one line per link rate, chosen cut marked."""
    best = plan.best
    energy = any(any(e > 0 for e in c.energy_j) for c in curves)
    fig, axes = new_figure(ncols=2 if energy else 1, width_in=11 if energy else 6, height_in=3.9)
    axes = list(np.atleast_1d(axes))
    others = [c for c in curves if not c.from_file]
    colours = {id(c): OKABE_ITO[i % (len(OKABE_ITO) - 1)] for i, c in enumerate(others)}
    panels = [(axes[0], "latency_ms", "end-to-end latency per request (ms)", best.total_latency_ms)]
    if energy:
        panels.append((axes[1], "energy_j", "device energy per request (J)", best.energy.total_j))
    for ax, field, ylabel, best_y in panels:
        for c in curves:
            label = f"{fmt_rate(c.rate_bps)}" + (" (the plan's link)" if c.from_file else "")
            ax.plot(c.cuts, getattr(c, field), marker="o", markersize=3,
                    color=BLACK if c.from_file else colours[id(c)], linewidth=2 if c.from_file else 1.2,
                    label=label)
        ax.plot([best.cut], [best_y], linestyle="none", marker="*", markersize=14, color=VERMILION,
                markeredgecolor=BLACK, label=CHOSEN_LABEL, zorder=5)
        ax.axvline(best.cut, color=VERMILION, linestyle=":", linewidth=1)
        vals = [v for c in curves for v in getattr(c, field) if v > 0]
        if vals and max(vals) / min(vals) > 50:
            ax.set_yscale("log")
        ax.set_xlabel("cut: stages on the device")
        ax.set_ylabel(ylabel)
        _cut_ticks(ax, plan.model.num_blocks, curves[0].cuts)
    axes[0].set_title(f"latency, {plan.prompt_tokens} prompt + {plan.new_tokens} new tokens, RTT {plan.link.rtt_ms:g} ms")
    axes[0].legend(title="uplink rate", loc="best", frameon=False)
    if energy:
        tx = "compute + transmit" if plan.link.tx_power_w is not None else "compute only: no transmit power given"
        axes[1].set_title(f"device energy ({tx})")
    srcs = "the plan's candidates" + (", other rates recomputed from its input profiles" if others else "")
    return Picture("plan-cuts", "Latency and device energy against the cut",
                   f"Best configuration at each cut ({plan.objective} objective) at {len(curves)} uplink rate(s); "
                   f"{srcs}. The star is the chosen cut {best.cut} ({best.cut_name}) at "
                   f"{fmt_rate(plan.link.uplink_rate_bps)}: {best.total_latency_ms:,.4g} ms, {best.energy.total_j:.4g} J.",
                   fig)


def policy_picture(plan: Plan) -> Picture | None:
    """The best cut against the uplink rate as a step plot (from the plan's rate sweep)."""
    pts = plan.rate_sweep
    if not pts:
        return None
    xs = [p.rate_from_bps for p in pts] + [pts[-1].rate_to_bps]
    ys = [np.nan if p.cut is None else p.cut for p in pts]
    ys = ys + [ys[-1]]
    fig, ax = new_figure(width_in=6.4, height_in=3.6)
    ax.step(xs, ys, where="post", color=OKABE_ITO[0], linewidth=2, label="best cut")
    for p in pts:
        if p.cut is not None and (p.ratio > 0 or p.freq_scale != 1):
            ax.annotate(f"ratio {p.ratio:g}, f x{p.freq_scale:g}", (p.rate_from_bps, p.cut),
                        textcoords="offset points", xytext=(2, 4), fontsize=7)
    ax.axvline(plan.link.uplink_rate_bps, color=VERMILION, linestyle=":", label="the plan's link")
    ax.set_xscale("log")
    ax.set_xlabel("uplink rate (bit/s)")
    ax.set_ylabel("cut: stages on the device")
    _cut_ticks(ax, plan.model.num_blocks, list(range(plan.model.num_blocks + 3)), axis="y")
    ax.set_title(f"best cut against link rate ({plan.objective})")
    ax.legend(loc="best", frameon=False)
    switches = "; ".join(f"{fmt_rate(p.rate_from_bps)}-{fmt_rate(p.rate_to_bps)}: {p.cut_name}" for p in pts)
    return Picture("plan-policy", "The best cut against the link rate",
                   f"From the plan's sweep (the switch lies between two sampled rates): {switches}.", fig)
