"""Pictures of profiles: per-stage latency with cut payloads, and achieved share of the GEMM peak."""

from __future__ import annotations

import numpy as np

from coinfer.reports.profile import Profile
from coinfer.viz.style import BLACK, HATCHES, OKABE_ITO, Picture, new_figure


def _bars(ax, names: list[str], series: list[tuple[str, list[float]]]) -> None:
    """Grouped bars: one group per stage, one bar per labelled series."""
    x = np.arange(len(names))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label,
               color=OKABE_ITO[i % len(OKABE_ITO)], hatch=HATCHES[i % len(HATCHES)], edgecolor="white", linewidth=0.3)
    ax.set_xticks(x, names, rotation=45, ha="right")


def _payload_axis(ax, names: list[str], payload: list[int], wire: str, what: str) -> None:
    """Bytes crossing a cut placed after each stage, on a second y axis."""
    ax2 = ax.twinx()
    ax2.plot(np.arange(len(names)), payload, color=BLACK, marker="o", markersize=3, linewidth=1,
             label=f"payload of a cut after the stage ({wire}, right axis)")
    ax2.set_ylabel(f"cut payload, {what} (bytes)")
    ax2.set_ylim(bottom=0)
    ax2.grid(False)


def latency_picture(profiles: list[tuple[str, Profile]], wire: str = "fp32") -> Picture:
    """Per-stage prefill latency, and per-token decode latency for decoders, on each profiled machine.

    Args:
        profiles: (legend label, profile) of one model on one or more machines.
        wire: Wire dtype whose payload is drawn on the second axis.
    """
    first = profiles[0][1]
    names = [s.name for s in first.stages]
    ctx = next((p.context.decode_context_tokens[0] for _, p in profiles if p.context.decode_context_tokens), None)
    has_decode = first.model.is_decoder and ctx is not None
    fig, axes = new_figure(ncols=2 if has_decode else 1, width_in=11 if has_decode else 6.4, height_in=3.8)
    axes = list(np.atleast_1d(axes))
    ax = axes[0]
    _bars(ax, names, [(label, [s.prefill.median_ms for s in p.stages]) for label, p in profiles])
    ax.set_title(f"prefill, {first.context.seq_len} tokens (batch {first.context.batch})")
    ax.set_xlabel("stage")
    ax.set_ylabel("latency per stage (ms, median)")
    _payload_axis(ax, names, [s.payload_after[wire].prefill_bytes for s in first.stages], wire, "prefill")
    if has_decode:
        ax = axes[1]
        series = []
        for label, p in profiles:
            vals = [next((d.timing.median_ms for d in s.decode if d.context_tokens == ctx), np.nan) for s in p.stages]
            series.append((label, vals))
        _bars(ax, names, series)
        ax.set_title(f"decode, one token with {ctx} tokens of context")
        ax.set_xlabel("stage")
        ax.set_ylabel("latency per token per stage (ms, median)")
        _payload_axis(ax, names, [s.payload_after[wire].per_token_bytes for s in first.stages], wire, "per token")
    handles, names_ = axes[0].get_legend_handles_labels()
    for twin in fig.axes[len(axes):][:1]:
        h2, n2 = twin.get_legend_handles_labels()
        handles, names_ = handles + h2, names_ + n2
    fig.legend(handles, names_, loc="outside lower center", ncols=len(handles), frameon=False)
    labels = ", ".join(label for label, _ in profiles)
    total = ", ".join(f"{label} {sum(s.prefill.median_ms for s in p.stages):,.1f} ms" for label, p in profiles)
    return Picture("profile-latency", "Latency per stage and the payload at each cut",
                   f"Median latency of each stage ({labels}); prefill sums: {total}. The black line is the tensor "
                   f"that crosses the link when the model is cut right after that stage ({wire}).", fig)


def flops_picture(profiles: list[tuple[str, Profile]]) -> Picture | None:
    """Achieved prefill FLOP/s of each stage as a share of that machine's measured GEMM peak.

    Profiles without a measured peak (e.g. derived ones) are left out; None when none has one.
    """
    measured = [(label, p) for label, p in profiles if p.gemm_peak_flops_per_s and p.derived_from is None]
    if not measured:
        return None
    names = [s.name for s in measured[0][1].stages]
    fig, ax = new_figure(width_in=6.4, height_in=3.6)
    _bars(ax, names, [(f"{label} (peak {p.gemm_peak_flops_per_s / 1e9:,.1f} GFLOP/s)",
                       [100 * (s.achieved_flops_fraction or 0.0) for s in p.stages]) for label, p in measured])
    ax.set_title("achieved prefill FLOP/s per stage")
    ax.set_xlabel("stage")
    ax.set_ylabel("share of the measured GEMM peak (%)")
    ax.legend(loc="upper right", frameon=False)
    best = max((100 * (s.achieved_flops_fraction or 0), s.name) for _, p in measured for s in p.stages)
    return Picture("profile-flops", "Achieved FLOP/s as a share of the machine's peak",
                   f"Prefill FLOPs of each stage over its median time, divided by the GEMM peak measured on the same "
                   f"machine; the best stage reaches {best[0]:.0f}% ({best[1]}). Stages with no matrix product show 0.",
                   fig)
