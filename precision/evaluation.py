"""Quality of a precision (x pruning ratio) against the fp32 unpruned model, under a printed protocol.

Decoders' windows come from :mod:`coinfer.models.perplexity` (the one home of the protocol):
the evaluation text from :mod:`coinfer.models.corpora` (Hamlet by default, or the user's file),
tokenized without special tokens; the first ``tokens`` tokens cut into non-overlapping windows of
``window`` tokens (stride = window), no BOS prepended, every position but the first of a window
scored. Encoders' windows are built here, with ``[CLS] ... [SEP]`` around each (two tokens of the
window). Models without a tokenizer (random-weight presets) read UTF-8 bytes modulo the
vocabulary. The figures are computed here because the fp32 reference is kept once for every
precision and ratio compared with it.

Figures, each against the fp32 unpruned model on the same windows (the definitions of
:mod:`coinfer.pruner.metrics`): perplexity and its ratio, mean next-token KL(p_fp32 || p) in
nats, top-1 agreement of the next-token argmax, relative MSE of the final hidden states, and for
encoders the mean cosine of mean-pooled embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from coinfer.errors import UserInputError
from coinfer.models.corpora import DEFAULT_EVALUATION, Text, resolve_text
from coinfer.models.perplexity import prepare_for
from coinfer.reports.precision import EvalProtocol, Quality
from coinfer.vocab import max_positions

EvalText = Text  # the evaluation text: coinfer.models.corpora is its one home


def resolve_eval_text(spec: str | None) -> Text:
    """``shakespeare-eval`` (Hamlet; the default), another named text, or the user's UTF-8 file.

    Raises:
        UserInputError: Missing, binary, non-UTF-8 or empty file.
        ModelNotFoundError: The default text's package is not installed.
    """
    return resolve_text(spec, "--eval-text", DEFAULT_EVALUATION)


def eval_windows(loaded: Any, text: EvalText, tokens: int, window: int) -> tuple[list[torch.Tensor], EvalProtocol]:
    """The protocol's windows of ``text`` for ``loaded``, and the protocol as recorded.

    Raises:
        UserInputError: The text is shorter than one window.
    """
    ad, tok = loaded.adapter, loaded.tokenizer
    if ad.is_decoder:
        return _decoder_windows(loaded, text, tokens, window)
    special: tuple[list[int], list[int]] = ([], [])
    if tok is not None:
        ids = tok(text.text, add_special_tokens=False)["input_ids"]
        if tok.cls_token_id is not None and tok.sep_token_id is not None:
            special = ([tok.cls_token_id], [tok.sep_token_id])
    else:
        ids = [b % ad.vocab_size for b in text.text.encode("utf-8")]
    limit = max_positions(ad.config)
    window = min(window, limit) if limit else window
    body = window - len(special[0]) - len(special[1])
    count = min(len(ids), tokens) // body
    if count < 1 or body < 2:
        raise UserInputError(f"evaluation text {text.name}: {len(ids)} tokens, shorter than one window of {window}")
    windows = [torch.tensor([special[0] + ids[i * body:(i + 1) * body] + special[1]]) for i in range(count)]
    protocol = EvalProtocol(
        text=text.name, text_source=text.source, text_sha256=text.sha256,
        tokenizer="model" if tok is not None else "bytes", tokens=count * body, window_tokens=window,
        stride_tokens=body, windows=count, special_tokens="cls_sep" if special[0] else "none",
    )
    return windows, protocol


def _decoder_windows(loaded: Any, text: EvalText, tokens: int, window: int) -> tuple[list[torch.Tensor], EvalProtocol]:
    ev = prepare_for(loaded, text, tokens=tokens, window=window)
    p, windows = ev.protocol, ev.window_inputs()
    protocol = EvalProtocol(
        text=text.name, text_source=text.source, text_sha256=text.sha256, tokenizer=p.tokenizer, tokens=p.tokens,
        window_tokens=p.window, stride_tokens=p.stride, windows=len(windows), special_tokens="none",
    )
    return windows, protocol


@dataclass
class Reference:
    """What the fp32 unpruned model gives on the windows (log-probabilities kept in fp32)."""

    hidden: list[torch.Tensor]
    logprobs: list[torch.Tensor] | None
    perplexity: float | None


def _forward(adapter: Any, ids: torch.Tensor) -> Any:
    return adapter.reference(ids, None, None, 0)


@torch.no_grad()
def reference(adapter: Any, windows: list[torch.Tensor]) -> Reference:
    """The fp32 unpruned model's outputs on the windows."""
    hidden, lps = [], []
    for ids in windows:
        out = _forward(adapter, ids)
        hidden.append(out.last_hidden_state.float())
        if adapter.is_decoder:
            lps.append(torch.log_softmax(out.logits.float(), dim=-1))
    ppl = perplexity_of(lps, windows) if adapter.is_decoder else None
    return Reference(hidden, lps if adapter.is_decoder else None, ppl)


def perplexity_of(logprobs: list[torch.Tensor], windows: list[torch.Tensor]) -> float:
    """exp of the mean negative log-likelihood of every position but each window's first."""
    nll, n = 0.0, 0
    for lp, ids in zip(logprobs, windows, strict=True):
        tgt = ids[:, 1:]
        nll -= float(lp[:, :-1].double().gather(-1, tgt.unsqueeze(-1)).sum())
        n += tgt.numel()
    return math.exp(nll / n)


def quality(adapter: Any, windows: list[torch.Tensor], ref: Reference) -> Quality:
    """The figures of the module docstring for ``adapter``'s model against ``ref``."""
    return quality_of(lambda ids: _forward(adapter, ids), windows, ref)


@torch.no_grad()
def quality_of(forward: Callable[[torch.Tensor], Any], windows: list[torch.Tensor], ref: Reference) -> Quality:
    """The same figures for any ``forward`` from token ids to a head output (e.g. a chain of shards
    whose last one computes logits at every position)."""
    num = den = kl = 0.0
    agree = positions = 0
    lps, cos = [], []
    for i, ids in enumerate(windows):
        out = forward(ids)
        h, h0 = out.last_hidden_state.float(), ref.hidden[i]
        num += float((h - h0).double().pow(2).sum())
        den += float(h0.double().pow(2).sum())
        if ref.logprobs is not None:
            lp, lp0 = torch.log_softmax(out.logits.float(), dim=-1), ref.logprobs[i]
            kl += float((lp0.exp() * (lp0 - lp)).double().sum())
            agree += int((lp.argmax(-1) == lp0.argmax(-1)).sum())
            positions += lp.shape[1]
            lps.append(lp)
        else:
            cos.append(float(torch.nn.functional.cosine_similarity(h.mean(1), h0.mean(1)).mean()))
    q = Quality(output_rel_mse=num / den if den else 0.0)
    if ref.logprobs is not None:
        q.perplexity = perplexity_of(lps, windows)
        q.perplexity_ratio = q.perplexity / ref.perplexity if ref.perplexity else None
        q.kl_next_token_nats = max(0.0, kl / positions)
        q.top1_agreement = agree / positions
    else:
        q.pooled_cosine = sum(cos) / len(cos)
    return q
