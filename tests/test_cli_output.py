"""What the commands print: one vocabulary, old spellings, --json / -q / -v, wide tables when piped, progress."""

from __future__ import annotations

import io
import json

import pytest
from typer.testing import CliRunner

from coinfer.cli import common
from coinfer.cli.app import app, err_console
from coinfer.cli.main import main
from coinfer.planner.cost import derive_server_profile
from coinfer.planner.plan import MODEL_NOTES
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report
from coinfer.reports import Plan, write_json


@pytest.fixture
def files(tmp_path):
    dev = synthetic_profile(6, seq_len=32, hidden=128)
    paths = {"dev": tmp_path / "dev.json", "srv": tmp_path / "srv.json", "prune": tmp_path / "prune.json"}
    write_json(dev, paths["dev"])
    write_json(derive_server_profile(dev, 5.0), paths["srv"])
    write_json(synthetic_prune_report(6, ratios=(0.2, 0.5), speedups=(1.3, 1.8), distortions=(0.01, 0.2), hidden=128),
               paths["prune"])
    return {k: str(v) for k, v in paths.items()}


def plan(files, *extra):
    return ["plan", "--device-profile", files["dev"], "--server-profile", files["srv"], *extra]


def test_old_spellings_work_with_one_warning_line_each(files, capsys, tmp_path):
    new, old = tmp_path / "new.json", tmp_path / "old.json"
    assert main([*plan(files, "--rate", "20Mbps", "--decode-steps", "4", "--prune-report", files["prune"]),
                 "-o", str(new), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["plan", "--device", files["dev"], "--server", files["srv"], "--rate", "20Mbps", "--new-tokens=4",
                 "--prune", files["prune"], "-o", str(old), "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split()[3] for line in err] == ["--device", "--server", "--new-tokens", "--prune"]
    assert all(line.startswith("warning: coinfer plan ") and "deprecated, use --" in line for line in err)
    a, b = json.loads(new.read_text()), json.loads(old.read_text())
    assert a["best"] == b["best"] and a["new_tokens"] == b["new_tokens"] == 4


def test_old_unitless_options_get_their_unit():
    table = {"--power-w": common.Renamed("--power", "W"), "--min-time-s": common.Renamed("--min-time", "s"),
             "--out": common.Renamed("--output")}
    args = ["--power-w", "5", "--min-time-s=0.5", "--out", "r.json", "--", "--out"]
    assert common._rewrite("x", args, table) == ["--power", "5W", "--min-time=0.5s", "--output", "r.json", "--",
                                                 "--out"]


def test_json_is_the_document_alone_and_quiet_prints_nothing(files, capsys):
    assert main([*plan(files, "--rate", "20Mbps", "--json", "-v")]) == 0
    out = capsys.readouterr().out
    Plan.model_validate(json.loads(out))
    assert main([*plan(files, "--rate", "20Mbps", "-q")]) == 0
    assert capsys.readouterr().out == ""


def test_notes_short_by_default_every_note_with_v(files, capsys):
    assert main([*plan(files, "--rate", "20Mbps")]) == 0
    short = capsys.readouterr().out
    assert not any(n in short for n in MODEL_NOTES)
    assert f"({len(MODEL_NOTES)} more notes on method: -v shows them" in short
    assert main([*plan(files, "--rate", "20Mbps", "-v")]) == 0
    full = capsys.readouterr().out
    assert all(f"note: {n}" in full for n in MODEL_NOTES) and "more notes on method" not in full


def test_piped_tables_are_not_cut_to_80_columns(files):
    # CliRunner is not a terminal: the plain layout must show every column and number in full.
    args = [*plan(files, "--prune-report", files["prune"], "--bandwidth", "5MHz", "--tx-power-range", "10dBm:23dBm:4",
                  "--distance", "200m", "--freq-range", "0.5:1:3", "--objective", "weighted", "--max-energy", "5J")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": ""})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("cut "))
    for col in ("ratio", "freq", "tx W", "prefill", "token", "total ms", "J", "MB", "D_y", "ok"):
        assert col in header
    assert max(map(len, lines)) > 80  # the header line is not wrapped either


def test_decode_steps_are_named_for_what_they_are(files, capsys):
    assert main([*plan(files, "--rate", "20Mbps", "--decode-steps", "8")]) == 0
    out = capsys.readouterr().out
    assert "32 prompt tokens + 8 decode steps (9 generated tokens: the prefill yields the first)" in out
    # The default: 32 decode steps for a decoder, in plan as in run.
    assert main([*plan(files, "--rate", "20Mbps", "--json")]) == 0
    assert json.loads(capsys.readouterr().out)["new_tokens"] == common.DEFAULT_DECODE_STEPS


def test_baseline_wording(files, capsys):
    # A fast link: everything on the (5x faster) server is the plan itself.
    assert main([*plan(files, "--rate", "10Gbps")]) == 0
    out = capsys.readouterr().out
    assert "best: cut 0" in out
    assert "vs all on server (unpruned):" in out and "the plan is this configuration" in out
    assert "1x" not in out and "x better" not in out
    # Against all on device: 29.57 ms vs the plan's 5.914 ms.
    assert "vs all on device (unpruned): 29.57 ms" in out and "the plan's latency is 5x lower" in out


def test_a_small_gain_is_not_1x():
    from coinfer.cli.plan_cmd import _lower

    assert _lower(1.0047) == "0.47% lower" and _lower(1.83) == "45% lower" and _lower(8.4) == "8.4x lower"


def test_sweep_without_rate_speaks_of_rate(files, capsys):
    assert main([*plan(files, "--sweep-rate", "1Mbps:1Gbps")]) == 2
    err = capsys.readouterr().err
    assert "--sweep-rate needs --rate too" in err and "wireless" not in err
    assert main([*plan(files, "--bandwidth", "5MHz", "--tx-power", "0.2W", "--distance", "100m",
                       "--sweep-rate", "1Mbps:1Gbps")]) == 2
    assert "give --rate instead of --bandwidth" in capsys.readouterr().err


def test_chain_without_server_names_its_members(files, tmp_path, capsys):
    args = ["plan", "--device-profile", f"phone={files['dev']}", "--device-profile", f"laptop={files['srv']}",
            "--link", "phone-laptop:100Mbps:2ms", "--prompt-tokens", "48", "-v"]
    assert main(args) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "phone-laptop 100 Mbps RTT 2 ms" in header
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert any(n.startswith("note: phone profile measured 32 prompt tokens") for n in notes)
    assert any(n.startswith("note: laptop profile measured 32 prompt tokens") for n in notes)
    assert not any("device profile" in n or "server profile" in n for n in notes)


def test_chain_header_shows_every_hop(files, capsys):
    args = ["plan", "--device-profile", f"a={files['dev']}", "--device-profile", f"b={files['dev']}",
            "--server-speedup", "3", "--link", "a-b:1Gbps", "--link", "b-server:10Mbps:5ms"]
    assert main(args) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "a-b 1 Gbps RTT 0 ms" in header and "b-server 10 Mbps RTT 5 ms" in header
    assert main([*args, "-v"]) == 0
    notes = capsys.readouterr().out
    assert "server profile derived from the a profile" in notes


def test_progress_only_on_a_terminal(monkeypatch):
    out = common.Output()
    assert not out.progress  # pytest's stderr is not a terminal
    buf = io.StringIO()
    monkeypatch.setattr(err_console, "_force_terminal", True)
    monkeypatch.setattr(err_console, "is_interactive", True)
    monkeypatch.setattr(err_console, "_file", buf)
    assert out.progress and not common.Output(quiet=True).progress and not common.Output(as_json=True).progress
    with out.work("pruning tiny") as status:
        status("pruning tiny: ratio 0.5")
    assert "pruning tiny" in buf.getvalue()


def test_json_mode_keeps_stdout_for_the_document(capsys):
    # Anything the work prints (an exporter's chatter) goes to stderr under --json.
    with common.Output(as_json=True).work("x"):
        print("chatter")
    captured = capsys.readouterr()
    assert captured.out == "" and "chatter" in captured.err


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from coinfer.models.loading import build_from_config

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)
    build_from_config(cfg, name="t").model.save_pretrained(folder)
    return str(folder)


def test_prune_json_on_stdout_alone_and_silent_when_piped(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["prune", "--model", tiny_gpt2, "--ratios", "0.5", "--no-speed", "--windows", "1", "--prompt-tokens", "8"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "prune_report" and [r["requested_ratio"] for r in data["results"]] == [0.5]
    assert result.stderr == "" and list(tmp_path.iterdir()) == []  # no progress in a pipe, no default file
    result = CliRunner().invoke(app, [*args, "-q"])
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    assert [p.name for p in tmp_path.iterdir()] == ["prune.json"]  # without --json the report has its default


def test_run_json_and_output(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Cut L+2 runs everything on the device: no server needed.
    args = ["run", "--model", tiny_gpt2, "--cut", "4", "--prompt-tokens", "4", "--decode-steps", "2", "--no-check"]
    data = json.loads(_stdout_of(main, [*args, "--json"]))
    assert data["kind"] == "run_result" and data["decode_steps"] == 2 and data["prompt_tokens"] == 4
    assert list(tmp_path.iterdir()) == []
    assert main([*args, "--output", "mine.json"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["mine.json"]


def _stdout_of(fn, argv):
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fn(argv) == 0
    return buf.getvalue()


@pytest.mark.parametrize("value", ["20", "20mbit", "20MBps", "20mbps"])
def test_emulate_rate_and_plan_rate_refuse_alike(files, capsys, value):
    # One parser: the same refusal, with the accepted spellings, under each option's own name.
    assert main([*plan(files, "--rate", value)]) == 2
    plan_err = capsys.readouterr().err.strip()
    assert main(["run", "--cut", "1", "--emulate-rate", value]) == 2
    run_err = capsys.readouterr().err.strip()
    assert "\n" not in plan_err and "accepted: bps, kbps, Mbps" in plan_err
    assert run_err == plan_err.replace("--rate", "--emulate-rate", 1)
