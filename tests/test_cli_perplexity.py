"""`coinfer perplexity`: the figure with its protocol, and bad text as one line, exit 2."""

from __future__ import annotations

import pytest

from coinfer.cli.main import main
from coinfer.reports.io import load_document
from coinfer.reports.quality import PerplexityReport

ARGS = ["perplexity", "--model", "llama-small", "--eval-text", "builtin", "--window", "64", "--eval-tokens", "200"]


def test_report_and_printed_protocol(tmp_path, capsys):
    out = tmp_path / "ppl.json"
    assert main([*ARGS, "--stride", "32", "-o", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    rep = load_document(out, PerplexityReport)
    p = rep.figures.protocol
    assert (p.text.name, p.window, p.stride, p.tokens, p.tokenizer) == ("builtin", 64, 32, 192, "bytes")
    assert p.scored_tokens == 191 and rep.model.weights_label == "random"
    assert f"perplexity {rep.figures.perplexity:.4g}" in printed
    assert p.describe() in printed


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("", [], "empty file"),
        ("too short for a window\n", [], "shorter than one window of 64 tokens"),
        (None, [], "no such file"),
        ("words " * 100, ["--score-first"], "needs a BOS"),
    ],
)
def test_bad_eval_text_is_one_line_exit_2_nothing_written(tmp_path, capsys, content, extra, message):
    text = tmp_path / "eval.txt"
    if content is not None:
        text.write_text(content, encoding="utf-8")
    out = tmp_path / "ppl.json"
    args = [*ARGS[:4], str(text), *ARGS[5:], *extra, "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
