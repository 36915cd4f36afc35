"""Importance of attention heads and MLP channels: magnitude, activation, fluctuation, Taylor.

Every score is per block, one value per query head and one per MLP channel, computed on the
original (unpruned) model. Higher means more important. Scores add up over units (each is an
energy or a loss change), so the allocation can compare and sum them.

- ``magnitude``: squared L2 norm of the unit's weights over every projection it owns (q/k/v rows
  and out-projection columns of a head - k/v only when heads are not grouped; MLP in/gate rows and
  out columns of a channel).
- ``activation``: Wanda-style, on the calibration text: the mean squared norm the unit adds to
  the block's output, ``E||W_out[:, u] x_u||^2`` with x the out-projection's inputs (a channel:
  ``||W_out[:, j]||^2 mean(x_j^2)``, Wanda's structured column score squared; a head: over its
  features, with their covariance).
- ``fluctuation``: FLAP's metric: the same with each input centered on its calibration mean
  (``||W_out[:, j]||^2 var(x_j)``): what removal loses once the mean is compensated in the bias.
- ``taylor``: first-order estimate of the loss change when the unit is removed,
  ``|sum over its weights of w * dL/dw|``; L is the next-token loss for decoders and, for encoders
  (no labels, and any distillation loss has zero gradient at the original), the mean squared
  norm of the final hidden states, a proxy documented as such in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter

Importance = Literal["magnitude", "activation", "fluctuation", "taylor"]
IMPORTANCES: tuple[str, ...] = ("magnitude", "activation", "fluctuation", "taylor")


def _rows(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (heads*hd, ...) -> per-head sums of squares
    return t.reshape(heads, -1).pow(2).sum(1)


def _head_channel_terms(adapter: FamilyAdapter, block: int, fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum ``fn(tensor)`` (elementwise, non-negative or signed) over each unit's slices."""
    q_heads, kv_heads = adapter.attention_heads(block)
    att = adapter.attention_linears(block)
    hd = adapter.head_dim()
    heads = torch.zeros(q_heads, dtype=torch.float64)
    owned = ["q"] + (["k", "v"] if kv_heads == q_heads else [])
    for key in owned:
        lin = att[key]
        heads += fn(lin.weight).reshape(q_heads, hd, -1).sum((1, 2)).double()
        if lin.bias is not None:
            heads += fn(lin.bias).reshape(q_heads, hd).sum(1).double()
    heads += fn(att["o"].weight).reshape(-1, q_heads, hd).sum((0, 2)).double()
    mlp = adapter.mlp_linears(block)
    chans = torch.zeros(adapter.mlp_channels(block), dtype=torch.float64)
    for key in ("gate", "in"):
        if key in mlp:
            chans += fn(mlp[key].weight).sum(1).double()
            if mlp[key].bias is not None:
                chans += fn(mlp[key].bias).double()
    chans += fn(mlp["out"].weight).sum(0).double()
    return heads, chans


def magnitude_scores(adapter: FamilyAdapter, blocks: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Squared group L2 norm of each head and channel (no data needed)."""
    out = {}
    with torch.no_grad():
        for b in blocks:
            h, c = _head_channel_terms(adapter, b, lambda t: t.detach().pow(2))
            out[b] = (h, c)
    return out


@dataclass
class BlockStats:
    """Calibration statistics of one block's output-projection inputs (float64 sums).

    Attributes:
        tokens: Calibration tokens seen.
        o_sum: Sum over tokens of each attention out-projection input feature, (q_heads * hd,).
        o_gram: Sum over tokens of ``x x^T`` of those features, (q_heads * hd, q_heads * hd).
        out_sum: Sum of each MLP out-projection input (channel activation), (channels,).
        out_sq: Sum of squares of each channel activation, (channels,).
        resid_sq: Sum over tokens of the squared norm of the block's input hidden state.
        out_gram: Sum of ``x x^T`` of the channel activations, (channels, channels), when
            gathered (least-squares compensation needs it).
    """

    tokens: int
    o_sum: torch.Tensor
    o_gram: torch.Tensor
    out_sum: torch.Tensor
    out_sq: torch.Tensor
    resid_sq: float
    out_gram: torch.Tensor | None = None

    @property
    def o_mean(self) -> torch.Tensor:
        """Mean of each out-projection input feature over the calibration tokens."""
        return self.o_sum / self.tokens

    @property
    def out_mean(self) -> torch.Tensor:
        """Mean of each MLP channel activation over the calibration tokens."""
        return self.out_sum / self.tokens

    def head_gram(self, heads: int) -> torch.Tensor:
        """Per query head, the diagonal block of ``o_gram``, (heads, hd, hd)."""
        hd = self.o_gram.shape[0] // heads
        g = self.o_gram.reshape(heads, hd, heads, hd)
        return torch.stack([g[h, :, h, :] for h in range(heads)])


class _Accumulator:
    def __init__(self, full_gram: bool) -> None:
        self.full_gram = full_gram
        self.tokens = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.resid_sq = 0.0

    def add(self, key: str, value: torch.Tensor) -> None:
        value = value.double()
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def attention(self, x: torch.Tensor) -> None:
        self.add("o_sum", x.sum(0))
        self.add("o_gram", x.T @ x)  # one window in fp32, accumulated in fp64

    def mlp(self, x: torch.Tensor) -> None:
        self.tokens += x.shape[0]
        self.add("out_sum", x.sum(0))
        self.add("out_sq", x.pow(2).sum(0))
        if self.full_gram:
            self.add("out_gram", x.T @ x)

    def stats(self) -> BlockStats:
        s = self.sums
        return BlockStats(self.tokens, s["o_sum"], s["o_gram"], s["out_sum"], s["out_sq"], self.resid_sq, s.get("out_gram"))


def _flat(inputs: tuple[torch.Tensor, ...], kwargs: dict | None = None) -> torch.Tensor:
    x = inputs[0] if inputs else (kwargs or {})["hidden_states"]
    return x.detach().reshape(-1, x.shape[-1]).float()


def collect_stats(
    adapter: FamilyAdapter, blocks: list[int], batches: list[torch.Tensor], *, full_gram: bool = False
) -> dict[int, BlockStats]:
    """Run the calibration batches once through the model and gather :class:`BlockStats`.

    Statistics come from the original (unpruned) model, as in Wanda and FLAP.

    Args:
        adapter: The model's adapter (prepared for pruning).
        blocks: Blocks to gather statistics for.
        batches: Calibration token windows.
        full_gram: Also gather the MLP channels' full second-moment matrix (``out_gram``).
    """
    acc = {b: _Accumulator(full_gram) for b in blocks}
    hooks = []

    def resid(a: _Accumulator):
        def fn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            a.resid_sq += float(_flat(args, kwargs).double().pow(2).sum())

        return fn

    for b in blocks:
        a = acc[b]
        hooks.append(adapter.blocks()[b].register_forward_pre_hook(resid(a), with_kwargs=True))
        hooks.append(adapter.attention_linears(b)["o"].register_forward_pre_hook(lambda _m, i, a=a: a.attention(_flat(i))))
        hooks.append(adapter.mlp_linears(b)["out"].register_forward_pre_hook(lambda _m, i, a=a: a.mlp(_flat(i))))
    try:
        with torch.no_grad():
            for ids in batches:
                adapter.reference(ids, None, None, 1)
    finally:
        for h in hooks:
            h.remove()
    return {b: acc[b].stats() for b in blocks}


def _removal_energy(adapter: FamilyAdapter, block: int, st: BlockStats, centered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared norm each unit adds to the block's output: ``E||W_u (x_u - c_u)||^2``.

    ``c_u`` is 0 (the unit's contribution is dropped) or, with ``centered``, the unit's mean
    over the calibration tokens (the mean is folded into the out-projection's bias, so only the
    fluctuation around it is lost: FLAP's metric). A head's energy uses the full covariance of
    its features, so correlated features within the head are counted once.
    """
    n = st.tokens
    q_heads, _ = adapter.attention_heads(block)
    hd = adapter.head_dim()
    wo = adapter.attention_linears(block)["o"].weight.detach().double().reshape(-1, q_heads, hd)
    second = st.head_gram(q_heads) / n
    if centered:
        mu = st.o_mean.reshape(q_heads, hd)
        second = second - mu[:, :, None] * mu[:, None, :]
    # tr(W_h S_h W_h^T) per head
    heads = torch.einsum("ohd,hde,ohe->h", wo, second, wo)
    wd = adapter.mlp_linears(block)["out"].weight.detach().double()
    var = st.out_sq / n - (st.out_mean.pow(2) if centered else 0.0)
    chans = wd.pow(2).sum(0) * var.clamp_min(0.0)
    return heads.clamp_min(0.0), chans


def activation_scores(adapter: FamilyAdapter, blocks: list[int], stats: dict[int, BlockStats]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Wanda-style structured score: ``E||W_out[:, u] x_u||^2`` per head and channel.

    For a channel this is ``||W_out[:, j]||^2 * mean(x_j^2)``, the square of Wanda's column score
    (squared so that scores add up over units and compare across blocks).
    """
    return {b: _removal_energy(adapter, b, stats[b], centered=False) for b in blocks}


def fluctuation_scores(adapter: FamilyAdapter, blocks: list[int], stats: dict[int, BlockStats]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """FLAP's fluctuation metric: ``||W_out[:, j]||^2 * var(x_j)`` (heads: their covariance).

    The energy a unit's removal leaves once its mean contribution is compensated in the bias.
    """
    return {b: _removal_energy(adapter, b, stats[b], centered=True) for b in blocks}


def taylor_scores(
    adapter: FamilyAdapter, blocks: list[int], batches: list[torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``|sum w * dL/dw|`` per unit, gradients accumulated over the calibration batches."""
    model = adapter.model
    params = [p for p in model.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    tracked: list[nn.Parameter] = []
    for b in blocks:
        mods = [*adapter.attention_linears(b).values(), *adapter.mlp_linears(b).values()]
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(True)
                p.grad = None
                tracked.append(p)
    try:
        for ids in batches:
            out = adapter.reference(ids, None, None, 0)
            if adapter.is_decoder:
                logits = out.logits[:, :-1].float()
                loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            else:
                loss = out.last_hidden_state.pow(2).sum(-1).mean()
            loss.backward()
        res = {}
        with torch.no_grad():
            for b in blocks:
                h, c = _head_channel_terms(adapter, b, lambda t: t.detach() * t.grad)
                res[b] = (h.abs(), c.abs())
        return res
    finally:
        for p in tracked:
            p.grad = None
        for p, r in zip(params, saved, strict=True):
            p.requires_grad_(r)


def scores(
    kind: str,
    adapter: FamilyAdapter,
    blocks: list[int],
    batches: list[torch.Tensor],
    stats: dict[int, BlockStats] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Dispatch on the importance name (validated by the caller).

    Args:
        kind: One of :data:`IMPORTANCES`.
        adapter: The model's adapter (prepared for pruning).
        blocks: Blocks in scope.
        batches: Calibration token windows.
        stats: Statistics from :func:`collect_stats` (gathered here when needed and absent).
    """
    if kind == "magnitude":
        return magnitude_scores(adapter, blocks)
    if kind == "taylor":
        return taylor_scores(adapter, blocks, batches)
    stats = stats if stats is not None else collect_stats(adapter, blocks, batches)
    if kind == "activation":
        return activation_scores(adapter, blocks, stats)
    return fluctuation_scores(adapter, blocks, stats)
