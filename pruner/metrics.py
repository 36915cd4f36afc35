"""What pruning cost and gained: parameters, FLOPs, distortion, measured speed, Laplace curves."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from coinfer.models import flops
from coinfer.models.adapters.base import FamilyAdapter
from coinfer.vocab import EMBED, HEAD, block_index


# -- parameters and FLOPs -------------------------------------------------------------------
def block_params(adapter: FamilyAdapter, block: int) -> int:
    """Parameters of one block."""
    return sum(p.numel() for p in adapter.blocks()[block].parameters())


def block_sq_norm(adapter: FamilyAdapter, block: int) -> float:
    """Sum of squares of all parameters of one block (float64)."""
    return float(sum(p.detach().double().pow(2).sum() for p in adapter.blocks()[block].parameters()))


def block_flops(adapter: FamilyAdapter, block: int, tokens: int, context: int) -> float:
    """FLOPs of one block for ``tokens`` new tokens attending to ``context`` keys in all.

    The one FLOPs model of coinfer (:mod:`coinfer.models.flops`), batch 1.
    """
    return flops.block_flops(adapter, block, 1, tokens, context - tokens)


def stage_flops(adapter: FamilyAdapter, stage: str, tokens: int, context: int, logits_to_keep: int = 1) -> float:
    """FLOPs of ``embed`` (0: a lookup), a block, or ``head`` (LM head on kept positions), batch 1."""
    if stage == EMBED:
        return 0.0
    if stage == HEAD:
        return flops.head_flops(adapter, 1, tokens, logits_to_keep)
    return block_flops(adapter, int(block_index(stage)), tokens, context)


# -- distortion -----------------------------------------------------------------------------
@dataclass
class OutputStats:
    """Final hidden states (and next-token log-probabilities) of one model on the windows."""

    hidden: list[torch.Tensor]
    logprobs: list[torch.Tensor] | None


@torch.no_grad()
def run_outputs(adapter: FamilyAdapter, windows: list[torch.Tensor]) -> OutputStats:
    """Final hidden states (and log-softmax of all logits for decoders) on each window."""
    hidden, lps = [], []
    for ids in windows:
        out = adapter.reference(ids, None, None, 0)
        hidden.append(out.last_hidden_state.double())
        if adapter.is_decoder:
            lps.append(torch.log_softmax(out.logits.double(), dim=-1))
    return OutputStats(hidden, lps if adapter.is_decoder else None)


def rel_mse(ref: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """``sum ||y - y_hat||^2 / sum ||y||^2`` over all windows and positions."""
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(ref, got, strict=True))
    den = sum(float(a.pow(2).sum()) for a in ref)
    return num / den if den > 0 else 0.0


def kl_next_token(ref: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Mean over positions of KL(p_original || p_pruned), nats."""
    tot, n = 0.0, 0
    for p, q in zip(ref, got, strict=True):
        kl = (p.exp() * (p - q)).sum(-1)
        tot += float(kl.sum())
        n += kl.numel()
    return max(0.0, tot / n)


def perplexity(logprobs: list[torch.Tensor], windows: list[torch.Tensor]) -> float:
    """exp of the mean next-token negative log-likelihood over the windows."""
    nll, n = 0.0, 0
    for lp, ids in zip(logprobs, windows, strict=True):
        tgt = ids[:, 1:]
        nll -= float(lp[:, :-1].gather(-1, tgt.unsqueeze(-1)).sum())
        n += tgt.numel()
    return math.exp(nll / n) if n else float("nan")


def pooled_cosine(ref: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Mean cosine between mean-pooled sentence embeddings (sentence-transformers pooling)."""
    cos = [float(torch.nn.functional.cosine_similarity(a.mean(1), b.mean(1)).mean()) for a, b in zip(ref, got, strict=True)]
    return sum(cos) / len(cos)


# -- timing ---------------------------------------------------------------------------------
def interleaved_medians(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[list[float], list[float]]:
    """Median and IQR-free spread (max/min) in ms of each function, calls interleaved.

    Each repeat runs every function once, rotating the order so drift and cache effects hit
    all of them alike.

    Returns:
        (medians ms, per-function list of samples' coefficient of variation).
    """
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(warmup):
        for f in fns:
            f()
    for r in range(repeats):
        order = list(range(len(fns)))
        order = order[r % len(fns) :] + order[: r % len(fns)]
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            samples[i].append((time.perf_counter() - t0) * 1e3)
    meds = [statistics.median(s) for s in samples]
    cvs = [statistics.pstdev(s) / statistics.mean(s) if len(s) > 1 and statistics.mean(s) > 0 else 0.0 for s in samples]
    return meds, cvs


# -- Laplace fit and reference curves -------------------------------------------------------
def laplace_fit(weights: torch.Tensor) -> tuple[float, float, float]:
    """(lambda = 1 / mean|w|, Laplace variance 2 / lambda^2, empirical mean of w^2)."""
    w = weights.double()
    lam = 1.0 / float(w.abs().mean())
    return lam, 2.0 / lam**2, float(w.pow(2).mean())


def magnitude_pruning_distortion(rho: float) -> float:
    """Per-weight distortion of magnitude-pruning a fraction rho of Laplace weights, over sigma^2.

    ``D(rho) / sigma^2 = 1 - (1 - rho) * (1 - ln(1 - rho) + 0.5 * ln(1 - rho)^2)`` (SCIENCE.md).
    """
    if rho <= 0:
        return 0.0
    ln = math.log(1.0 - rho)
    return 1.0 - (1.0 - rho) * (1.0 - ln + 0.5 * ln * ln)


def shannon_lower_bound(bits: float) -> float:
    """Shannon lower bound for a Laplace source at R bits per weight, over sigma^2: (e/pi) 2^(-2R)."""
    return (math.e / math.pi) * 2.0 ** (-2.0 * bits)
