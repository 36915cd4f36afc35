"""Which heads and MLP channels a ratio removes, and removing them.

Per block in scope, a ratio ``r`` removes ``round(r * n)`` of ``n`` units:
- attention, multi-head (kv heads = query heads): ``round(r * H)`` whole heads (q, k, v rows and
  out-projection columns), at least one head kept;
- attention, grouped-query: ``round(r * H / G)`` query heads from *each* of the ``G`` key/value
  groups, so every group keeps the same number of query heads and the head-to-group mapping stays
  valid; key/value heads are kept;
- MLP: ``round(r * C)`` channels, the kept count rounded to a multiple of ``round_to`` when the
  width is one (vector-friendly shapes), at least ``round_to`` kept.
The hidden size is never touched, so the payload at every cut is unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from coinfer.models.adapters.base import FamilyAdapter
from coinfer.pruner import tp_adapter


@dataclass
class BlockSelection:
    """What one block keeps (indices in the block's current numbering)."""

    block: int
    q_heads: int
    kv_heads: int
    keep_q_heads: list[int]
    mlp_channels: int
    keep_channels: list[int]

    @property
    def removes_anything(self) -> bool:
        return len(self.keep_q_heads) < self.q_heads or len(self.keep_channels) < self.mlp_channels


def heads_to_remove(q_heads: int, kv_heads: int, ratio: float) -> int:
    """Query heads a ratio removes from a block (the GQA/MHA rule of the module docstring)."""
    if kv_heads == q_heads:
        return min(q_heads - 1, round(ratio * q_heads))
    per_group = q_heads // kv_heads
    return kv_heads * min(per_group - 1, round(ratio * per_group))


def channels_to_keep(channels: int, ratio: float, round_to: int) -> int:
    """MLP channels a ratio keeps."""
    keep = channels - round(ratio * channels)
    if round_to > 1 and channels % round_to == 0 and channels >= 2 * round_to:
        keep = max(round_to, round(keep / round_to) * round_to)
    return max(1, min(channels, keep))


def select(
    adapter: FamilyAdapter,
    block: int,
    ratio: float,
    head_scores: torch.Tensor,
    channel_scores: torch.Tensor,
    round_to: int = 8,
) -> BlockSelection:
    """Choose the heads and channels of ``block`` to keep: the highest-scoring ones.

    Args:
        adapter: The model's adapter (prepared for pruning).
        block: Block index.
        ratio: Requested pruning ratio in [0, 1).
        head_scores: One score per query head (higher = more important).
        channel_scores: One score per MLP channel.
        round_to: Kept MLP width rounded to a multiple of this.
    """
    q_heads, kv_heads = adapter.attention_heads(block)
    channels = adapter.mlp_channels(block)
    drop = heads_to_remove(q_heads, kv_heads, ratio)
    if kv_heads == q_heads:
        order = torch.argsort(head_scores, descending=True, stable=True)
        keep_heads = sorted(int(i) for i in order[: q_heads - drop])
    else:
        per_group = q_heads // kv_heads
        keep_per = per_group - drop // kv_heads
        keep_heads = []
        for g in range(kv_heads):
            # Query heads g*per_group .. (g+1)*per_group-1 read kv head g (repeat_kv order).
            local = head_scores[g * per_group : (g + 1) * per_group]
            order = torch.argsort(local, descending=True, stable=True)[:keep_per]
            keep_heads += sorted(g * per_group + int(i) for i in order)
    keep_c = channels_to_keep(channels, ratio, round_to)
    order_c = torch.argsort(channel_scores, descending=True, stable=True)[:keep_c]
    return BlockSelection(block, q_heads, kv_heads, keep_heads, channels, sorted(int(i) for i in order_c))


def apply(adapter: FamilyAdapter, selections: list[BlockSelection]) -> None:
    """Remove everything the selections do not keep, in place, then fix the attributes."""
    hd = adapter.head_dim()
    for sel in selections:
        att = adapter.attention_linears(sel.block)
        gone = [h for h in range(sel.q_heads) if h not in set(sel.keep_q_heads)]
        rows = [h * hd + d for h in gone for d in range(hd)]
        tp_adapter.prune_out_features(att["q"], rows)
        if sel.kv_heads == sel.q_heads:
            tp_adapter.prune_out_features(att["k"], rows)
            tp_adapter.prune_out_features(att["v"], rows)
        tp_adapter.prune_in_features(att["o"], rows)
        mlp = adapter.mlp_linears(sel.block)
        keep = set(sel.keep_channels)
        chans = [c for c in range(sel.mlp_channels) if c not in keep]
        for key in ("gate", "in"):
            if key in mlp:
                tp_adapter.prune_out_features(mlp[key], chans)
        tp_adapter.prune_in_features(mlp["out"], chans)
    adapter.sync_pruned_attributes()


def scope_blocks(num_blocks: int, scope: str, split: int | None) -> list[int]:
    """The blocks a prune touches: all of them (scope ``all``) or the device's first ``split`` (``device``)."""
    return list(range(split if scope == "device" else num_blocks))


def prune_copy(loaded: Any, ratio: float, scores: dict, blocks: list[int], round_to: int) -> tuple[Any, list[BlockSelection]]:
    """A pruned deep copy of the (prepared) model and the selections applied.

    Args:
        loaded: The loaded model, prepared for pruning.
        ratio: Requested ratio.
        scores: Per block (head scores, channel scores) computed on the original.
        blocks: Blocks in scope.
        round_to: MLP width rounding.

    Returns:
        (a new family adapter over the pruned copy, the block selections).
    """
    model = copy.deepcopy(loaded.model)
    ad = type(loaded.adapter)(model)
    sels = [select(ad, b, ratio, *scores[b], round_to=round_to) for b in blocks]
    with torch.no_grad():
        apply(ad, sels)
    return ad, sels
