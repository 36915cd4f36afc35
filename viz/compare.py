"""Two files of one kind side by side, with the differences (as pyperf compares two results)."""

from __future__ import annotations

from dataclasses import dataclass, field

from coinfer.errors import SchemaError
from coinfer.reports.plan import Plan
from coinfer.reports.profile import Profile, Timing
from coinfer.reports.prune import PruneReport
from coinfer.reports.run import RunResult
from coinfer.viz.documents import Loaded
from coinfer.viz.tables import Table

NOISE_MARK = "*"


@dataclass
class Comparison:
    """What `coinfer compare` prints: a headline, tables and notes."""

    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def differs_beyond_noise(a: Timing, b: Timing) -> bool:
    """True when the medians differ by more than the noise: the ranges median +- IQR/2 do not overlap."""
    return abs(a.median_ms - b.median_ms) > (a.iqr_ms + b.iqr_ms) / 2


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.3f}"


def _timing_row(name: str, a: Timing, b: Timing) -> list[str]:
    flag = NOISE_MARK if differs_beyond_noise(a, b) else ""
    return [name, f"{a.median_ms:,.3f} ± {a.iqr_ms:,.3f}", f"{b.median_ms:,.3f} ± {b.iqr_ms:,.3f}",
            _ratio(a.median_ms, b.median_ms) + flag]


def _context_differences(a: Profile, b: Profile) -> list[str]:
    ca, cb = a.context, b.context
    pairs = [("machine", ca.machine.hostname, cb.machine.hostname), ("cpu", ca.machine.cpu, cb.machine.cpu),
             ("accelerator", ca.machine.accelerator, cb.machine.accelerator), ("device", ca.device, cb.device),
             ("dtype", ca.dtype, cb.dtype), ("threads", ca.threads, cb.threads), ("batch", ca.batch, cb.batch),
             ("tokens", ca.seq_len, cb.seq_len), ("energy source", ca.energy_source, cb.energy_source),
             ("derived", a.derived_from, b.derived_from)]
    return [f"{k}: {x} vs {y}" for k, x, y in pairs if x != y]


def compare_profiles(a: Loaded, b: Loaded) -> Comparison:
    """Per-stage prefill and decode latency of two profiles, B over A, flagged beyond the noise."""
    pa: Profile = a.doc  # type: ignore[assignment]
    pb: Profile = b.doc  # type: ignore[assignment]
    if [s.name for s in pa.stages] != [s.name for s in pb.stages]:
        raise SchemaError(f"{a.path} and {b.path} have different stages ({len(pa.stages)} vs {len(pb.stages)}): "
                          "compare profiles of one model")
    cmp = Comparison(f"A = {a.path}, B = {b.path}")
    rows = [_timing_row(sa.name, sa.prefill, sb.prefill) for sa, sb in zip(pa.stages, pb.stages, strict=True)]
    if pa.whole_model and pb.whole_model:
        rows.append(_timing_row("whole", pa.whole_model.prefill, pb.whole_model.prefill))
    cmp.tables.append(Table(f"prefill ms (median ± IQR); {NOISE_MARK}: the difference exceeds the noise",
                            ["stage", "A", "B", "B / A"], rows))
    common = sorted(set(pa.context.decode_context_tokens) & set(pb.context.decode_context_tokens))
    for ctx in common:
        rows = []
        for sa, sb in zip(pa.stages, pb.stages, strict=True):
            da = next(d for d in sa.decode if d.context_tokens == ctx)
            db = next(d for d in sb.decode if d.context_tokens == ctx)
            rows.append(_timing_row(sa.name, da.timing, db.timing))
        cmp.tables.append(Table(f"decode ms per token at {ctx} tokens of context", ["stage", "A", "B", "B / A"], rows))
    if pa.model.config_sha256 != pb.model.config_sha256:
        cmp.notes.append("the two profiles are of different model configurations")
    cmp.notes += [f"differs: {d}" for d in _context_differences(pa, pb)]
    sa, sb = sum(s.prefill.median_ms for s in pa.stages), sum(s.prefill.median_ms for s in pb.stages)
    cmp.notes.append(f"sum of stage prefill medians: A {sa:,.3f} ms, B {sb:,.3f} ms (B / A {_ratio(sa, sb)})")
    return cmp


def _quality(rep: PruneReport, r) -> float | None:
    d = r.distortion
    return d.kl_next_token if rep.model.is_decoder else d.pooled_cosine


def compare_prune_reports(a: Loaded, b: Loaded) -> Comparison:
    """Per requested ratio: distortions, task quality and measured speed-up of two pruning reports."""
    ra: PruneReport = a.doc  # type: ignore[assignment]
    rb: PruneReport = b.doc  # type: ignore[assignment]
    if ra.model.config_sha256 != rb.model.config_sha256:
        raise SchemaError(f"{a.path} and {b.path} prune different models ({ra.model.name}, {rb.model.name}): "
                          "compare pruning reports of one model")
    by_b = {r.requested_ratio: r for r in rb.results}
    task = "KL" if ra.model.is_decoder else "cos"
    rows = []
    for r in ra.results:
        o = by_b.get(r.requested_ratio)
        if o is None:
            continue
        sa = r.speedup.prefill_measured if r.speedup else None
        sb = o.speedup.prefill_measured if o.speedup else None

        def f(x: float | None, fmt: str = ".3g") -> str:
            return "-" if x is None else format(x, fmt)

        rows.append([f"{r.requested_ratio:g}", f(r.distortion.param_distortion), f(o.distortion.param_distortion),
                     f(r.distortion.output_rel_mse), f(o.distortion.output_rel_mse), f(_quality(ra, r)),
                     f(_quality(rb, o)), f(sa, ".2f"), f(sb, ".2f")])
    cmp = Comparison(f"A = {a.path}, B = {b.path}")
    cmp.tables.append(Table("per pruning ratio", ["ratio", "D_w A", "D_w B", "D_y A", "D_y B", f"{task} A", f"{task} B",
                                                  "prefill x A", "prefill x B"], rows))
    only = sorted({r.requested_ratio for r in ra.results} ^ set(by_b))
    if only:
        cmp.notes.append(f"ratios in only one report: {', '.join(f'{x:g}' for x in only)}")
    for k, x, y in (("importance", ra.importance, rb.importance), ("scope", ra.scope, rb.scope),
                    ("calibration", ra.calibration.sha256[:12], rb.calibration.sha256[:12]),
                    ("machine", ra.machine.hostname, rb.machine.hostname)):
        if x != y:
            cmp.notes.append(f"differs: {k}: {x} vs {y}")
    return cmp


def compare_plans(a: Loaded, b: Loaded) -> Comparison:
    """The chosen configuration and its predicted costs in two plans."""
    pa: Plan = a.doc  # type: ignore[assignment]
    pb: Plan = b.doc  # type: ignore[assignment]
    if pa.best is None or pb.best is None:
        raise SchemaError("compare reads single-split plans; a chain plan has no chosen cut")
    x, y = pa.best, pb.best
    rows = [["uplink rate (bit/s)", f"{pa.link.uplink_rate_bps:.4g}", f"{pb.link.uplink_rate_bps:.4g}",
             _ratio(pa.link.uplink_rate_bps, pb.link.uplink_rate_bps)],
            ["chosen cut", f"{x.cut} ({x.cut_name})", f"{y.cut} ({y.cut_name})", ""],
            ["ratio, frequency", f"{x.ratio:g}, {x.freq_scale:g}", f"{y.ratio:g}, {y.freq_scale:g}", ""],
            ["latency ms", f"{x.total_latency_ms:,.4g}", f"{y.total_latency_ms:,.4g}",
             _ratio(x.total_latency_ms, y.total_latency_ms)],
            ["device energy J", f"{x.energy.total_j:.4g}", f"{y.energy.total_j:.4g}", _ratio(x.energy.total_j, y.energy.total_j)],
            ["gain over all on device", f"{pa.gain_over_all_device or 0:.3g}", f"{pb.gain_over_all_device or 0:.3g}", ""],
            ["gain over all on server", f"{pa.gain_over_all_server or 0:.3g}", f"{pb.gain_over_all_server or 0:.3g}", ""]]
    return Comparison(f"A = {a.path}, B = {b.path}", [Table("chosen plan", ["", "A", "B", "B / A"], rows)])


def compare_runs(a: Loaded, b: Loaded) -> Comparison:
    """Measured end-to-end latency per phase of two runs."""
    ra: RunResult = a.doc  # type: ignore[assignment]
    rb: RunResult = b.doc  # type: ignore[assignment]
    rows = []
    for name in ("prefill", "per_token", "total"):
        pa, pb = getattr(ra, name), getattr(rb, name)
        if pa is None or pb is None:
            continue
        for term in ("device_compute", "transfer", "server_compute", "end_to_end"):
            ma, mb = getattr(pa, term).measured_ms, getattr(pb, term).measured_ms
            rows.append([name.replace("_", " "), term.replace("_", " "), f"{ma:,.2f}", f"{mb:,.2f}", _ratio(ma, mb)])
    cmp = Comparison(f"A = {a.path} (cut {ra.cut}), B = {b.path} (cut {rb.cut})",
                     [Table("measured ms (medians)", ["phase", "term", "A", "B", "B / A"], rows)])
    return cmp


COMPARERS = {"profile": compare_profiles, "prune_report": compare_prune_reports, "plan": compare_plans,
             "run_result": compare_runs}


def compare(a: Loaded, b: Loaded) -> Comparison:
    """Compare two files of one kind.

    Raises:
        SchemaError: The files are of different kinds, or of a kind with no comparison.
    """
    if a.kind != b.kind:
        raise SchemaError(f"{a.path} is a {a.kind} and {b.path} a {b.kind}: compare needs two files of one kind")
    if a.kind not in COMPARERS:
        raise SchemaError(f"no comparison for {a.kind!r} files")
    return COMPARERS[a.kind](a, b)
