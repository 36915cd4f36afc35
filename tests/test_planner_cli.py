"""`coinfer plan` end to end on synthetic profiles: output, files, bad input, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from coinfer.cli.main import main
from coinfer.planner.cost import Budgets, Objective, Workload, build_cost_model, derive_server_profile
from coinfer.planner.link import Link
from coinfer.planner.search import search
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report
from coinfer.reports import Plan, Profile, load_document, write_json
from coinfer.reports.io import file_sha256


@pytest.fixture
def files(tmp_path):
    dev = synthetic_profile(6, seq_len=32, hidden=128)
    paths = {
        "dev": tmp_path / "dev.json",
        "srv": tmp_path / "srv.json",
        "prune": tmp_path / "prune.json",
        "other": tmp_path / "other.json",
    }
    write_json(dev, paths["dev"])
    write_json(derive_server_profile(dev, 5.0), paths["srv"])
    write_json(synthetic_prune_report(6, ratios=(0.2, 0.5), speedups=(1.3, 1.8), distortions=(0.01, 0.2), hidden=128),
               paths["prune"])
    write_json(synthetic_profile(6, seq_len=32, hidden=128, config="cd"), paths["other"])
    return paths


def run_ok(capsys, *args):
    code = main(["plan", *map(str, args)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def run_bad(capsys, *args):
    code = main(["plan", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_plan_writes_versioned_file_with_hashes(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    text = run_ok(capsys, "--device-profile", files["dev"], "--server-speedup", 5, "--prune-report", files["prune"], "--rate", "20Mbps",
                  "--rtt", "10ms", "--decode-steps", 8, "--freq-range", "0.5:1.0:3", "--max-distortion", 0.05,
                  "-o", out)
    plan = load_document(out, Plan)
    assert plan.kind == "plan" and plan.schema_version == 1
    roles = {i.role: i for i in plan.inputs}
    assert roles["device"].sha256 == file_sha256(files["dev"])
    assert roles["server"].derived and roles["server"].sha256 == file_sha256(files["dev"])
    assert roles["prune"].sha256 == file_sha256(files["prune"])
    # Independent check of the optimum: the same search on the same inputs in-process.
    dev = load_document(files["dev"], Profile)
    model = build_cost_model(dev, derive_server_profile(dev, 5.0), Workload(32, 8), "fp32",
                             synthetic_prune_report(6, ratios=(0.2, 0.5), speedups=(1.3, 1.8),
                                                    distortions=(0.01, 0.2), hidden=128))
    res = search(model, Link(rate_bps=20e6, rtt_ms=10), np.array([1.0, 0.75, 0.5]), Objective(),
                 Budgets(distortion=0.05))
    assert plan.best.cut == res.best.cut and plan.best.objective == pytest.approx(res.best.objective)
    assert plan.best.ratio == 0.2  # 0.5 breaks the distortion budget
    assert len(plan.candidates) == 6 + 3
    assert plan.gain_over_all_device == pytest.approx(plan.all_device.objective / plan.best.objective)
    assert "derived" in " ".join(plan.notes)
    assert f"best: cut {plan.best.cut}" in text and f"*{plan.best.cut}" in text
    assert "every cut" in text and "prefill" in text and "per token" in text


def test_json_and_sweep(files, capsys, tmp_path):
    text = run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "20Mbps",
                  "--sweep-rate", "10kbps:10Gbps:50", "--json")
    plan = Plan.model_validate(json.loads(text))
    sweep = plan.rate_sweep
    assert sweep[0].rate_from_bps == pytest.approx(1e4) and sweep[-1].rate_to_bps == pytest.approx(1e10)
    assert sweep[0].cut == 8 and sweep[-1].cut == 0  # slow: all on device; fast: all on server
    assert all(a.rate_to_bps < b.rate_from_bps for a, b in zip(sweep, sweep[1:], strict=False))
    assert not plan.inputs[1].derived


def test_wireless_with_power_choice(files, capsys):
    text = run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--bandwidth", "5MHz",
                  "--tx-power-range", "10dBm:23dBm:4", "--distance", "200m", "--objective", "weighted",
                  "--energy-weight", "100", "--json")
    plan = Plan.model_validate(json.loads(text))
    assert plan.link.kind == "wireless" and plan.link.tx_power_steps == 4
    assert plan.link.tx_power_min_w == pytest.approx(0.01) and plan.link.tx_power_max_w == pytest.approx(10 ** -0.7)


def test_chain_cli(files, capsys, tmp_path):
    text = run_ok(capsys, "--device-profile", f"phone={files['dev']}", "--device-profile", f"laptop={files['srv']}",
                  "--server-speedup", 20, "--link", "phone-laptop:100Mbps:2ms", "--link", "laptop-server:1Gbps:20ms",
                  "--json")
    plan = Plan.model_validate(json.loads(text))
    assert plan.best is None and plan.chain.members == ["phone", "laptop", "server"]
    assert sum(s.num_stages for s in plan.chain.segments) == 8
    assert [h.link for h in plan.chain.hops] == ["phone-laptop", "laptop-server"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rate", "0Mbps"], "must be positive"),
        (["--rate", "nanMbps"], "not a rate"),
        (["--rate", "20furlongs"], "unknown rate unit 'furlongs'"),
        (["--rate", "20MBps"], "write Mbps for megabits or MB/s for megabytes"),
        (["--rate", "20Mbps", "--max-energy", "1mj"], "did you mean mJ or MJ"),
        (["--rate", "20"], "missing unit"),
        (["--rate", "-5Mbps"], "must be positive"),
        (["--rate", "20Mbps", "--rtt", "-1ms"], "must not be negative"),
        (["--rate", "20Mbps", "--max-latency", "-5ms"], "must not be negative"),
        (["--rate", "20Mbps", "--max-distortion", "-0.1"], "not negative"),
        (["--rate", "20Mbps", "--max-memory", "-1GB"], "must not be negative"),
        (["--rate", "20Mbps", "--wire-dtype", "fp8"], "fp8"),
        (["--rate", "20Mbps", "--objective", "speed"], "speed"),
        (["--rate", "20Mbps", "--freq-range", "1.0:0.5"], "low end is above"),
        (["--rate", "20Mbps", "--max-latency", "0.1ms"], "latency budget of 0.1 ms"),
        (["--bandwidth", "5MHz", "--channel-gain", "1e-9"], "needs --tx-power"),
        (["--channel-gain", "1e-9", "--rate", "1Mbps"], "give --bandwidth too"),
        ([], "give a link"),
    ],
)
def test_bad_input_is_one_line(files, capsys, extra, message):
    line = run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], *extra)
    assert message in line


def test_bad_files_are_one_line(files, capsys, tmp_path):
    assert "different models" in run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["other"], "--rate", "1Mbps")
    plan_file = tmp_path / "plan.json"
    run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "1Mbps", "-o", plan_file)
    assert "expected a 'profile' file, found a 'plan' file" in run_bad(
        capsys, "--device-profile", plan_file, "--server-profile", files["srv"], "--rate", "1Mbps")
    d = json.loads(files["dev"].read_text())
    d["schema_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(d))
    assert "version 99 is not supported" in run_bad(capsys, "--device-profile", tmp_path / "v99.json", "--server-profile",
                                                    files["srv"], "--rate", "1Mbps")
    assert "another model" in run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "1Mbps",
                                      "--prune-report", _other_prune(tmp_path))
    assert "not both" in run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--server-speedup", 2,
                                 "--rate", "1Mbps")
    assert "no such file" in run_bad(capsys, "--device-profile", tmp_path / "nope.json", "--server-speedup", 2, "--rate", "1Mbps")


def _other_prune(tmp_path):
    p = tmp_path / "prune_other.json"
    write_json(synthetic_prune_report(6, config="cd", hidden=128), p)
    return p


def test_nothing_written_on_bad_input(files, capsys, tmp_path):
    out = tmp_path / "plan.json"
    run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "1Mbps", "--max-latency", "0.001ms",
            "-o", out)
    assert not out.exists()
    assert "does not exist" in run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "1Mbps",
                                       "-o", tmp_path / "missing" / "plan.json")


def test_subprocess_bad_input_has_no_traceback(files):
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", "plan", "--device-profile", str(files["dev"]),
                           "--server-speedup", "4", "--rate", "1.5 Gbit"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown rate unit 'Gbit'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_planner_imports_no_torch():
    code = ("import coinfer.planner, coinfer.planner.plan, coinfer.planner.options, coinfer.planner.chain, "
            "coinfer.cli.plan_cmd; import sys; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'transformers' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_plan_best_equals_the_prediction_for_its_configuration(files, capsys, tmp_path):
    # `coinfer run --cut K` without a plan predicts through predict_cut: it must agree with the plan.
    from coinfer.planner import predict_cut

    out = tmp_path / "plan.json"
    run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "5Mbps", "--rtt", "4ms",
           "--decode-steps", 5, "--prompt-tokens", 48, "--wire-dtype", "fp16", "--prune-report", files["prune"],
           "--freq-range", "0.6:1:3", "-o", out)
    plan = load_document(out, Plan)
    b = plan.best
    pred = predict_cut(files["dev"], files["srv"], b.cut, 5e6, 4.0, "fp16", prompt_tokens=48, new_tokens=5,
                       prune=files["prune"], ratio=b.ratio, freq_scale=b.freq_scale)
    assert pred.prefill.total_ms == pytest.approx(b.prefill.total_ms, rel=1e-12)
    assert pred.per_token.total_ms == pytest.approx(b.per_token.total_ms, rel=1e-12)
    assert pred.total_latency_ms == pytest.approx(b.total_latency_ms, rel=1e-12)
    assert pred.device_memory_bytes == b.device_memory_bytes


def test_chain_bad_links_are_one_line(files, capsys):
    a, b = f"a={files['dev']}", f"b={files['srv']}"
    assert "not a consecutive pair of the chain a -> b" in run_bad(capsys, "--device-profile", a, "--device-profile", b,
                                                                   "--link", "a-c:1Mbps")
    assert "missing --link a-b" in run_bad(capsys, "--device-profile", a, "--device-profile", b, "--link", "b-server:1Mbps",
                                           "--server-speedup", 3)
    assert "expected A-B:RATE" in run_bad(capsys, "--device-profile", a, "--device-profile", b, "--link", "ab")
    assert "memory caps" in run_bad(capsys, "--device-profile", a, "--device-profile", b, "--link", "a-b:1Mbps",
                                    "--member-memory", "a:0B", "--member-memory", "b:0B")


def test_chain_throughput_objective(files, capsys):
    text = run_ok(capsys, "--device-profile", f"a={files['dev']}", "--device-profile", f"b={files['dev']}", "--link", "a-b:1Gbps",
                  "--objective", "throughput", "--json")
    plan = Plan.model_validate(json.loads(text))
    assert plan.objective == "throughput" and plan.chain.objective == "throughput"
    # Two equal members on a fast link: the bottleneck is about half the whole model's compute.
    whole = sum(s.compute_ms for s in plan.chain.segments)
    assert plan.chain.bottleneck_ms < 0.75 * whole
    assert "for chains" in run_bad(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "1Mbps",
                                   "--objective", "throughput")


def test_nominal_candidates_are_unpruned_at_full_frequency(files, capsys):
    text = run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "5Mbps", "--prune-report",
                  files["prune"], "--freq-range", "0.5:0.8:2", "--json")
    plan = Plan.model_validate(json.loads(text))
    assert [c.cut for c in plan.nominal] == list(range(9))
    assert all(c.ratio == 0 and c.freq_scale == 1.0 for c in plan.nominal)
    assert any(c.ratio > 0 or c.freq_scale != 1.0 for c in plan.candidates)
    # The device-side terms of a nominal candidate differ from the searched one only by DVFS and pruning.
    dev_only = plan.nominal[-1]
    assert dev_only.prefill.device_ms == pytest.approx(sum(
        s.prefill.median_ms for s in load_document(files["dev"], Profile).stages))


def test_random_weights_are_labelled(files, capsys):
    out = run_ok(capsys, "--device-profile", files["dev"], "--server-profile", files["srv"], "--rate", "20Mbps")
    assert "weights: random" in out.splitlines()[0]


def test_a_perplexity_budget_bounds_the_pruning_ratio(tmp_path, capsys):
    dev = synthetic_profile(6, seq_len=32, hidden=128)
    prune = synthetic_prune_report(6, ratios=(0.2, 0.5), speedups=(1.3, 1.8), distortions=(0.01, 0.2), hidden=128,
                                   ppl_ratios=(1.1, 1.6))
    write_json(dev, tmp_path / "dev.json")
    write_json(prune, tmp_path / "prune.json")
    base = ["--device-profile", tmp_path / "dev.json", "--server-speedup", "5", "--prune-report", tmp_path / "prune.json",
            "--rate", "20Mbps", "--rtt", "10ms", "--prompt-tokens", "32", "--decode-steps", "8", "--json"]
    model = build_cost_model(dev, derive_server_profile(dev, 5.0), Workload(32, 8), "fp32", prune)
    for limit, allowed in ((1.7, {0.0, 0.2, 0.5}), (1.2, {0.0, 0.2}), (1.05, {0.0})):
        plan = Plan.model_validate_json(run_ok(capsys, *base, "--max-ppl-ratio", limit))
        res = search(model, Link(rate_bps=20e6, rtt_ms=10), np.array([1.0]), Objective(), Budgets(ppl_ratio=limit))
        assert plan.best.ratio in allowed and plan.best.ratio == res.best.ratio and plan.best.cut == res.best.cut
        assert plan.best.ppl_ratio == pytest.approx({0.0: 1.0, 0.2: 1.1, 0.5: 1.6}[plan.best.ratio])
        assert plan.budgets["ppl_ratio"] == limit
    # unbounded, the faster ratio wins
    assert Plan.model_validate_json(run_ok(capsys, *base)).best.ratio == 0.5


def test_a_perplexity_budget_without_measured_perplexity_keeps_the_dense_model(files, capsys):
    plan = Plan.model_validate_json(run_ok(capsys, "--device-profile", files["dev"], "--server-speedup", "5",
                                           "--prune-report", files["prune"], "--rate", "20Mbps", "--json",
                                           "--max-ppl-ratio", "1.5"))
    assert plan.best.ratio == 0 and plan.best.ppl_ratio == 1.0
