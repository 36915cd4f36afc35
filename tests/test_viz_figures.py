"""`coinfer report` pictures, read back from the matplotlib figures built from the golden files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from coinfer.cli.main import main
from coinfer.planner.cost import Budgets, Objective, Workload, build_cost_model
from coinfer.planner.link import Link
from coinfer.planner.search import search
from coinfer.reports.io import load_document
from coinfer.reports.plan import Plan
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.reports.run import RunResult
from coinfer.viz.documents import load_any
from coinfer.viz.plan_curves import cut_curves, resolve_inputs
from coinfer.viz.report import build_report

DATA = Path(__file__).parent / "data" / "report"
GPT2 = ["device.profile.json", "server.profile.json", "prune.json", "plan.json", "run.json"]


@pytest.fixture(scope="module")
def full():
    """The report of every tiny-gpt2 file, pictures by name."""
    rep = build_report([DATA / f for f in GPT2])
    return {p.name: p for p in rep.pictures}


def _doc(name, cls):
    return load_document(DATA / name, cls)


def _labelled(ax):
    """The axis' lines that have a legend label (axvline/axhline guides have none)."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _heights(container) -> list[float]:
    return [b.get_height() for b in container]


def test_every_picture_of_the_gpt2_files(full):
    assert sorted(full) == sorted(["profile-latency", "profile-flops", "prune-quality", "prune-distortion",
                                   "prune-speedup", "plan-cuts", "plan-policy", "run-predicted"])
    for pic in full.values():
        assert pic.caption and pic.title
        for ax in pic.figure.axes:
            assert ax.get_ylabel(), f"{pic.name}: an axis without a label"


def test_stage_latency_bars_and_payload_axis(full):
    fig = full["profile-latency"].figure
    prefill, decode, pay_prefill, pay_decode = fig.axes
    dev, srv = _doc("device.profile.json", Profile), _doc("server.profile.json", Profile)
    assert prefill.get_title() == "prefill, 64 tokens (batch 1)" and prefill.get_xlabel() == "stage"
    assert "ms" in prefill.get_ylabel() and "per token" in decode.get_ylabel()
    assert [t.get_text() for t in prefill.get_xticklabels()] == ["embed", "block.0", "block.1", "block.2", "block.3", "head"]
    assert len(prefill.containers) == 2  # device and server
    assert _heights(prefill.containers[0]) == pytest.approx([s.prefill.median_ms for s in dev.stages])
    assert _heights(prefill.containers[1]) == pytest.approx([s.prefill.median_ms for s in srv.stages])
    assert _heights(decode.containers[0]) == pytest.approx([s.decode[0].timing.median_ms for s in dev.stages])
    # The payload of a cut after a block: 64 tokens x 512 hidden x 4 bytes; after the head nothing.
    (line,) = pay_prefill.get_lines()
    assert list(line.get_ydata()) == [64 * 512 * 4] * 5 + [0]
    assert list(pay_decode.get_lines()[0].get_ydata()) == [512 * 4] * 5 + [0]
    assert "bytes" in pay_prefill.get_ylabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("device (device.profile") and "derived" in labels[1]


def test_achieved_share_of_peak_leaves_out_the_derived_profile(full):
    ax = full["profile-flops"].figure.axes[0]
    dev = _doc("device.profile.json", Profile)
    assert len(ax.containers) == 1 and "GEMM peak" in ax.get_ylabel() and "%" in ax.get_ylabel()
    assert _heights(ax.containers[0]) == pytest.approx([100 * (s.achieved_flops_fraction or 0) for s in dev.stages])


def test_encoder_profile_has_no_decode_panel():
    rep = build_report([DATA / "bert.profile.json"])
    fig = next(p for p in rep.pictures if p.name == "profile-latency").figure
    assert len(fig.axes) == 2  # prefill and its payload twin
    assert fig.axes[0].get_title().startswith("prefill")


def test_quality_against_ratio_decoder_and_encoder(full):
    ax = full["prune-quality"].figure.axes[0]
    rep = _doc("prune.json", PruneReport)
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [0.25, 0.5]
    expected = [r.distortion.perplexity_after / r.distortion.perplexity_before for r in rep.results]
    assert list(line.get_ydata()) == pytest.approx(expected)
    assert "perplexity" in ax.get_ylabel() and ax.get_xlabel() == "requested pruning ratio"
    bert = build_report([DATA / "bert.prune.json"])
    ax = next(p for p in bert.pictures if p.name == "prune-quality").figure.axes[0]
    cos = [r.distortion.pooled_cosine for r in _doc("bert.prune.json", PruneReport).results]
    assert "cosine" in ax.get_ylabel() and list(ax.get_lines()[0].get_ydata()) == pytest.approx(cos)


def test_distortion_bound_and_laplace_references(full):
    rep = _doc("prune.json", PruneReport)
    fit, lap, ref = full["prune-distortion"].figure.axes
    points, bound = fit.get_lines()
    assert list(points.get_xdata()) == pytest.approx([r.distortion.param_distortion for r in rep.results])
    assert list(points.get_ydata()) == pytest.approx([r.distortion.output_rel_mse for r in rep.results])
    x, y = np.asarray(bound.get_xdata()), np.asarray(bound.get_ydata())
    assert y[1:] / x[1:] == pytest.approx(rep.empirical_c_fit)  # the fitted bound D_y = C_fit x D_w
    curve = lap.get_lines()[0]
    assert list(curve.get_ydata()) == pytest.approx([p.distortion for p in rep.laplace.magnitude_pruning_curve])
    # Independent check of the Laplace magnitude-pruning formula at one point (SCIENCE.md).
    rho = rep.laplace.magnitude_pruning_curve[4].x
    lnk = np.log(1 - rho)
    assert curve.get_ydata()[4] == pytest.approx(1 - (1 - rho) * (1 - lnk + 0.5 * lnk**2))
    assert ref.get_yscale() == "log" and "bits per weight" in ref.get_xlabel()
    shannon = ref.get_lines()[0]
    r, d = shannon.get_xdata()[0], shannon.get_ydata()[0]
    assert d == pytest.approx(np.e / np.pi * 2 ** (-2 * r))


def test_realised_against_ideal_speedup(full):
    ax = full["prune-speedup"].figure.axes[0]
    rep = _doc("prune.json", PruneReport)
    ideal, measured, dec_ideal, dec_measured = ax.get_lines()[:4]
    assert list(ideal.get_ydata()) == pytest.approx([r.speedup.prefill_flops_ratio for r in rep.results])
    assert list(measured.get_ydata()) == pytest.approx([r.speedup.prefill_measured for r in rep.results])
    assert list(dec_measured.get_ydata()) == pytest.approx([r.speedup.decode_measured for r in rep.results])
    assert "speed-up" in ax.get_ylabel()


def test_cut_curves_at_several_rates_with_the_chosen_cut(full):
    plan = _doc("plan.json", Plan)
    lat, energy = full["plan-cuts"].figure.axes
    labels = [ln.get_label() for ln in _labelled(lat)]
    assert labels == ["200 kbps", "2 Mbps", "20 Mbps (the plan's link)", "200 Mbps", "chosen cut"]
    own = _labelled(lat)[2]
    assert list(own.get_ydata()) == pytest.approx([c.total_latency_ms for c in plan.candidates])
    star = _labelled(lat)[-1]
    assert star.get_marker() == "*"
    (guide,) = [ln for ln in lat.get_lines() if ln not in _labelled(lat)]
    assert list(guide.get_xdata()) == [plan.best.cut] * 2
    assert list(star.get_xdata()) == [plan.best.cut] and list(star.get_ydata()) == [plan.best.total_latency_ms]
    assert list(_labelled(energy)[-1].get_ydata()) == [plan.best.energy.total_j]
    assert "latency" in lat.get_ylabel() and "(J)" in energy.get_ylabel()
    assert lat.get_xlabel() == "cut: stages on the device"
    # Lower rates cannot make any split cheaper: every cut's latency falls as the rate rises.
    ys = np.array([ln.get_ydata() for ln in _labelled(lat)[:4]])
    assert np.all(np.diff(ys, axis=0) <= 1e-9)


def test_recomputed_curves_match_the_plans_own_candidates():
    item = load_any(DATA / "plan.json")
    plan = item.doc
    inputs, why = resolve_inputs(item, [])
    assert inputs is not None, why
    model = build_cost_model(inputs.device, inputs.server, Workload(plan.prompt_tokens, plan.new_tokens),
                             plan.link.wire_dtype, inputs.prune)
    link = Link(rate_bps=plan.link.uplink_rate_bps, rtt_ms=plan.link.rtt_ms, tx_powers_w=(plan.link.tx_power_w,))
    res = search(model, link, np.asarray(plan.freq_scales), Objective(plan.objective), Budgets())
    assert [c.total_latency_ms for c in res.per_cut] == pytest.approx([c.total_latency_ms for c in plan.candidates])


def test_plan_without_its_inputs_draws_what_the_file_has(tmp_path):
    shutil.copy(DATA / "plan.json", tmp_path / "plan.json")
    item = load_any(tmp_path / "plan.json")
    inputs, why = resolve_inputs(item, [])
    assert inputs is None and "not found" in why
    curves, _ = cut_curves(item.doc, inputs)
    assert len(curves) == 1 and curves[0].from_file
    rep = build_report([tmp_path / "plan.json"])
    sec = rep.sections[0]
    assert any("not found" in n for n in sec.notes)
    lat = next(p for p in rep.pictures if p.name == "plan-cuts").figure.axes[0]
    assert [ln.get_label() for ln in _labelled(lat)] == ["20 Mbps (the plan's link)", "chosen cut"]


def test_plan_with_a_derived_server_is_recomputed(tmp_path):
    shutil.copy(DATA / "device.profile.json", tmp_path / "dev.json")
    out = tmp_path / "plan.json"
    assert main(["plan", "--device", str(tmp_path / "dev.json"), "--server-speedup", "8", "--rate", "20Mbps",
                 "--rtt", "5ms", "--new-tokens", "8", "-o", str(out)]) == 0
    item = load_any(out)
    inputs, _ = resolve_inputs(item, [])
    curves, _ = cut_curves(item.doc, inputs)
    assert [c.rate_bps for c in curves] == [2e5, 2e6, 2e7, 2e8, 2e9]
    at_plan = next(c for c in curves if c.from_file)
    # the derived server divides every stage by 8: recomputing at the plan's rate must agree.
    model = build_cost_model(inputs.device, inputs.server, Workload(item.doc.prompt_tokens, 8), "fp32", None)
    again = [model.evaluate(Link(rate_bps=2e7, rtt_ms=5.0), c, 0, 1.0, None).total_latency_ms for c in at_plan.cuts]
    assert again == pytest.approx(at_plan.latency_ms)
    # The profile picture draws the derived server beside the device: every stage 8x faster.
    rep = build_report([tmp_path / "dev.json", out])
    ax = next(p for p in rep.pictures if p.name == "profile-latency").figure.axes[0]
    dev, srv = ax.containers
    assert _heights(srv) == pytest.approx([h / 8 for h in _heights(dev)])
    assert srv.get_label() == "server (derived, 8x faster)"


def test_policy_step_plot(full):
    plan = _doc("plan.json", Plan)
    ax = full["plan-policy"].figure.axes[0]
    step = ax.get_lines()[0]
    assert step.get_drawstyle() == "steps-post" and ax.get_xscale() == "log"
    assert list(step.get_xdata()) == [p.rate_from_bps for p in plan.rate_sweep] + [plan.rate_sweep[-1].rate_to_bps]
    assert list(step.get_ydata())[:-1] == [p.cut for p in plan.rate_sweep]
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "0: server-only"
    assert "bit/s" in ax.get_xlabel()


def test_run_predicted_against_measured(full):
    run = _doc("run.json", RunResult)
    axes = full["run-predicted"].figure.axes
    assert [ax.get_title() for ax in axes] == ["prefill", "per token", "whole request"]
    terms = ("device_compute", "transfer", "server_compute", "end_to_end")
    for ax, phase in zip(axes, (run.prefill, run.per_token, run.total), strict=True):
        measured, predicted = ax.containers
        assert _heights(measured) == pytest.approx([getattr(phase, t).measured_ms for t in terms])
        assert _heights(predicted) == pytest.approx([getattr(phase, t).predicted_ms for t in terms])
        errors = [a.get_text() for a in ax.texts]
        assert errors == [f"{getattr(phase, t).error_pct:+.0f}%" for t in terms]


def test_a_new_kind_plugs_in_with_a_schema_and_one_renderer(tmp_path):
    """A later kind of file registers its schema and one function (as the robustness profile did)."""
    from typing import Literal

    from coinfer.reports.common import Document, ModelIdentity
    from coinfer.reports.io import write_json
    from coinfer.viz import documents, sections
    from coinfer.viz.style import Picture, new_figure

    class Robustness(Document):
        kind: Literal["toy_sweep"] = "toy_sweep"
        schema_version: Literal[1] = 1
        model: ModelIdentity
        erasure_p: list[float]
        ppl_ratio: list[float]

    def draw(items, everything):
        fig, ax = new_figure()
        doc = items[0].doc
        ax.plot(doc.erasure_p, doc.ppl_ratio)
        ax.set_xlabel("erasure probability")
        ax.set_ylabel("perplexity ratio (x)")
        return [sections.Section("Robustness", [str(items[0].path)], pictures=[Picture("robust", "t", "c", fig)])]

    ident = _doc("plan.json", Plan).model
    write_json(Robustness(model=ident, erasure_p=[0.01, 0.1], ppl_ratio=[1.1, 2.0]), tmp_path / "r.json")
    documents.register_kind("toy_sweep", Robustness)
    sections.renderer("toy_sweep")(draw)
    try:
        rep = build_report([DATA / "plan.json", tmp_path / "r.json"])
        assert [s.title for s in rep.sections][-1] == "Robustness"
        robust = rep.pictures[-1].figure.axes[0]
        assert list(robust.get_lines()[0].get_ydata()) == [1.1, 2.0]
        assert main(["show", str(tmp_path / "r.json")]) == 2
    finally:
        documents.SCHEMAS.pop("toy_sweep")
        sections.RENDERERS.pop("toy_sweep")  # the real kinds are left as they were
