"""The planner chooses the device's weight precision with the cut (a precision report from `coinfer quantize`)."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.cli.main import main
from coinfer.planner.cost import Budgets, Objective, Workload, build_cost_model, derive_server_profile
from coinfer.planner.link import Link
from coinfer.planner.search import search
from coinfer.planner.synthetic import synthetic_profile
from coinfer.reports import Plan, write_json
from coinfer.reports.common import MachineInfo
from coinfer.reports.precision import PrecisionReport, PrecisionResult, Quality, StageLatency
from coinfer.vocab import stage_names

L = 6


def _report(device_profile, scope="all", split=None) -> PrecisionReport:
    names = stage_names(L) if scope == "all" else stage_names(L)[: split + 1]

    def result(precision, engine, decode_x, prefill_x, ppl, bytes_per_stage, supported=True):
        stages = [StageLatency(stage=n, weight_bytes=bytes_per_stage, prefill_ms=1.0 / prefill_x, decode_ms=0.1 / decode_x,
                               prefill_speedup=prefill_x, decode_speedup=decode_x) for n in names] if supported else []
        return PrecisionResult(precision=precision, pruning_ratio=0.0, engine=engine, supported=supported,
                               unsupported_reason=None if supported else "no kernel here",
                               weight_bytes=bytes_per_stage * len(names), stages=stages,
                               prefill_ms=len(names) / prefill_x if supported else None,
                               prefill_speedup=prefill_x if supported else None, decode_speedup=decode_x if supported else None,
                               quality=Quality(output_rel_mse=ppl - 1, perplexity=10 * ppl, perplexity_ratio=ppl)
                               if supported else None)

    return PrecisionReport(
        model=device_profile.model, machine=MachineInfo.here(), threads=1, scope=scope, split=split, group_size=32,
        timed_stages=names, prefill_tokens=32, decode_context_tokens=32, repeats=3,
        results=[result("fp32", "torch", 1.0, 1.0, 1.0, 4000), result("int8", "torch", 2.0, 1.2, 1.004, 1000),
                 result("int4", "torch", 3.0, 0.9, 1.2, 500), result("fp16", "torch", 1, 1, 1, 2000, supported=False)],
    )


@pytest.fixture
def files(tmp_path):
    dev = synthetic_profile(L, seq_len=32, hidden=128)
    write_json(dev, tmp_path / "dev.json")
    write_json(_report(dev), tmp_path / "prec.json")
    write_json(_report(dev, scope="device", split=3), tmp_path / "prec-dev.json")
    return dev, tmp_path


def _plan(capsys, tmp_path, *extra, steps=8) -> Plan:
    args = ["plan", "--device-profile", str(tmp_path / "dev.json"), "--server-speedup", "0.5", "--rate", "20Mbps",
            "--prompt-tokens", "32", "--decode-steps", str(steps), "--json", *map(str, extra)]
    assert main(args) == 0, capsys.readouterr().err
    return Plan.model_validate_json(capsys.readouterr().out)


def test_the_fastest_precision_wins_unbounded_and_the_budget_moves_it(files, capsys):
    dev, tmp = files
    # A server half as fast: everything on the device. A short generation is prefill-bound (int8's
    # prefill is 1.2x faster, int4's 0.9x), a long one decode-bound (int4 3x, int8 2x).
    short = _plan(capsys, tmp, "--precision-report", tmp / "prec.json")
    assert (short.best.cut, short.best.device_precision) == (L + 2, "int8")
    plan = _plan(capsys, tmp, "--precision-report", tmp / "prec.json", steps=200)
    assert (plan.best.cut, plan.best.device_precision) == (L + 2, "int4")
    assert plan.best.ppl_ratio == pytest.approx(1.2)
    assert any("fp16 on torch at ratio 0: no kernel here; left out" in n for n in plan.notes)
    bounded = _plan(capsys, tmp, "--precision-report", tmp / "prec.json", "--max-ppl-ratio", "1.05", steps=200)
    assert (bounded.best.cut, bounded.best.device_precision) == (L + 2, "int8")
    assert bounded.best.total_latency_ms > plan.best.total_latency_ms
    assert plan.inputs[-1].role == "precision"


def test_the_choice_is_the_exhaustive_minimum(files):
    dev, tmp = files
    from coinfer.reports.io import load_document

    rep = load_document(tmp / "prec.json", PrecisionReport)
    model = build_cost_model(dev, derive_server_profile(dev, 0.5), Workload(32, 8), "fp32", precision=rep)
    link = Link(rate_bps=20e6)
    for budgets in (Budgets(), Budgets(ppl_ratio=1.05), Budgets(ppl_ratio=1.0)):
        best = search(model, link, np.array([1.0]), Objective(), budgets).best
        every = [model.evaluate(link, c, i, budgets=budgets) for c in range(L + 3) for i in range(len(model.ratios))]
        want = min((c for c in every if c.feasible), key=lambda c: c.objective)
        assert best.objective == pytest.approx(want.objective)
        assert (best.cut, best.device_precision) == (want.cut, want.device_precision)
    # per stage by hand: all on the device in int8, prefill 1.2x and decode 2x faster on every stage
    c = model.evaluate(link, L + 2, model.ratio_index(0.0, "int8"))
    fp = model.evaluate(link, L + 2, 0)
    assert c.prefill.device_ms == pytest.approx(fp.prefill.device_ms / 1.2)
    assert c.per_token.device_ms == pytest.approx(fp.per_token.device_ms / 2.0)
    assert c.device_memory_bytes < fp.device_memory_bytes


def test_a_device_scope_report_applies_at_its_cut_only(files, capsys):
    dev, tmp = files
    plan = _plan(capsys, tmp, "--precision-report", tmp / "prec-dev.json")
    quantized = [c for c in plan.candidates if c.device_precision != "fp32"]
    assert {c.cut for c in quantized} <= {4}


def test_a_precision_report_of_another_model_is_refused(files, capsys, tmp_path):
    dev, tmp = files
    other = synthetic_profile(L, seq_len=32, hidden=128, config="cd")
    write_json(_report(other), tmp_path / "other-prec.json")
    code = main(["plan", "--device-profile", str(tmp / "dev.json"), "--server-speedup", "2", "--rate", "20Mbps",
                 "--precision-report", str(tmp_path / "other-prec.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "precision report is of another model" in err
