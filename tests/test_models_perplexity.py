"""The perplexity protocol: which positions are scored, and the figures against independent loops."""

from __future__ import annotations

import math

import pytest
import torch

from coinfer.errors import UnsupportedModelError, UserInputError
from coinfer.models.corpora import Text
from coinfer.models.perplexity import evaluate, logits_fn, prepare, prepare_for
from coinfer.reports.quality import PerplexityProtocol, ScoredWindow, TextRef

TEXT = Text("t", "The quick brown fox jumps over the lazy dog. " * 20, "test")
VOCAB = 101


def _protocol(**kw) -> PerplexityProtocol:
    base = dict(
        text=TextRef(name="t", sha256="0" * 64, source="test"), tokenizer="bytes", tokens=8, window=4,
        stride=4, bos_prepended=False, first_token_scored=False, dtype="fp32",
    )
    return PerplexityProtocol(**{**base, **kw})


def test_windows_by_hand():
    W = ScoredWindow
    assert _protocol().windows() == [W(0, 4, 1), W(4, 8, 5)]
    assert _protocol(bos_prepended=True, first_token_scored=True).windows() == [W(0, 4, 0), W(4, 8, 4)]
    assert _protocol(bos_prepended=True).windows() == [W(0, 4, 1), W(4, 8, 5)]
    # Overlapping: each later window scores only what the previous one did not reach.
    assert _protocol(tokens=10, stride=2).windows() == [W(0, 4, 1), W(2, 6, 4), W(4, 8, 6), W(6, 10, 8)]
    assert _protocol(tokens=10, stride=2).scored_tokens == 9
    assert _protocol().scored_tokens == 6


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(stride=5), "exceeds window"),
        (dict(first_token_scored=True), "only after a BOS"),
        (dict(tokens=9), "not whole windows"),
        (dict(tokens=3), "not whole windows"),
    ],
)
def test_inconsistent_protocols_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        _protocol(**kw)


def _independent_nll(model, ids: list[int], window: int, stride: int, bos_id: int | None, first: bool):
    """Score every covered position in the first window that holds it with context, one position
    at a time (written from the protocol's definition, not from its code)."""
    starts = list(range(0, len(ids) - window + 1, stride))
    covered = starts[-1] + window
    b = 0 if bos_id is None else 1
    cache = {}
    total, n = 0.0, 0
    for p in range(covered):
        for s in starts:
            if s <= p < s + window and (p > s or first):
                if s not in cache:
                    x = torch.tensor([([bos_id] if b else []) + ids[s : s + window]])
                    with torch.no_grad():
                        cache[s] = torch.log_softmax(model(x).logits[0].double(), -1)
                total -= float(cache[s][p - s + b - 1, ids[p]])
                n += 1
                break
    return total / n, n, covered


@pytest.mark.parametrize(
    "window, stride, bos, first",
    [(16, 16, False, False), (16, 5, False, False), (16, 16, True, True), (16, 8, True, False)],
)
def test_perplexity_matches_an_independent_loop(tiny_models, window, stride, bos, first):
    lm = tiny_models["llama"]
    ev = prepare_for(lm, TEXT, tokens=60, window=window, stride=stride, bos=bos, first_token_scored=first)
    got = evaluate(logits_fn(lm), ev)
    ids = [b % VOCAB for b in TEXT.text.encode()][:60]
    bos_id = lm.model.config.bos_token_id if bos else None
    nll, n, covered = _independent_nll(lm.model, ids, window, stride, bos_id, first)
    assert ev.protocol.tokens == covered and ev.protocol.scored_tokens == n
    assert got.nll_nats == pytest.approx(nll, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(nll), rel=1e-5)
    assert got.kl_nats is None and got.top1_agreement is None


def test_uniform_model_has_perplexity_vocab_size():
    ev = prepare(TEXT, None, VOCAB, tokens=100, window=10, stride=3)

    def uniform(ids):
        return torch.zeros(ids.shape[0], ids.shape[1], VOCAB)

    got = evaluate(uniform, ev)
    assert got.perplexity == pytest.approx(VOCAB, rel=1e-6)
    assert got.protocol.scored_tokens == 99  # every covered token after the first, once


def test_kl_and_top1_against_an_independent_computation(tiny_models):
    lm = tiny_models["llama"]
    ev = prepare_for(lm, TEXT, tokens=48, window=16)
    dense = logits_fn(lm)
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, VOCAB, generator=gen)

    def perturbed(ids):
        return dense(ids) + 0.5 * noise[:, : ids.shape[1]]

    same = evaluate(dense, ev, reference=dense, reference_name="dense")
    assert same.kl_nats == pytest.approx(0.0, abs=1e-6) and same.top1_agreement == 1.0
    got = evaluate(perturbed, ev, reference=dense, reference_name="dense")
    kls, agree, n = 0.0, 0, 0
    for x in ev.window_inputs():
        with torch.no_grad():
            p = torch.log_softmax(lm.model(x).logits[0, :-1].double(), -1)
            q = torch.log_softmax(perturbed(x)[0, :-1].double(), -1)
        kls += float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum"))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        n += p.shape[0]
    assert got.kl_nats == pytest.approx(kls / n, rel=1e-4)
    assert got.top1_agreement == pytest.approx(agree / n)
    assert got.reference == "dense" and 0 < got.top1_agreement < 1


def test_window_is_clipped_to_the_model_positions(tiny_models):
    lm = tiny_models["llama"]  # 128 positions
    long = Text("long", "abcdefghij" * 80, "test")
    assert prepare_for(lm, long, tokens=800, window=512).protocol.window == 128
    ev = prepare_for(lm, long, tokens=800, window=512, stride=1000, bos=True)
    assert (ev.protocol.window, ev.protocol.stride) == (127, 127)  # the BOS takes a position
    assert all(x.shape[1] == 128 and x[0, 0] == lm.model.config.bos_token_id for x in ev.window_inputs())
    assert ev.protocol.tokens == 6 * 127  # whole windows only


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(tokens=600, window=64), "shorter than one window of 64"),
        (dict(tokens=30, window=64), "30 tokens requested, shorter than one window"),
        (dict(first_token_scored=True), "needs a BOS"),
    ],
)
def test_bad_protocol_options(tiny_models, kw, message):
    short = Text("short", "x" * 40, "test")
    with pytest.raises(UserInputError, match=message):
        prepare_for(tiny_models["llama"], short, **kw)


def test_perplexity_needs_a_decoder(tiny_models):
    with pytest.raises(UnsupportedModelError, match="needs a decoder"):
        prepare_for(tiny_models["bert"], TEXT)


def test_describe_carries_the_whole_protocol():
    line = _protocol(tokens=10, stride=2, bos_prepended=True).describe()
    for part in ("t (sha256 000000000000)", "10 tokens (bytes tokenizer)", "window 4", "stride 2",
                 "BOS before each window, first token not scored", "9 scored", "fp32"):
        assert part in line
