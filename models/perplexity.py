"""Perplexity, next-token KL and top-1 agreement under a fixed protocol.

The protocol (windows, stride, BOS rule, which positions are scored) is defined in
:mod:`coinfer.reports.quality`; this module tokenizes a text under it and evaluates any model
given as a callable from token ids ``(1, T)`` to logits ``(1, T, vocab)``, so a dense model, a
pruned one or a chain of split (or corrupted) shards are measured the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coinfer.errors import UnsupportedModelError, UserInputError
from coinfer.models.corpora import Text, encode
from coinfer.reports.common import MachineInfo
from coinfer.reports.quality import (
    DEFAULT_EVAL_TOKENS,
    DEFAULT_WINDOW,
    PerplexityProtocol,
    PerplexityReport,
    QualityFigures,
    ScoredWindow,
    TextRef,
)

LogitsFn = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class EvalSet:
    """A protocol and the token ids it covers.

    Attributes:
        protocol: The protocol, printed with every figure computed on this set.
        ids: The covered text token ids (``protocol.tokens`` of them).
        bos_id: The BOS token id when the protocol prepends one.
    """

    protocol: PerplexityProtocol
    ids: list[int]
    bos_id: int | None = None

    def window_inputs(self) -> list[torch.Tensor]:
        """The model input of each window, (1, window [+ 1 BOS]) int64, in protocol order."""
        bos = [self.bos_id] if self.protocol.bos_prepended else []
        return [torch.tensor([bos + self.ids[w.start : w.end]], dtype=torch.long) for w in self.protocol.windows()]


def prepare(
    text: Text,
    tokenizer: Any | None,
    vocab_size: int,
    *,
    tokens: int = DEFAULT_EVAL_TOKENS,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    bos_id: int | None = None,
    first_token_scored: bool = False,
    dtype: str = "fp32",
    max_positions: int | None = None,
    tokenizer_sha256: str | None = None,
) -> EvalSet:
    """Tokenize ``text`` and fix the protocol.

    Args:
        text: The evaluation text.
        tokenizer: The model's tokenizer, or None for UTF-8 bytes modulo ``vocab_size``.
        vocab_size: The model's vocabulary size.
        tokens: Text tokens to evaluate at most (whole windows of them are used).
        window: Text tokens per window; clipped so that the window (and BOS) fits ``max_positions``.
        stride: Tokens between window starts (default: ``window``, non-overlapping).
        bos_id: Prepend this token to each window (None: no BOS).
        first_token_scored: Score each window's first token from the BOS (needs ``bos_id``).
        dtype: The model's compute dtype, recorded in the protocol.
        max_positions: The model's position limit.
        tokenizer_sha256: Identifies the tokenizer in the protocol.

    Raises:
        UserInputError: The text is shorter than one window, or the options contradict.
    """
    bos = bos_id is not None
    if window < 2 or tokens < 2 or (stride is not None and stride < 1):
        raise UserInputError("window and tokens must be at least 2 and stride at least 1")
    if first_token_scored and not bos:
        raise UserInputError("scoring the first token of a window needs a BOS token before it")
    if max_positions:
        window = min(window, max_positions - int(bos))
    stride = min(stride or window, window)
    ids, kind = encode(text.text, tokenizer, vocab_size)
    avail = min(len(ids), tokens)
    if avail < window:
        what = f"{len(ids)} tokens" if len(ids) < tokens else f"{tokens} tokens requested"
        raise UserInputError(f"text {text.name}: {what}, shorter than one window of {window} tokens")
    covered = window + (avail - window) // stride * stride
    protocol = PerplexityProtocol(
        text=TextRef(name=text.name, sha256=text.sha256, source=text.source),
        tokenizer=kind,  # type: ignore[arg-type]
        tokenizer_sha256=tokenizer_sha256 if kind == "model" else None,
        tokens=covered,
        window=window,
        stride=stride,
        bos_prepended=bos,
        first_token_scored=first_token_scored,
        dtype=dtype,
    )
    return EvalSet(protocol, ids[:covered], bos_id)


def max_positions(config: Any) -> int | None:
    """The model's position limit from its config (None when it has none)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _tokenizer_sha256(tokenizer: Any) -> str | None:
    path = Path(str(getattr(tokenizer, "name_or_path", "") or "")) / "tokenizer.json"
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_for(loaded: Any, text: Text, *, bos: bool = False, **kwargs: Any) -> EvalSet:
    """:func:`prepare` for a loaded decoder: its tokenizer, vocabulary, positions and dtype.

    Args:
        loaded: A :class:`~coinfer.models.loading.LoadedModel`.
        text: The evaluation text.
        bos: Prepend the model's BOS token to each window.
        **kwargs: ``tokens``, ``window``, ``stride``, ``first_token_scored`` (see :func:`prepare`).

    Raises:
        UnsupportedModelError: An encoder (no next-token distribution), or no BOS token known.
        UserInputError: See :func:`prepare`.
    """
    ad = loaded.adapter
    if not ad.is_decoder:
        raise UnsupportedModelError(f"{loaded.identity.name}: perplexity needs a decoder; this is an encoder")
    tok = loaded.tokenizer
    bos_id = None
    if bos:
        bos_id = getattr(tok, "bos_token_id", None) if tok is not None else None
        if bos_id is None:
            bos_id = getattr(ad.config, "bos_token_id", None)
        if bos_id is None:
            raise UnsupportedModelError(f"{loaded.identity.name}: no BOS token known; evaluate without one")
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    param = next(loaded.model.parameters())
    return prepare(
        text, tok, ad.vocab_size, bos_id=bos_id, dtype=dtype.get(param.dtype, str(param.dtype)),
        max_positions=max_positions(ad.config), tokenizer_sha256=_tokenizer_sha256(tok) if tok is not None else None,
        **kwargs,
    )


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def logits_fn(model: Any) -> LogitsFn:
    """The whole model as one callable from ids (1, T) to logits (1, T, vocab).

    Args:
        model: A :class:`~coinfer.models.loading.LoadedModel` or a family adapter.
    """
    from coinfer.models.shards import shard_range

    ad = model if hasattr(model, "num_blocks") else model.adapter
    whole = shard_range(ad, 0, ad.num_blocks + 2, logits_to_keep=0)
    return lambda ids: whole(ids).logits


def chain_logits_fn(shards: Sequence[Any]) -> LogitsFn:
    """A chain of contiguous shards (e.g. a split's device and server shards, the last one built
    with ``logits_to_keep=0``) as one callable from ids to logits."""

    def run(ids: torch.Tensor) -> torch.Tensor:
        h: Any = ids
        for shard in shards:
            h = shard(h)
        return _logits(h)

    return run


def logit_span(window: ScoredWindow, bos_prepended: bool) -> tuple[int, int]:
    """``(lo, hi)``: the window's logits ``[lo, hi)`` are the scored predictions; their targets are
    input positions ``lo + 1 .. hi``.

    Logits at input index i predict input index i + 1; text position p sits at input index
    ``p - start`` (plus 1 after a BOS).
    """
    b = int(bos_prepended)
    return window.score_from - window.start + b - 1, window.end - window.start + b - 1


@torch.no_grad()
def evaluate(
    model: LogitsFn, evalset: EvalSet, reference: LogitsFn | None = None, reference_name: str = "reference"
) -> QualityFigures:
    """Perplexity of ``model`` under the protocol; with ``reference``, also the mean next-token
    KL(reference || model) and top-1 agreement over the same scored positions.

    Args:
        model: Callable from ids (1, T) to logits (1, T, vocab) (or an output with ``.logits``).
        evalset: From :func:`prepare` / :func:`prepare_for`.
        reference: The model to compare with (e.g. the dense one), same calling convention.
        reference_name: What the reference is, recorded in the figures.
    """
    proto = evalset.protocol
    nll = kl = 0.0
    agree = count = 0
    for w, x in zip(proto.windows(), evalset.window_inputs(), strict=True):
        lo, hi = logit_span(w, proto.bos_prepended)
        targets = x[0, lo + 1 : hi + 1]
        logp = _logits(model(x))[0, lo:hi].float().log_softmax(-1)
        nll -= float(logp.gather(-1, targets[:, None]).sum())
        if reference is not None:
            ref = _logits(reference(x))[0, lo:hi].float().log_softmax(-1)
            kl += float((ref.exp() * (ref - logp)).sum())
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
        count += hi - lo
    mean = nll / count
    return QualityFigures(
        protocol=proto,
        perplexity=float(torch.tensor(mean, dtype=torch.float64).exp()),
        nll_nats=mean,
        kl_nats=kl / count if reference is not None else None,
        top1_agreement=agree / count if reference is not None else None,
        reference=reference_name if reference is not None else None,
    )


def measure(
    model: str,
    eval_text: str | None = None,
    *,
    tokens: int = DEFAULT_EVAL_TOKENS,
    window: int = DEFAULT_WINDOW,
    stride: int | None = None,
    bos: bool = False,
    first_token_scored: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> PerplexityReport:
    """Dense perplexity of a ``--model`` on a text under the protocol (``coinfer perplexity``).

    Args:
        model: What ``--model`` names.
        eval_text: A named text or a UTF-8 file (None: ``shakespeare-eval``).
        tokens, window, stride, bos, first_token_scored: The protocol (see :func:`prepare`).
        seed: Seed of a preset's random weights.
        threads: CPU threads (None: torch's default).

    Raises:
        UserInputError: A bad text (checked before the model loads) or protocol.
        UnsupportedModelError: An encoder.
    """
    import time

    from coinfer.models.corpora import DEFAULT_EVALUATION, resolve_text
    from coinfer.models.loading import load_model

    text = resolve_text(eval_text, "--eval-text", DEFAULT_EVALUATION)
    if threads is not None:
        if threads < 1:
            raise UserInputError("--threads must be at least 1")
        torch.set_num_threads(threads)
    loaded = load_model(model, seed=seed)
    evalset = prepare_for(loaded, text, tokens=tokens, window=window, stride=stride, bos=bos,
                          first_token_scored=first_token_scored)
    start = time.perf_counter()
    figures = evaluate(logits_fn(loaded), evalset)
    import transformers

    machine = MachineInfo.here()
    machine.torch_version, machine.transformers_version = torch.__version__, transformers.__version__
    return PerplexityReport(model=loaded.identity, machine=machine, threads=torch.get_num_threads(),
                            figures=figures, eval_s=time.perf_counter() - start)
