"""`make bench-quick`'s harness on a tiny model: every entry runs and BENCHMARKS.md says what it must."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "benchmarks" / "suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_suite"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_quick_suite_runs_every_entry_and_writes_the_page(tmp_path):
    suite = _suite()
    md = tmp_path / "BENCHMARKS.md"
    assert suite.main(["--quick", "--out-dir", str(tmp_path / "out"), "--md", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# coinfer benchmarks (QUICK") and "load average" in text and "torch 2.13.0" in text
    for name in ("profile", "prune", "plan", "run"):
        section = text.split(f"## {name}:")[1].split("\n## ")[0]
        for field in ("- command: `", "- status: ran in", "- target: ", "- figure: ", "- verdict: "):
            assert field in section, (name, field)
    # the figures are read back from the files the commands wrote, not made up
    prune = json.loads((tmp_path / "out" / "prune.json").read_text())
    row = next(r for r in prune["results"] if r["requested_ratio"] == 0.2)
    x = row["quality"]["perplexity"] / prune["dense_quality"]["perplexity"]
    assert f"perplexity {x:.3f}x dense" in text
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert f"best cut {plan['best']['cut']} ({plan['best']['cut_name']})" in text
    assert "## The papers' findings, as measured in this run" in text
    assert "4. Best cut under erasure: not measured in this run." in text  # never a made-up claim
    assert (tmp_path / "out" / "report" / "report.html").exists()


def test_a_failing_entry_is_reported_and_the_suite_says_so(tmp_path, monkeypatch):
    suite = _suite()
    broken = suite.Entry("broken", "a command that fails", [suite.sys.executable, "-c", "import sys; sys.exit('boom')"],
                         "x.json", "none", lambda d: ("-", None))
    suite.run_entry(broken, tmp_path)
    assert broken.result["status"] == "failed" and broken.result["stderr_tail"] == ["boom"]
    absent = suite.Entry("absent", "a script not here", ["true"], "x.json", "none", lambda d: ("-", None),
                         needs="bench_nothing.py")
    suite.run_entry(absent, tmp_path)
    assert absent.result == {"status": "not run: script absent"}


def test_the_readers_read_the_committed_results():
    """Each full entry's reader against the result file its script last wrote (golden files)."""
    suite = _suite()
    res = ROOT / "benchmarks" / "results"
    cases = {"_bench_plan": "plan_bench.json", "_bench_profile": "profile_cpu.json", "_bench_run": "run_bench_veth.json",
             "_quality": "quality_smollm2.json", "_channel": "channel_bench.json", "_device": "device_bench.json"}
    got = {fn: getattr(suite, fn)(json.loads((res / f).read_text())) for fn, f in cases.items()}
    assert got["_bench_run"] == ("end to end: 5.0 Mbit/s +1.5%, 50.0 Mbit/s +7.1%, 500.0 Mbit/s +4.7%", True)
    assert got["_quality"] == ("best at 0.2: fluctuation/sensitivity/lstsq 1.210x dense", True)
    assert got["_bench_plan"][1] is False  # one chain case misses its 100x target, and the page says so
    assert "smollm2 int8/torch (1 thr): decode 2.03x, perplexity 1.004x" in got["_device"][0]
    assert got["_channel"][0].startswith("SmolLM2 erasure: does NOT hold")
    assert "14/14 stage medians" in got["_bench_profile"][0]
