"""The prune report's quality on an evaluation text: the protocol, the dense model beside each ratio,
and figures that match a hand computation on the rebuilt pruned model."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from coinfer.cli.main import main
from coinfer.models.loading import build_from_config, load_model
from coinfer.pruner import calibration, recipe
from coinfer.reports.io import load_document
from coinfer.reports.prune import PruneReport

EVAL = "Though this be madness, yet there is method in it. " * 20  # bytes: 1,040 tokens
WINDOW, TOKENS = 32, 256


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("q")
    build_from_config(tiny_config("llama", positions=64, vocab=97), name="llama", seed=3).model.save_pretrained(root / "m")
    (root / "eval.txt").write_text(EVAL)
    rep = root / "prune.json"
    args = ["prune", "-m", str(root / "m"), "--ratios", "0,0.5", "--calib", "builtin", "--eval-text", str(root / "eval.txt"),
            "--eval-tokens", str(TOKENS), "--eval-window", str(WINDOW), "--prompt-tokens", "16", "--windows", "4",
            "--no-speed", "-o", str(rep)]
    assert main(args) == 0
    return load_document(rep, PruneReport), root


def _by_hand(model, reference=None) -> tuple[float, float, float]:
    """(perplexity, mean KL(reference || model), top-1 agreement) over non-overlapping windows of
    byte tokens, each window's first token unscored."""
    ids = [b % 97 for b in EVAL.encode()][:TOKENS]
    nll = kl = 0.0
    agree = n = 0
    with torch.no_grad():
        for s in range(0, TOKENS, WINDOW):
            x = torch.tensor([ids[s : s + WINDOW]])
            lp = model(x).logits[0, :-1].log_softmax(-1)
            nll -= float(lp.gather(-1, x[0, 1:, None]).sum())
            if reference is not None:
                rp = reference(x).logits[0, :-1].log_softmax(-1)
                kl += float((rp.exp() * (rp - lp)).sum())
                agree += int((rp.argmax(-1) == lp.argmax(-1)).sum())
            n += WINDOW - 1
    return math.exp(nll / n), kl / n, agree / n


def test_protocol_and_dense_are_recorded(run):
    rep, _ = run
    d = rep.dense_quality
    p = d.protocol
    assert (p.tokens, p.window, p.stride, p.bos_prepended, p.tokenizer) == (TOKENS, WINDOW, WINDOW, False, "bytes")
    assert p.text.sha256 == hashlib.sha256(EVAL.encode()).hexdigest() and p.scored_tokens == 8 * (WINDOW - 1)
    assert rep.calibration.source == "builtin" and rep.schema_version == 3
    r0 = rep.results[0].quality
    assert r0.perplexity == pytest.approx(d.perplexity) and r0.kl_nats == pytest.approx(0, abs=1e-9)
    assert r0.top1_agreement == 1 and r0.reference == "dense"


def test_figures_match_a_hand_computation_on_the_rebuilt_model(run):
    rep, root = run
    dense = load_model(str(root / "m"))
    with torch.no_grad():
        dense.adapter.prepare_for_pruning()
    source, text = calibration.read_text("builtin")
    calib = calibration.build(text, source, dense, 16, 4)
    rec = recipe.resolve("auto", "auto", "auto", True)
    pruned, _ = recipe.Pruner(dense.adapter, list(range(dense.adapter.num_blocks)), calib.windows, rec, 8).prune_copy(0.5)
    ppl0, _, _ = _by_hand(dense.model)
    ppl, kl, top1 = _by_hand(pruned.model, dense.model)
    assert rep.dense_quality.perplexity == pytest.approx(ppl0, rel=1e-5)
    q = rep.results[1].quality
    assert q.perplexity == pytest.approx(ppl, rel=1e-5) and q.kl_nats == pytest.approx(kl, rel=1e-4)
    assert q.top1_agreement == pytest.approx(top1) and q.kl_nats > 0


def test_the_table_prints_the_protocol_and_the_ratio_to_dense(run, capsys):
    rep, root = run
    assert main(["show", str(root / "prune.json")]) == 0
    out = capsys.readouterr().out
    assert "dense perplexity" in out and f"{TOKENS} tokens (bytes tokenizer), window {WINDOW}" in out
    assert f"{rep.results[1].quality.perplexity / rep.dense_quality.perplexity:.3f}" in out


def test_the_json_holds_the_figures(run):
    _, root = run
    data = json.loads((root / "prune.json").read_text())
    assert data["dense_quality"]["protocol"]["window"] == WINDOW and data["results"][1]["quality"]["kl_nats"] > 0


def test_the_same_text_under_another_name_is_noted_as_not_held_out(tmp_path, tiny_config):
    build_from_config(tiny_config("llama", positions=64, vocab=97), name="llama", seed=3).model.save_pretrained(tmp_path / "m")
    (tmp_path / "calib.txt").write_text(EVAL)
    (tmp_path / "copy.txt").write_text(EVAL)
    rep = tmp_path / "prune.json"
    args = ["prune", "-m", str(tmp_path / "m"), "--ratios", "0.5", "--calib", str(tmp_path / "calib.txt"), "--eval-text",
            str(tmp_path / "copy.txt"), "--eval-tokens", "64", "--eval-window", str(WINDOW), "--prompt-tokens", "16",
            "--windows", "2", "--no-speed", "-o", str(rep)]
    assert main(args) == 0
    assert any("is the calibration text" in n and "not held out" in n for n in load_document(rep, PruneReport).notes)
