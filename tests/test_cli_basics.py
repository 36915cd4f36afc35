"""The command line: help, version, and bad input as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coinfer.cli.main import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("inspect", "models"):
        assert cmd in out


def test_version(capsys):
    import coinfer

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"coinfer {coinfer.__version__}"


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "--model", "/definitely/not/here"], "no such folder"),
        (["inspect", "--model", "gpt2", "--seq-len", "0"], "must be positive"),
        (["inspect", "--model", "gpt2", "--wire-dtype", "fp8"], "fp8"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_inspect_verifies_split(capsys, tmp_path):
    from coinfer.models.loading import build_from_config

    m = build_from_config(dict(model_type="llama", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=60), name="t")
    m.model.save_pretrained(tmp_path)
    assert main(["inspect", "--model", str(tmp_path), "--seq-len", "8", "--verify", "2"]) == 0
    out = capsys.readouterr().out
    assert "max |split - unsplit| = 0" in out
    assert "block.2" in out and "weights: real" in out
