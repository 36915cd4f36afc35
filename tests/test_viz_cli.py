"""`coinfer report`, `show` and `compare` end to end on the golden files: files written, bad input, no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from coinfer.cli.main import main
from coinfer.reports.profile import Timing
from coinfer.viz.compare import differs_beyond_noise

DATA = Path(__file__).parent / "data" / "report"
GPT2 = [str(DATA / f) for f in ("device.profile.json", "server.profile.json", "prune.json", "plan.json", "run.json")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    assert main(["report", *GPT2, "-o", str(out)]) == 0
    return out


def test_report_folder_holds_page_twin_and_pictures(written):
    figs = sorted(p.name for p in (written / "figures").iterdir())
    stems = sorted({Path(f).stem for f in figs})
    assert len(stems) == 8 and figs == sorted([f"{s}.png" for s in stems] + [f"{s}.svg" for s in stems])
    for f in (written / "figures").iterdir():
        head = f.read_bytes()[:64]
        assert head.startswith(b"\x89PNG") if f.suffix == ".png" else b"<svg" in f.read_bytes()[:600]
    page = (written / "report.html").read_text()
    assert page.count("<img src='data:image/svg+xml;base64,") == 8 and "src='figures/" not in page
    md = (written / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(linked) == 8 and all((written / p).is_file() for p in linked)
    for text in (page, md):
        assert "weights: random" in text and "tiny-gpt2" in text
        assert "gain over all on device" in text and "gain over all on server" in text
        assert "perplexity protocol" in text and "calibration" in text and "energy source" in text
    assert not [p for p in written.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_non_empty_output_needs_force_and_stays_intact(written, capsys):
    before = (written / "report.md").read_text()
    assert main(["report", GPT2[0], "-o", str(written)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (written / "report.md").read_text() == before
    out = written.parent / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["report", GPT2[0], "-o", str(out), "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "report.html").is_file()
    assert sorted(p.stem for p in (out / "figures").glob("*.png")) == ["profile-flops", "profile-latency"]


@pytest.mark.parametrize("bad, message", [
    ("mixed", "another model"),
    ("kind", "expected one of: profile, prune_report, plan, run_result"),
    ("version", "schema version 99 is not supported"),
    ("json", "malformed JSON"),
    ("missing", "no such file"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(bad, message, tmp_path, capsys):
    files = [GPT2[0]]
    if bad == "mixed":
        files.append(str(DATA / "bert.prune.json"))
    elif bad == "kind":
        (tmp_path / "x.json").write_text(json.dumps({"kind": "shard_config", "schema_version": 1}))
        files.append(str(tmp_path / "x.json"))
    elif bad == "version":
        doc = json.loads((DATA / "plan.json").read_text())
        doc["schema_version"] = 99
        (tmp_path / "x.json").write_text(json.dumps(doc))
        files.append(str(tmp_path / "x.json"))
    elif bad == "json":
        (tmp_path / "x.json").write_text("{")
        files.append(str(tmp_path / "x.json"))
    else:
        files.append(str(tmp_path / "nope.json"))
    out = tmp_path / "report"
    assert main(["report", *files, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_show_prints_the_commands_tables(capsys):
    assert main(["show", GPT2[3]]) == 0
    out = capsys.readouterr().out
    assert "best: cut 0 (server-only)" in out and "best configuration by uplink rate" in out
    assert main(["show", GPT2[4]]) == 0
    out = capsys.readouterr().out
    assert "measured vs predicted" in out and "tokens identical to the unsplit model: yes" in out
    assert main(["show", GPT2[2]]) == 0
    out = capsys.readouterr().out
    assert "empirical C = " in out and "0.25" in out
    assert main(["show", GPT2[0]]) == 0
    out = capsys.readouterr().out
    assert "block.3" in out and "weights: random" in out


def test_compare_two_profiles_flags_differences_beyond_the_noise(capsys):
    assert main(["compare", GPT2[0], GPT2[1]]) == 0
    out = capsys.readouterr().out
    # The server profile is the device's derived 8x faster: every stage is 0.125 of A ...
    prefill, dec64, dec128 = out.split("decode ms per token at")[0], *out.split("decode ms per token at")[1:]
    assert prefill.count("0.125*") == 6 and dec64.count("0.125*") == 6 and "differs: derived" in out
    # ... but at 128 tokens embed and head have IQRs (3.553 and 0.444 ms) wider than their difference.
    rows = {line.split()[0]: line for line in dec128.splitlines() if line.strip().startswith(("embed", "head", "block"))}
    assert rows["embed"].rstrip().endswith("0.125") and rows["head"].rstrip().endswith("0.125")
    assert rows["block.0"].rstrip().endswith("0.125*")
    assert main(["compare", GPT2[0], GPT2[0]]) == 0
    out = capsys.readouterr().out
    assert "1.000" in out and "*" not in out.split("noise", 1)[1].split("decode", 1)[0]


def test_noise_rule():
    a = Timing(median_ms=10.0, iqr_ms=2.0, repeats=5)
    assert not differs_beyond_noise(a, Timing(median_ms=11.9, iqr_ms=2.0, repeats=5))
    assert differs_beyond_noise(a, Timing(median_ms=12.1, iqr_ms=2.0, repeats=5))


def test_compare_prune_reports_and_wrong_pairs(capsys):
    assert main(["compare", GPT2[2], GPT2[2]]) == 0
    out = capsys.readouterr().out
    assert "per pruning ratio" in out and "0.25" in out and "0.5" in out
    assert main(["compare", GPT2[2], GPT2[3]]) == 2
    assert "compare needs two files of one kind" in capsys.readouterr().err
    assert main(["compare", GPT2[2], str(DATA / "bert.prune.json")]) == 2
    assert "prune different models" in capsys.readouterr().err


def test_report_imports_no_torch(tmp_path):
    # The plan alone: it loads its input profiles and runs the planner's search for the curves.
    code = (
        "import sys; from coinfer.cli.main import main; "
        f"rc = main(['report', {GPT2[3]!r}, '-o', {str(tmp_path / 'r')!r}]); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r" / "report.html").is_file()
