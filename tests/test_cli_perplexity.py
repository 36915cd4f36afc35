"""`coinfer perplexity`: the figure with its protocol, and bad text as one line, exit 2."""

from __future__ import annotations

import json
import math

import pytest
import torch

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


def test_json_is_the_document_alone_and_matches_a_hand_computation(tmp_path, capsys):
    from coinfer.models.corpora import resolve_text
    from coinfer.models.loading import load_model

    assert main([*ARGS, "--json", "-q"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout holds the one document and nothing else
    rep = PerplexityReport.model_validate(doc)
    assert doc["kind"] == "perplexity_report" and rep.figures.protocol.window == 64
    # By hand: byte tokens, 3 non-overlapping windows of 64, each window's first token unscored.
    lm = load_model("llama-small")
    vocab = lm.adapter.vocab_size
    ids = [b % vocab for b in resolve_text("builtin", "--eval-text", "builtin").text.encode()][:192]
    nll = 0.0
    with torch.no_grad():
        for s in range(0, 192, 64):
            x = torch.tensor([ids[s : s + 64]])
            lp = lm.model(x).logits[0, :-1].double().log_softmax(-1)
            nll -= float(lp.gather(-1, x[0, 1:, None]).sum())
    assert rep.figures.perplexity == pytest.approx(math.exp(nll / 189), rel=1e-5)
    assert rep.figures.protocol.scored_tokens == 189


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
