"""Importance of attention heads and MLP channels: magnitude, activation, first-order Taylor.

Every score is per block, one value per query head and one per MLP channel, computed on the
original (unpruned) model. Higher means more important.

- ``magnitude``: L2 norm of the unit's weights over every projection it owns (q/k/v rows and
  out-projection columns of a head - k/v only when heads are not grouped; MLP in/gate rows and
  out columns of a channel).
- ``activation``: Wanda-style structured score on the calibration text: for each input feature j
  of the out-projection, ``||W_out[:, j]|| * ||x_j||`` with x the feature's activations; a head
  sums its features.
- ``taylor``: first-order estimate of the loss change when the unit is removed,
  ``|sum over its weights of w * dL/dw|``; L is the next-token loss for decoders and, for encoders
  (no labels, and any distillation loss has zero gradient at the original), the mean squared
  norm of the final hidden states, a proxy documented as such in the report.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter

Importance = Literal["magnitude", "activation", "taylor"]
IMPORTANCES: tuple[str, ...] = ("magnitude", "activation", "taylor")


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
    """Group L2 norm of each head and channel (no data needed)."""
    out = {}
    with torch.no_grad():
        for b in blocks:
            h, c = _head_channel_terms(adapter, b, lambda t: t.detach().pow(2))
            out[b] = (h.sqrt(), c.sqrt())
    return out


def activation_scores(
    adapter: FamilyAdapter, blocks: list[int], batches: list[torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Wanda-style ``||W_out[:, j]|| * ||x_j||`` summed per unit, over the calibration batches."""
    sq: dict[int, dict[str, torch.Tensor]] = {b: {} for b in blocks}
    hooks = []

    def hook(b: int, key: str):
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sq[b][key] = sq[b].get(key, 0) + x.pow(2).sum(0)

        return fn

    for b in blocks:
        hooks.append(adapter.attention_linears(b)["o"].register_forward_pre_hook(hook(b, "o")))
        hooks.append(adapter.mlp_linears(b)["out"].register_forward_pre_hook(hook(b, "out")))
    try:
        with torch.no_grad():
            for ids in batches:
                adapter.reference(ids, None, None, 1)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    hd = adapter.head_dim()
    for b in blocks:
        q_heads, _ = adapter.attention_heads(b)
        o = adapter.attention_linears(b)["o"].weight.detach().double()
        f = o.norm(dim=0) * sq[b]["o"].sqrt()
        w = adapter.mlp_linears(b)["out"].weight.detach().double()
        out[b] = (f.reshape(q_heads, hd).sum(1), w.norm(dim=0) * sq[b]["out"].sqrt())
    return out


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
    kind: str, adapter: FamilyAdapter, blocks: list[int], batches: list[torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Dispatch on the importance name (validated by the caller)."""
    if kind == "magnitude":
        return magnitude_scores(adapter, blocks)
    if kind == "activation":
        return activation_scores(adapter, blocks, batches)
    return taylor_scores(adapter, blocks, batches)
