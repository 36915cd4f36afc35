"""`coinfer plan --robustness` and `coinfer trace` end to end: files, policy, replay, refusals, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coinfer.cli.main import main
from coinfer.planner.cost import derive_server_profile
from coinfer.planner.synthetic import synthetic_profile, synthetic_robustness
from coinfer.planner.trace import generate_trace
from coinfer.reports import Plan, load_document, write_json
from coinfer.reports.replay import ReplayReport
from coinfer.reports.trace import ChannelStates, WeightedState


@pytest.fixture
def files(tmp_path):
    dev = synthetic_profile(6, seq_len=32, hidden=128, stage_ms=[0.5, *[30.0] * 6, 20.0])
    rob = synthetic_robustness(6, hidden=128)
    paths = {k: tmp_path / f"{k}.json" for k in ("dev", "srv", "rob", "other", "cos", "trace", "states")}
    write_json(dev, paths["dev"])
    write_json(derive_server_profile(dev, 20.0), paths["srv"])
    write_json(rob, paths["rob"])
    write_json(synthetic_robustness(6, hidden=128, config="cd"), paths["other"])
    write_json(rob.model_copy(update={"metric": "pooled_cosine"}), paths["cos"])
    write_json(generate_trace("rayleigh", mean_snr_db=12, duration_s=4, block_s=0.1, seed=0, bandwidth_hz=20e6,
                              erasure_model="bpsk"), paths["trace"])
    write_json(ChannelStates(states=[WeightedState(erasure_p=0.02, probability=0.5),
                                     WeightedState(erasure_p=0.12, probability=0.3),
                                     WeightedState(erasure_p=0.25, rate_bps=None, probability=0.2)]), paths["states"])
    return paths


def base(files):
    return ["plan", "--device-profile", str(files["dev"]), "--server-profile", str(files["srv"]), "--rate", "50Mbps", "--rtt", "5ms",
            "--decode-steps", "4", "--robustness", str(files["rob"])]


def run_ok(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def run_bad(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_fixed_erasure_plan_chooses_wire_with_cut(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    text = run_ok(capsys, *base(files), "--max-ppl-ratio", "1.2", "--erasure", "0.1", "-o", out)
    plan = load_document(out, Plan)
    pol, b = plan.policy, plan.best
    assert pol.source == "fixed" and pol.impairment == "erasure" and pol.quality_budget.limit == 1.2
    assert b.wire_dtype in pol.wires and plan.link.wire_dtype == b.wire_dtype
    assert b.quality is not None and b.quality <= 1.2
    # the rows tile the erasure axis from the clean channel to the worst measured one
    assert pol.rows[0].level_from == 0.0 and pol.rows[-1].level_to == pytest.approx(0.3)
    assert all(a.level_to == pytest.approx(c.level_from) for a, c in zip(pol.rows, pol.rows[1:], strict=False))
    row = next(r for r in pol.rows if r.level_from <= 0.1 <= r.level_to)
    assert (row.cut, row.wire_dtype) == (b.cut, b.wire_dtype)
    # deeper cuts are more robust here: the chosen cut never moves shallower as erasure grows
    cuts = [r.cut for r in pol.rows]
    assert cuts == sorted(cuts) and cuts[0] < cuts[-1]
    assert "policy: channel state -> cut and wire" in text and "ppl ratio <= 1.2" in text
    assert {i.role for i in plan.inputs} >= {"device", "server", "robustness"}


def test_clean_channel_plan_is_exact_without_measurement(files, capsys, tmp_path):
    # No impairment: fp32 crossing any cut and token ids at cut 0 are exact, so the fast server wins.
    out = tmp_path / "plan.json"
    run_ok(capsys, *base(files), "--max-ppl-ratio", "1.0", "-o", out)
    plan = load_document(out, Plan)
    assert plan.policy.impairment == "none" and plan.best.cut == 0 and plan.best.quality == 1.0
    assert len(plan.policy.rows) == 1 and plan.policy.rows[0].level_from is None


def test_distribution_plan_lists_each_state(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    text = run_ok(capsys, *base(files), "--max-ppl-ratio", "1.2", "--states", files["states"], "-o", out)
    pol = load_document(out, Plan).policy
    assert pol.source == "distribution" and len(pol.states) == 3
    assert [s.state.probability for s in pol.states] == [0.5, 0.3, 0.2]
    assert pol.expected_objective <= pol.static_expected_objective + 1e-9
    assert all(s.quality_bound <= 1.2 for s in pol.states)
    assert "choice at each given state" in text


def test_trace_replay_compares_methods(files, capsys, tmp_path):
    out, rep = tmp_path / "plan.json", tmp_path / "replay.json"
    text = run_ok(capsys, *base(files), "--max-ppl-ratio", "1.2", "--trace", files["trace"], "--switch-delay", "0ms",
                  "--replay-out", rep, "-o", out)
    pol = load_document(out, Plan).policy
    by = {m.method: m for m in pol.replay}
    assert {"policy", "oracle", "paper-reward", "fixed cut 0", "fixed cut 8"} <= set(by)
    assert by["policy"].budget_violations == 0
    # without a switching cost the oracle is the policy, and no budget-keeping fixed cut beats it
    assert by["oracle"].mean_objective == pytest.approx(by["policy"].mean_objective)
    for m in pol.replay:
        if m.kind == "fixed" and m.budget_violations == 0:
            assert by["policy"].mean_objective <= m.mean_objective + 1e-9
    assert by["policy"].model_evaluations == pol.model_evaluations > 0 and by["fixed cut 1"].model_evaluations == 0
    # one wire precision: fewer choices, fewer measured points behind them
    one = by["policy fp32 only"]
    assert one.mean_objective >= by["policy"].mean_objective - 1e-9
    assert 0 < one.model_evaluations < by["policy"].model_evaluations
    replay = load_document(rep, ReplayReport)
    assert len(replay.t_s) == 40 and {m.method for m in replay.methods} == set(by)
    steps = next(m for m in replay.methods if m.method == "policy")
    assert sum(steps.switched) == by["policy"].switches
    assert "replay over the trace" in text


def test_switching_delay_defaults_to_one_rtt(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    run_ok(capsys, *base(files), "--max-ppl-ratio", "1.2", "--trace", files["trace"], "-o", out)
    assert load_document(out, Plan).policy.switch_delay_ms == 5.0


@pytest.mark.parametrize("extra, fragment", [
    (["--erasure", "1.5"], "--erasure 1.5: an erasure probability must be in [0, 1]"),
    (["--erasure", "-0.1"], "must be in [0, 1]"),
    (["--snr-db", "abc"], "--snr-db 'abc': not a number"),
    (["--max-ppl-ratio", "0.9", "--erasure", "0.1"], "must be a number >= 1"),
    (["--min-cosine", "0.99", "--erasure", "0.1"], "--min-cosine: the robustness profile measures perplexity_ratio"),
    (["--erasure", "0.1", "--trace", "TRACE"], "give one channel description"),
    (["--snr-db", "10"], "the robustness profile has no awgn points: give an erasure probability"),
])
def test_bad_channel_options_exit_2_and_leave_the_output(files, capsys, tmp_path, extra, fragment):
    out = tmp_path / "plan.json"
    out.write_text("previous")
    extra = [str(files["trace"]) if e == "TRACE" else e for e in extra]
    assert fragment in run_bad(capsys, *base(files), *extra, "-o", out)
    assert out.read_text() == "previous"


@pytest.mark.parametrize("text, fragment", [
    ("t_s,erasure_p\n0,0.1\n,0.2\n", "row 2: missing t_s"),
    ("t_s,erasure_p\n0,0.1\n0.5,0.2\n0.4,0.3\n", "does not come after"),
])
def test_bad_traces_exit_2(files, capsys, tmp_path, text, fragment):
    trace = tmp_path / "bad.csv"
    trace.write_text(text)
    out = tmp_path / "plan.json"
    out.write_text("previous")
    assert fragment in run_bad(capsys, *base(files), "--trace", trace, "-o", out)
    assert out.read_text() == "previous"


def test_robustness_profile_of_another_model_exits_2(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    out.write_text("previous")
    args = base(files)
    args[args.index(str(files["rob"]))] = str(files["other"])
    assert "the robustness profile is of another model" in run_bad(capsys, *args, "--erasure", "0.1", "-o", out)
    assert out.read_text() == "previous"
    args[args.index(str(files["other"]))] = str(files["cos"])
    assert "--max-ppl-ratio: the robustness profile measures pooled_cosine" in run_bad(
        capsys, *args, "--max-ppl-ratio", "1.1")


def test_channel_options_need_robustness(files, capsys):
    assert "--erasure needs --robustness" in run_bad(
        capsys, "plan", "--device-profile", files["dev"], "--server-speedup", "4", "--rate", "5Mbps", "--erasure", "0.1")
    assert "--replay-out needs --robustness and --trace" in run_bad(
        capsys, *base(files), "--erasure", "0.1", "--replay-out", files["dev"].parent / "r.json")
    assert "--prune-report is not combined with --robustness" in run_bad(
        capsys, *base(files), "--prune-report", files["dev"])


def test_trace_command_writes_a_seeded_trace(capsys, tmp_path):
    out = tmp_path / "t.json"
    text = run_ok(capsys, "trace", "--kind", "gauss-markov", "--mean-snr-db", "10", "--duration", "2s", "--block",
                  "100ms", "--seed", "3", "--bandwidth", "10MHz", "--erasure-model", "qpsk", "-o", out)
    assert "20 steps of 100 ms" in text
    first = out.read_text()
    run_ok(capsys, "trace", "--kind", "gauss-markov", "--mean-snr-db", "10", "--duration", "2s", "--block", "100ms",
           "--seed", "3", "--bandwidth", "10MHz", "--erasure-model", "qpsk", "-o", out)
    strip = [ln for ln in first.splitlines() if "created_utc" not in ln]
    assert strip == [ln for ln in out.read_text().splitlines() if "created_utc" not in ln]
    assert "'ricean' is not one of" in run_bad(capsys, "trace", "--kind", "ricean", "-o", out)
    assert "--mean-snr-db 'x'" in run_bad(capsys, "trace", "--mean-snr-db", "x", "-o", out)
    assert strip == [ln for ln in out.read_text().splitlines() if "created_utc" not in ln]


def test_plan_with_robustness_imports_no_torch(files):
    args = base(files) + ["--max-ppl-ratio", "1.2", "--trace", str(files["trace"]), "--json"]
    code = (f"import sys; from coinfer.cli.main import main; rc = main({args!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert '"policy"' in proc.stdout
