"""Calibration-based compensation for removed units, computed in closed form.

A removed MLP channel j stops adding ``W_out[:, j] * x_j`` to the block's output; a removed query
head stops adding its features times their attention out-projection columns.

- ``bias`` (FLAP, An et al. 2024): the removed units' mean contribution over the calibration
  tokens, ``W_out[:, R] mean(x_R)``, is added to the out-projection's bias, so only the
  fluctuation around the mean is lost.
- ``lstsq``: the kept columns and the bias are refitted by least squares to reproduce the
  unpruned out-projection's output on the calibration tokens:
  ``W_K' = W C[:, K] (C[K, K] + damp)^-1`` and ``b' = b + W mu - W_K' mu_K`` with ``C`` the
  covariance and ``mu`` the mean of the projection's inputs. ``bias`` is the special case that
  keeps ``W_K' = W_K``.

Families whose out-projections have no bias (Llama) get one from the adapter
(:meth:`~coinfer.models.adapters.base.FamilyAdapter.output_bias`); shard export carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coinfer.models.adapters.base import FamilyAdapter
from coinfer.pruner.importance import BlockStats
from coinfer.pruner.structure import BlockSelection

COMPENSATIONS: tuple[str, ...] = ("none", "bias", "lstsq")
#: Ridge added to the kept inputs' covariance, relative to its mean diagonal.
LSTSQ_DAMP = 0.01
#: Fewer calibration tokens than this many per out-projection input and the refit mostly
#: memorises the calibration text (the recipe falls back to ``bias``).
LSTSQ_MIN_TOKENS_PER_INPUT = 2


@dataclass
class Update:
    """What one out-projection gets after its input features ``keep`` are all that is left.

    Attributes:
        bias_delta: Added to the bias (created where absent), (out_features,) float64.
        weight: The refitted kept columns, (out_features, len(keep)), or None to keep them.
    """

    bias_delta: torch.Tensor
    weight: torch.Tensor | None = None


def _fit(w: torch.Tensor, mean: torch.Tensor, second: torch.Tensor | None, keep: list[int], refit: bool) -> Update:
    """Compensation of a Linear ``y = W x + b`` that loses every input feature not in ``keep``.

    Args:
        w: The weight, (out, in) float64.
        mean: Mean of the inputs, (in,).
        second: Mean of ``x x^T``, (in, in) (needed only with ``refit``).
        keep: Kept input features, sorted.
        refit: Least-squares refit of the kept columns; otherwise only the bias moves.
    """
    k = torch.tensor(keep, dtype=torch.long)
    if not refit or second is None:
        return Update(bias_delta=w @ mean - w[:, k] @ mean[k])
    cov = second - torch.outer(mean, mean)
    ckk = cov[k][:, k]
    damp = LSTSQ_DAMP * float(ckk.diagonal().mean().clamp_min(1e-12))
    ckk = ckk + damp * torch.eye(len(keep), dtype=ckk.dtype)
    # W_K' = W C[:, K] C[K, K]^-1  <=>  C[K, K] W_K'^T = C[K, :] W^T (C symmetric)
    wk = torch.linalg.solve(ckk, cov[k] @ w.T).T
    return Update(bias_delta=w @ mean - wk @ mean[k], weight=wk)


def updates(
    adapter: FamilyAdapter, selections: list[BlockSelection], stats: dict[int, BlockStats], method: str
) -> dict[int, dict[str, Update]]:
    """The compensation each out-projection needs, computed on the model *before* pruning.

    Args:
        adapter: The model's adapter, unpruned (the removed columns are needed).
        selections: What each block keeps.
        stats: Calibration statistics of the same model (``lstsq`` needs ``out_gram``).
        method: One of :data:`COMPENSATIONS`.

    Returns:
        Per block, ``{"o": Update, "out": Update}`` for the projections that lose anything.
    """
    if method == "none":
        return {}
    refit = method == "lstsq"
    hd = adapter.head_dim()
    out: dict[int, dict[str, Update]] = {}
    for sel in selections:
        st = stats[sel.block]
        upd: dict[str, Update] = {}
        if len(sel.keep_q_heads) < sel.q_heads:
            keep = [h * hd + d for h in sel.keep_q_heads for d in range(hd)]
            w = adapter.attention_linears(sel.block)["o"].weight.detach().double()
            upd["o"] = _fit(w, st.o_mean, st.o_gram / st.tokens, keep, refit)
        if len(sel.keep_channels) < sel.mlp_channels:
            w = adapter.mlp_linears(sel.block)["out"].weight.detach().double()
            second = st.out_gram / st.tokens if st.out_gram is not None else None
            if refit and second is None:
                raise ValueError("lstsq compensation needs statistics gathered with full_gram=True")
            upd["out"] = _fit(w, st.out_mean, second, sel.keep_channels, refit)
        if upd:
            out[sel.block] = upd
    return out


def apply_updates(adapter: FamilyAdapter, todo: dict[int, dict[str, Update]]) -> None:
    """Apply :func:`updates` to the pruned model (kept columns in ascending order)."""
    with torch.no_grad():
        for b, upd in todo.items():
            for key, u in upd.items():
                lin = adapter.attention_linears(b)["o"] if key == "o" else adapter.mlp_linears(b)["out"]
                if u.weight is not None:
                    if tuple(lin.weight.shape) != tuple(u.weight.shape):
                        raise ValueError(f"block {b} {key}: refit {tuple(u.weight.shape)} for weight {tuple(lin.weight.shape)}")
                    lin.weight.copy_(u.weight.to(lin.weight.dtype))
                bias = adapter.output_bias(b, key)
                bias.add_(u.bias_delta.to(bias.dtype))
