"""What the page says about each kind of file: facts, pictures, tables and notes.

Every kind has one renderer, registered with :func:`renderer`: it takes the report's files of that
kind and all the report's files (to join on them) and returns sections. A new kind of file needs
its schema in :data:`coinfer.viz.documents.SCHEMAS` and one such function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from coinfer.reports.plan import Plan
from coinfer.reports.precision import PrecisionReport
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.reports.quality import PerplexityReport
from coinfer.reports.robustness import RobustnessProfile
from coinfer.reports.run import RunResult
from coinfer.units import fmt_rate
from coinfer.viz import plan_figs, profile_figs, prune_figs, quality_figs, run_figs
from coinfer.viz.documents import Loaded
from coinfer.viz.plan_curves import cut_curves, derived_speedup, resolve_inputs
from coinfer.viz.style import Picture
from coinfer.viz.tables import Table


@dataclass
class Section:
    """One part of the page: a title, the files it reads, facts, pictures, tables and notes."""

    title: str
    sources: list[str]
    facts: list[tuple[str, str]] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Renderer = Callable[[list[Loaded], list[Loaded]], list[Section]]
RENDERERS: dict[str, Renderer] = {}
ORDER = ("profile", "prune_report", "plan", "run_result")


def renderer(kind: str) -> Callable[[Renderer], Renderer]:
    """Register the function that renders files of ``kind``."""

    def wrap(fn: Renderer) -> Renderer:
        RENDERERS[kind] = fn
        return fn

    return wrap


def _g(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def _machine(m) -> str:
    acc = f", {m.accelerator}" if m.accelerator else ""
    return f"{m.hostname}: {m.cpu} ({m.cpu_count_logical} logical CPUs{acc}), {m.os}"


def profile_label(item: Loaded, everything: list[Loaded]) -> str:
    """A profile's name in legends: its role in a plan of the report (device/server) and its file."""
    prof: Profile = item.doc  # type: ignore[assignment]
    role = next((inp.role for other in everything if other.kind == "plan"
                 for inp in other.doc.inputs if inp.sha256 == item.sha256 and not inp.derived), None)  # type: ignore[attr-defined]
    derived = ", derived" if prof.derived_from else ""
    return f"{role} ({item.label}{derived})" if role else f"{item.label}{' (derived)' if derived else ''}"


def _wire(everything: list[Loaded]) -> str:
    plan = next((i.doc for i in everything if i.kind == "plan"), None)
    return plan.link.wire_dtype if plan is not None else "fp32"  # type: ignore[attr-defined]


def _derived_servers(items: list[Loaded], everything: list[Loaded]) -> list[tuple[str, Profile]]:
    """Servers that plans of the report derived from one of these profiles (drawn beside the device)."""
    out = []
    for plan_item in (i for i in everything if i.kind == "plan"):
        server = next((i for i in plan_item.doc.inputs if i.role == "server" and i.derived), None)  # type: ignore[attr-defined]
        if server is None or all(server.sha256 != i.sha256 for i in items):
            continue
        inputs, _ = resolve_inputs(plan_item, everything)
        if inputs is not None:
            out.append((f"server (derived, {derived_speedup(server):g}x faster)", inputs.server))
    return out


@renderer("profile")
def profile_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section for all profiles: latency per stage, share of peak, the measuring context."""
    profs = [(profile_label(i, everything), i.doc) for i in items] + _derived_servers(items, everything)
    sec = Section("Per-stage cost (profiles)", [str(i.path) for i in items])
    sec.pictures.append(profile_figs.latency_picture(profs, _wire(everything)))
    flops = profile_figs.flops_picture(profs)
    if flops is not None:
        sec.pictures.append(flops)
    header = ["", *[label for label, _ in profs]]
    rows = []
    for name, get in (
        ("machine", lambda p: _machine(p.context.machine)),
        ("device, dtype", lambda p: f"{p.context.device} {p.context.dtype}"),
        ("threads", lambda p: str(p.context.threads)),
        ("batch x tokens", lambda p: f"{p.context.batch} x {p.context.seq_len}"),
        ("decode contexts", lambda p: ", ".join(map(str, p.context.decode_context_tokens)) or "-"),
        ("repeats (warm-up)", lambda p: f">= {p.context.repeats} ({p.context.warmup})"),
        ("energy source", lambda p: p.context.energy_source
         + (f" ({p.context.power_w:g} W model)" if p.context.power_w and p.context.energy_source == "estimate" else "")),
        ("GEMM peak", lambda p: "-" if not p.gemm_peak_flops_per_s else f"{p.gemm_peak_flops_per_s / 1e9:,.1f} GFLOP/s"),
        ("coverage (stages / whole)", lambda p: "-" if p.whole_model is None else f"{p.whole_model.prefill_coverage:.2f}"),
        ("derived from", lambda p: p.derived_from or "measured"),
    ):
        rows.append([name, *[get(p) for _, p in profs]])
    sec.tables.append(Table("measuring context", header, rows))
    stage_rows = []
    first = profs[0][1]
    for k, st in enumerate(first.stages):
        row = [st.name]
        for _, p in profs:
            s = p.stages[k]
            row.append(f"{s.prefill.median_ms:,.3f} ± {s.prefill.iqr_ms:,.3f}")
            if s.decode:
                row.append(f"{s.decode[0].timing.median_ms:,.3f}")
        row.append(f"{st.payload_after[_wire(everything)].prefill_bytes:,}")
        stage_rows.append(row)
    head = ["stage"]
    for label, p in profs:
        head.append(f"{label}: prefill ms (IQR)")
        if p.stages[0].decode:
            head.append(f"{label}: decode ms @{p.stages[0].decode[0].context_tokens}")
    head.append(f"cut bytes ({_wire(everything)})")
    sec.tables.append(Table("latency per stage (medians) and the prefill payload of a cut after it", head, stage_rows))
    for label, p in profs[:len(items)]:  # a derived server repeats its device's notes
        sec.notes += [f"{label}: {n}" for n in p.notes]
    return [sec]


def _ppl_protocol(rep: PruneReport) -> str:
    cal = rep.calibration
    tok = "UTF-8 bytes modulo the vocabulary" if cal.tokenizer == "bytes" else "the model's tokenizer"
    return (f"text {cal.source} (sha256 {cal.sha256[:12]}), {cal.tokens} tokens in {cal.num_sequences} windows of "
            f"{rep.seq_len or '?'} tokens, tokenized with {tok}")


@renderer("prune_report")
def prune_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per pruning report: quality, distortion against the bound, speed-up."""
    out = []
    for item in items:
        rep: PruneReport = item.doc  # type: ignore[assignment]
        sec = Section(f"Pruning ({item.label})", [str(item.path)])
        sec.facts += [
            ("importance", rep.importance),
            ("scope", rep.scope + (f" (device blocks 1..{rep.split})" if rep.split is not None else "")),
            ("measured on", f"{_machine(rep.machine)}; {rep.device}, {rep.threads} threads"),
            ("calibration", _ppl_protocol(rep)),
            ("recipe", f"importance {rep.importance}, allocation {rep.allocation or '-'}, "
                       f"compensation {rep.compensation or '-'}"),
            ("perplexity protocol", "-" if rep.dense_quality is None else
             f"{rep.dense_quality.protocol.describe()}; dense perplexity {rep.dense_quality.perplexity:.4g}"),
            ("empirical C (fit)", f"{_g(rep.empirical_c)} ({_g(rep.empirical_c_fit)})"),
            ("bound D_y <= C_fit x D_w on held-out windows",
             {True: "holds", False: "violated", None: "-"}[rep.bound_holds]),
        ]
        for pic in (prune_figs.quality_picture(rep), prune_figs.distortion_picture(rep), prune_figs.speedup_picture(rep)):
            if pic is not None:
                sec.pictures.append(pic)
        task = "KL (nats)" if rep.model.is_decoder else "cosine"
        header = ["ratio", "removed", "heads/MLP", "D_w", "D_y", task, "perplexity", "prefill x (ideal)", "decode x"]
        rows = []
        for r in rep.results:
            d, s = r.distortion, r.speedup
            rows.append([
                f"{r.requested_ratio:g}", f"{r.achieved_param_ratio:.3f}" if r.pruned_anything else "none",
                f"{r.achieved_head_ratio:.2f}/{r.achieved_channel_ratio:.2f}", _g(d.param_distortion, ".3f"),
                _g(d.output_rel_mse, ".3f"), _g(d.kl_next_token if rep.model.is_decoder else d.pooled_cosine, ".3f"),
                (f"{r.quality.perplexity:.4g} ({r.quality.perplexity / rep.dense_quality.perplexity:.3f}x dense)"
                 if r.quality is not None and rep.dense_quality is not None else
                 "-" if d.perplexity_after is None else f"{d.perplexity_after:.4g} (dense {_g(d.perplexity_before)})"),
                "-" if s is None else f"{s.prefill_measured:.2f} ({s.prefill_flops_ratio:.2f})",
                "-" if s is None or s.decode_measured is None else f"{s.decode_measured:.2f}",
            ])
        sec.tables.append(Table("what each ratio removed, cost and gained", header, rows))
        sec.notes += rep.notes + [f"ratio {r.requested_ratio:g}: {n}" for r in rep.results for n in r.notes]
        out.append(sec)
    return out


def _link(plan: Plan) -> str:
    lk = plan.link
    text = (f"{lk.kind}, {fmt_rate(lk.uplink_rate_bps)} up / {fmt_rate(lk.downlink_rate_bps)} down, "
            f"RTT {lk.rtt_ms:g} ms, wire {lk.wire_dtype}")
    if lk.tx_power_w is not None:
        text += f", transmit power {lk.tx_power_w:.3g} W"
    if lk.bandwidth_hz is not None:
        text += f", bandwidth {lk.bandwidth_hz / 1e6:g} MHz"
    return text


def _gain(plan: Plan, label: str, base, gain: float | None) -> tuple[str, str] | None:
    if base is None or gain is None:
        return None
    broken = "" if base.feasible else f" (breaks: {'; '.join(base.violations)})"
    return (f"gain over {label}", f"{gain:.3g}x on {plan.objective} ({label}: {base.total_latency_ms:,.4g} ms, "
            f"{base.energy.total_j:.4g} J{broken})")


@renderer("plan")
def plan_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per plan: the chosen configuration, its gains, cost against cut and rate."""
    out = []
    for item in items:
        plan: Plan = item.doc  # type: ignore[assignment]
        sec = Section(f"Plan ({item.label})", [str(item.path)])
        sec.facts += [("link", _link(plan)), ("objective", plan.objective),
                      ("workload", f"{plan.prompt_tokens} prompt tokens + {plan.new_tokens} new tokens"),
                      ("budgets", ", ".join(f"{k} {v:g}" for k, v in plan.budgets.items()) or "none"),
                      ("inputs", "; ".join(f"{i.role}: {i.path}" + (f" ({i.derivation})" if i.derived else "")
                                           for i in plan.inputs))]
        if plan.best is None:
            sec.notes.append("a chain plan: its partition is in the table; no cut pictures are drawn for chains")
            ch = plan.chain
            sec.tables.append(Table(f"chain partition ({ch.objective})", ["member", "stages", "compute ms", "memory MB"], [
                [s.member, f"{s.stage_names[0]}..{s.stage_names[-1]}" if s.stage_names else "(none)",
                 f"{s.compute_ms:,.4g}", f"{s.memory_bytes / 1e6:,.2f}"] for s in ch.segments]))
            sec.notes += plan.notes
            out.append(sec)
            continue
        b = plan.best
        sec.facts.append(("chosen", f"cut {b.cut} ({b.cut_name}), ratio {b.ratio:g}, frequency scale {b.freq_scale:g}"
                          + ("" if b.tx_power_w is None else f", transmit power {b.tx_power_w:.3g} W")))
        sec.facts.append(("predicted", f"{b.total_latency_ms:,.4g} ms per request, device energy {b.energy.total_j:.4g} J, "
                          f"device memory {b.device_memory_bytes / 1e6:,.2f} MB, distortion {b.distortion:.3g}"))
        for g in (_gain(plan, "all on device", plan.all_device, plan.gain_over_all_device),
                  _gain(plan, "all on server", plan.all_server, plan.gain_over_all_server)):
            if g is not None:
                sec.facts.append(g)
        inputs, why = resolve_inputs(item, everything)
        curves, notes = cut_curves(plan, inputs)
        sec.notes.append(f"curves at other rates: {why}")
        sec.notes += notes
        sec.pictures.append(plan_figs.cuts_picture(plan, curves))
        policy = plan_figs.policy_picture(plan)
        if policy is not None:
            sec.pictures.append(policy)
        sec.tables.append(Table("every cut, best configuration at each (* = chosen)",
                                ["cut", "device to", "ratio", "prefill ms", "token ms", "total ms", "J", "MB", "ok"], [
            [f"{'*' if c.cut == b.cut else ''}{c.cut}", c.cut_name, f"{c.ratio:g}", f"{c.prefill.total_ms:,.4g}",
             "-" if c.per_token is None else f"{c.per_token.total_ms:,.4g}", f"{c.total_latency_ms:,.4g}",
             f"{c.energy.total_j:.3g}", f"{c.device_memory_bytes / 1e6:,.1f}", "y" if c.feasible else "n"]
            for c in plan.candidates]))
        if plan.rate_sweep:
            sec.tables.append(Table("best configuration by uplink rate", ["rate from", "rate to", "cut", "device to",
                                                                          "ratio", "freq"], [
                [fmt_rate(p.rate_from_bps), fmt_rate(p.rate_to_bps), "-" if p.cut is None else str(p.cut), p.cut_name,
                 f"{p.ratio:g}", f"{p.freq_scale:g}"] for p in plan.rate_sweep]))
        sec.notes += plan.notes
        out.append(sec)
    return out


@renderer("run_result")
def run_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per run: predicted against measured per phase, traffic, exactness."""
    out = []
    for item in items:
        run: RunResult = item.doc  # type: ignore[assignment]
        sec = Section(f"Run ({item.label})", [str(item.path)])
        lk = run.link
        shaped = f"{lk.rate_bps / 1e6:g} Mbit/s (tc tbf)" if lk.rate_bps else "unshaped"
        rtt = f", RTT {lk.rtt_ms:g} ms" + (" (emulated at the transport)" if lk.rtt_emulated_at_transport else "")
        sec.facts += [
            ("split", f"cut {run.cut} after {run.cut_name}: " + "  ->  ".join(f"{m.role} ({m.stages})" for m in run.chain)),
            ("mode, transport", f"{run.mode}, {run.transport}"),
            ("link", shaped + (rtt if lk.rtt_ms else "") + f", wire {run.wire_dtype}"),
            ("workload", f"batch {run.batch}, {run.prompt_tokens} prompt tokens, {run.decode_steps} decode steps"),
            ("measuring", f"{run.repeats} request(s) after {run.warmup_runs} warm-up, medians; {run.torch_threads} "
                          f"threads per process; {_machine(run.machine)}"),
            ("predictions", run.prediction_source or "none"),
            ("traffic", f"prefill uplink {run.traffic.prefill_uplink_bytes:,} B, downlink {run.traffic.downlink_bytes:,} B, "
                        f"total {run.traffic.total_bytes:,} B"),
        ]
        if run.matches_unsplit is not None:
            sec.facts.append(("identical to the unsplit model", "yes" if run.matches_unsplit else "NO"))
        if run.generated_text is not None:
            sec.facts.append(("generated", repr(run.generated_text)))
        sec.pictures.append(run_figs.predicted_picture(run))
        rows = []
        for name, ph in run_figs.phases(run):
            for t in run_figs.TERMS:
                m = getattr(ph, t)
                rows.append([name, t.replace("_", " "), f"{m.measured_ms:,.2f}", _g(m.predicted_ms, ",.2f"),
                             "-" if m.error_pct is None else f"{m.error_pct:+.1f}%"])
        sec.tables.append(Table("measured against predicted (ms)", ["phase", "term", "measured", "predicted", "error"],
                                rows))
        sec.notes += run.notes
        out.append(sec)
    return out


@renderer("robustness_profile")
def robustness_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per robustness profile: quality against erasure and noise per cut, and the points."""
    out = []
    for item in items:
        p: RobustnessProfile = item.doc  # type: ignore[assignment]
        sec = Section(f"Channel robustness ({item.label})", [str(item.path)])
        sec.facts += [
            ("quality figure", p.metric.replace("_", " ")),
            ("protocol", p.protocol.describe() if p.protocol is not None else (p.text.name if p.text else "-")),
            ("clean perplexity", _g(p.clean_perplexity)),
            ("cuts", ", ".join(str(c) for c in p.cuts)),
            ("measuring", f"seed {p.seed}, {p.confidence:.0%} intervals over draws, {p.model_evaluations:,} server-part "
                          f"evaluations; {_machine(p.machine)}"),
        ]
        for kind in ("erasure", "awgn"):
            if (pic := quality_figs.severity_picture(p, kind)) is not None:
                sec.pictures.append(pic)
        rows = []
        for pt in p.points:
            m = pt.perplexity_ratio if p.metric == "perplexity_ratio" else pt.pooled_cosine
            rows.append([str(pt.cut), pt.cut_name, pt.condition.label(), f"{pt.payload_bytes_per_token:,}",
                         "-" if m is None else f"{m.mean:.4g} [{m.ci_low:.4g}, {m.ci_high:.4g}]",
                         f"{pt.output_rel_mse.mean:.3g}"])
        sec.tables.append(Table("quality per cut and condition (mean [confidence interval])",
                                ["cut", "device to", "condition", "B/token", p.metric.replace("_", " "), "rel-MSE"], rows))
        sec.notes += p.notes
        out.append(sec)
    return out


@renderer("precision_report")
def precision_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per precision report: speed-up against quality per precision, engine and ratio."""
    out = []
    for item in items:
        rep: PrecisionReport = item.doc  # type: ignore[assignment]
        sec = Section(f"Weight precision ({item.label})", [str(item.path)])
        sec.facts += [
            ("scope", rep.scope + (f" (device blocks 1..{rep.split})" if rep.split is not None else "")),
            ("timed", f"{rep.prefill_tokens}-token prefill, decode at {rep.decode_context_tokens or '-'} tokens of "
                      f"context, {rep.repeats} repeats interleaved, {rep.threads} threads; {_machine(rep.machine)}"),
            ("reference perplexity (fp32)", _g(rep.reference_perplexity)),
        ]
        if (pic := quality_figs.precision_picture(rep)) is not None:
            sec.pictures.append(pic)
        rows = []
        for r in rep.results:
            q = r.quality
            quality = "-" if q is None else (_g(q.perplexity_ratio, ".4f") if rep.model.is_decoder
                                             else _g(q.pooled_cosine, ".4f"))
            rows.append([r.precision, r.engine, f"{r.pruning_ratio:g}", "yes" if r.supported else "no",
                         _g(r.prefill_speedup, ".2f"), _g(r.decode_speedup, ".2f"), quality])
        sec.tables.append(Table("per precision, engine and pruning ratio",
                                ["precision", "engine", "ratio", "supported", "prefill x", "decode x",
                                 "perplexity x" if rep.model.is_decoder else "cosine"], rows))
        sec.notes += rep.notes
        out.append(sec)
    return out


@renderer("perplexity_report")
def perplexity_sections(items: list[Loaded], everything: list[Loaded]) -> list[Section]:
    """One section per perplexity report: the figure with its protocol."""
    out = []
    for item in items:
        rep: PerplexityReport = item.doc  # type: ignore[assignment]
        f = rep.figures
        sec = Section(f"Perplexity ({item.label})", [str(item.path)])
        sec.facts += [("perplexity", f"{f.perplexity:.4g} (mean NLL {f.nll_nats:.4f} nats/token)"),
                      ("protocol", f.protocol.describe()),
                      ("measuring", f"{rep.threads} threads, {rep.eval_s:.1f} s; {_machine(rep.machine)}")]
        out.append(sec)
    return out


def build_sections(everything: list[Loaded]) -> list[Section]:
    """All sections, kinds in the order profile, prune, plan, run (then any later kinds)."""
    kinds = sorted({i.kind for i in everything}, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
    out: list[Section] = []
    for kind in kinds:
        out += RENDERERS[kind]([i for i in everything if i.kind == kind], everything)
    return out
