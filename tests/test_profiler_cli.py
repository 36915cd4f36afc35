"""`coinfer profile` end to end on a tiny model folder: output file, JSON, table and bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch

from coinfer.cli.main import main
from coinfer.models.loading import build_from_config
from coinfer.reports import Profile, load_document

FAST = ["--prompt-tokens", "8", "--decode-context", "4", "--repeats", "2", "--warmup", "0", "--threads", "1",
        "--power", "5W", "--no-emissions", "--min-time", "0s"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    build_from_config(cfg, name="t").model.save_pretrained(folder)
    return str(folder)


def test_writes_a_loadable_profile_and_prints_the_table(tiny_folder, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", "--model", tiny_folder, *FAST, "-o", str(out)]) == 0
    p = load_document(out, Profile)
    assert [s.name for s in p.stages] == ["embed", "block.0", "block.1", "head"]
    assert p.context.energy_source == "estimate" and p.context.power_w == 5.0
    assert p.gemm_peak_flops_per_s > 0
    bw = p.memory_bandwidth
    assert bw.bytes_per_s == max(bw.copy_bytes_per_s, bw.triad_bytes_per_s) > 0 and bw.buffer_bytes >= 256 * 2**20
    assert p.contention is not None and p.contention.threads == 1 and len(p.contention.kernel_checks) == 5
    text = capsys.readouterr().out
    assert "block.1" in text and "cov " in text and "ESTIMATE" in text and f"wrote {out}" in text
    # the decode step's share of the memory bandwidth, per stage in the table and for the whole model
    whole = p.whole_model.decode[0]
    assert "of BW" in text and f"whole model at {whole.bandwidth_fraction:.0%} of memory bandwidth" in text


def test_json_prints_the_profile(tiny_folder, capsys):
    assert main(["profile", "--model", tiny_folder, *FAST, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "profile" and data["context"]["decode_context_tokens"] == [4]
    Profile.model_validate(data)


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prompt-tokens", "0"], "'--prompt-tokens': Input should be greater than or equal to 1"),
        (["--power", "5"], "--power '5': missing unit"),
        (["--power", "5mw"], "did you mean mW or MW"),
        (["--min-time", "1"], "--min-time '1': missing unit"),
        (["--decode-context", "4,x"], "integers"),
        (["--dtype", "int4"], "--dtype"),
        (["--model", "/no/such/folder"], "no such folder"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_folder, tmp_path, capsys, args, needle):
    out = tmp_path / "p.json"
    argv = ["profile", "--model", tiny_folder, *FAST, *args, "-o", str(out)]
    assert main(argv) == 2
    _one_line_error(capsys, needle)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_unwritable_output_fails_before_work(tiny_folder, tmp_path, capsys):
    assert main(["profile", "--model", tiny_folder, *FAST, "-o", str(tmp_path / "nope" / "p.json")]) == 2
    _one_line_error(capsys, "does not exist")
    assert main(["profile", "--model", tiny_folder, *FAST, "-o", str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(tiny_folder, tmp_path, capsys):
    assert main(["profile", "--model", tiny_folder, *FAST, "--device", "cuda", "-o", str(tmp_path / "p.json")]) == 2
    _one_line_error(capsys, "no CUDA GPU")
    assert not (tmp_path / "p.json").exists()


def test_random_weights_are_labelled(capsys):
    from coinfer.cli.profile_cmd import render_profile
    from coinfer.profiler.measure import ProfileOptions, profile_loaded

    cfg = dict(model_type="gpt2", n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=50)
    p = profile_loaded(
        build_from_config(cfg, name="tiny"),
        ProfileOptions(seq_len=4, decode_context=[], repeats=1, warmup=0, threads=1, power_w=1.0, emissions=False, gemm=False,
                       bandwidth=False),
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(render_profile(p))
    assert "weights: random" in console.export_text()
    assert p.notes[0].startswith("weights: random")


def test_contended_profile_is_flagged_and_strict_keeps_the_previous_file(tiny_folder, tmp_path, capsys, monkeypatch,
                                                                         contended_watch):
    from coinfer.profiler import measure

    monkeypatch.setattr(measure, "QuietWatch", contended_watch)
    args = ["profile", "--model", tiny_folder, *FAST]
    assert main([*args, "--json"]) == 0
    std = capsys.readouterr()
    data = json.loads(std.out)  # the warning goes to stderr: stdout stays JSON
    assert data["contention"]["verdict"] == "contended"
    warnings = [ln for ln in std.err.splitlines() if "CONTENDED" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: this profile was CONTENDED")
    out = tmp_path / "p.json"
    out.write_text("previous")
    assert main([*args, "--strict", "-o", str(out)]) == 2
    _one_line_error(capsys, "--strict: the profile was contended, nothing written: reference kernel 4.00x")
    assert out.read_text() == "previous" and os.listdir(tmp_path) == ["p.json"]
