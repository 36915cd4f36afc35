"""How a pruning ratio is spread over blocks and between attention heads and MLP channels.

**The ratio, defined once here.** A ratio ``r`` asks to remove ``r`` of the scope's *prunable
parameters*: the weights and biases a query head or an MLP channel owns. A query head owns its
rows of the query projection and its columns of the attention out-projection (and its key/value
rows when heads are not grouped: multi-head attention); an MLP channel owns its rows of the
in (and gate) projections and its column of the out-projection. Key/value heads under grouped
-query attention, norms, embeddings and the head are never pruned and are not counted.
:func:`prunable_params` is the count; :func:`achieved_ratio` is what a selection removes.

Units are removed whole, so the achieved ratio differs from ``r`` by rounding: at most half a
channel chunk (``round_to`` channels) per block for ``uniform`` and ``sensitivity``, at most half
the largest unit (a head step or a chunk) overall for ``global`` and ``standardized``, except
where the limits below leave too little to remove.

Limits in every block: at least one query head per key/value group is kept (heads are removed
evenly from each group, so the group mapping stays valid) and at least ``round_to`` channels; the
kept MLP width stays a multiple of ``round_to`` where the width is one.

Allocations:
- ``uniform``: every block loses ``r`` of its prunable parameters. Its heads lose at most ``r``
  of themselves, rounded *down* to whole (per-group) head steps; the MLP takes the rest of the
  block's share. (SmolLM2's 9 query heads in 3 groups: one step removes 33% of the heads, so
  below r = 1/3 only MLP channels go.)
- ``sensitivity``: each block's share is set by its measured sensitivity (pruning that block
  alone, :mod:`coinfer.pruner.sensitivity`): with a block's damage modelled as
  ``s_b (r_b / rho)^2``, minimising the summed damage at a fixed number of removed parameters
  gives ``r_b`` proportional to ``1 / s_b`` (:func:`block_ratios`: clipped to ``[0, cap]`` and
  scaled to meet ``r``); within a block, heads and channels split as in ``uniform``.
- ``global``: every unit of every block in one ranking by its score per parameter, each block's
  scores divided by the mean squared norm of the hidden state entering it (a unit's damage
  relative to the residual stream it perturbs); the lowest go first until ``r`` is met.
- ``standardized``: FLAP's adaptive structure search: scores standardized (z-score) within each
  block and kind (heads, channels), then one global ranking of the standardized scores.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from coinfer.models.adapters.base import FamilyAdapter
from coinfer.pruner.structure import BlockSelection

ALLOCATIONS: tuple[str, ...] = ("uniform", "sensitivity", "global", "standardized")


def unit_params(adapter: FamilyAdapter, block: int) -> tuple[int, int]:
    """(parameters one query head owns, parameters one MLP channel owns) in ``block``."""
    q_heads, kv_heads = adapter.attention_heads(block)
    att = adapter.attention_linears(block)
    owned = ["q"] + (["k", "v"] if kv_heads == q_heads else [])
    head = 0
    for key in owned:
        lin = att[key]
        head += lin.weight.numel() + (lin.bias.numel() if lin.bias is not None else 0)
    head = head // q_heads + att["o"].weight.shape[0] * adapter.head_dim()
    mlp = adapter.mlp_linears(block)
    chan = 0
    for key in ("gate", "in"):
        if key in mlp:
            chan += mlp[key].weight.shape[1] + (1 if mlp[key].bias is not None else 0)
    chan += mlp["out"].weight.shape[0]
    return head, chan


def prunable_params(adapter: FamilyAdapter, block: int) -> int:
    """Prunable parameters of ``block`` as currently shaped (see the module docstring)."""
    head, chan = unit_params(adapter, block)
    return adapter.attention_heads(block)[0] * head + adapter.mlp_channels(block) * chan


def achieved_ratio(adapter: FamilyAdapter, selections: list[BlockSelection]) -> float:
    """Fraction of the selections' blocks' prunable parameters that the selections remove."""
    total = removed = 0
    for s in selections:
        head, chan = unit_params(adapter, s.block)
        total += s.q_heads * head + s.mlp_channels * chan
        removed += (s.q_heads - len(s.keep_q_heads)) * head + (s.mlp_channels - len(s.keep_channels)) * chan
    return removed / total if total else 0.0


@dataclass
class _Block:
    """One block's units in removal order, and how many of each are gone."""

    block: int
    q_heads: int
    kv_heads: int
    channels: int
    head_params: int
    chan_params: int
    head_order: list[list[int]]  # per group, query heads least important first
    chan_order: list[int]  # channels least important first
    chunk: int
    head_steps: int = 0
    chan_removed: int = 0

    @property
    def group_size(self) -> int:
        return self.q_heads // self.kv_heads if self.kv_heads < self.q_heads else 1

    @property
    def max_head_steps(self) -> int:
        # GQA: one step removes one head from every group; MHA: one head (keep one).
        return self.group_size - 1 if self.kv_heads < self.q_heads else self.q_heads - 1

    @property
    def step_heads(self) -> int:
        return self.kv_heads if self.kv_heads < self.q_heads else 1

    def step_params(self) -> int:
        return self.step_heads * self.head_params

    def heads_of_step(self, k: int) -> list[int]:
        """Query heads the ``k``-th head step removes."""
        if self.kv_heads < self.q_heads:
            return [g[k] for g in self.head_order]
        return [self.head_order[0][k]]

    def next_chunk(self) -> int:
        """Channels the next channel chunk removes (0 when the block is at its minimum)."""
        left = self.channels - self.chan_removed
        return self.chunk if left - self.chunk >= self.chunk else 0

    def selection(self) -> BlockSelection:
        gone = {h for k in range(self.head_steps) for h in self.heads_of_step(k)}
        keep_h = [h for h in range(self.q_heads) if h not in gone]
        keep_c = sorted(self.chan_order[self.chan_removed :])
        return BlockSelection(self.block, self.q_heads, self.kv_heads, keep_h, self.channels, keep_c)


def _chunk(channels: int, round_to: int) -> int:
    # Same rule as structure.channels_to_keep: round only widths that are multiples of round_to.
    return round_to if round_to > 1 and channels % round_to == 0 and channels >= 2 * round_to else 1


def _block(adapter: FamilyAdapter, b: int, head_scores: torch.Tensor, chan_scores: torch.Tensor, round_to: int) -> _Block:
    q_heads, kv_heads = adapter.attention_heads(b)
    channels = adapter.mlp_channels(b)
    hp, cp = unit_params(adapter, b)
    if kv_heads < q_heads:
        per = q_heads // kv_heads
        # Query heads g*per .. (g+1)*per-1 read kv head g (repeat_kv order).
        order = [
            [g * per + int(i) for i in torch.argsort(head_scores[g * per : (g + 1) * per], stable=True)]
            for g in range(kv_heads)
        ]
    else:
        order = [[int(i) for i in torch.argsort(head_scores, stable=True)]]
    chan_order = [int(i) for i in torch.argsort(chan_scores, stable=True)]
    return _Block(b, q_heads, kv_heads, channels, hp, cp, order, chan_order, _chunk(channels, round_to))


def _uniform(bl: _Block, ratio: float) -> None:
    target = ratio * (bl.q_heads * bl.head_params + bl.channels * bl.chan_params)
    # Heads lose at most `ratio` of themselves (rounded down), never a forced bigger step.
    per = bl.group_size if bl.kv_heads < bl.q_heads else bl.q_heads
    steps = min(bl.max_head_steps, math.floor(ratio * per + 1e-9))
    bl.head_steps = steps
    rest = target - steps * bl.step_params()
    chans = round(rest / bl.chan_params / bl.chunk) * bl.chunk
    bl.chan_removed = max(0, min(chans, bl.channels - bl.chunk))


def _greedy(units: list[_Block], keys: dict[int, tuple[list[float], list[float]]], target: float) -> None:
    """Remove the lowest-key unit that fits until nothing fits; each block's queues in order.

    ``keys[b]`` = (key of each head step, key of each channel chunk), both in removal order. A
    unit fits when removing it keeps the total within half its size of ``target``.
    """
    heap: list[tuple[float, int, str]] = []
    by_block = {u.block: u for u in units}

    def push(u: _Block, kind: str) -> None:
        hk, ck = keys[u.block]
        if kind == "h" and u.head_steps < u.max_head_steps and u.head_steps < len(hk):
            heapq.heappush(heap, (hk[u.head_steps], u.block, "h"))
        if kind == "c" and u.next_chunk() and u.chan_removed // u.chunk < len(ck):
            heapq.heappush(heap, (ck[u.chan_removed // u.chunk], u.block, "c"))

    for u in units:
        push(u, "h")
        push(u, "c")
    removed = 0.0
    while heap:
        _, b, kind = heapq.heappop(heap)
        u = by_block[b]
        size = u.step_params() if kind == "h" else u.chunk * u.chan_params
        if removed + size > target + size / 2:
            continue  # too big for what is left; smaller units may still fit
        removed += size
        if kind == "h":
            u.head_steps += 1
        else:
            u.chan_removed += u.chunk
        push(u, kind)


def _unit_costs(u: _Block, head_scores: torch.Tensor, chan_scores: torch.Tensor) -> tuple[list[float], list[float]]:
    """Summed score of each head step and each channel chunk, in removal order."""
    hs = [float(sum(head_scores[h] for h in u.heads_of_step(k))) for k in range(u.max_head_steps)]
    cs = chan_scores[torch.tensor(u.chan_order, dtype=torch.long)].double()
    n = (u.channels // u.chunk) * u.chunk
    chunks = cs[:n].reshape(-1, u.chunk).sum(1).tolist()
    return hs, chunks


def allocate(
    adapter: FamilyAdapter,
    blocks: list[int],
    ratio: float,
    scores: dict[int, tuple[torch.Tensor, torch.Tensor]],
    method: str = "uniform",
    round_to: int = 8,
    block_norms: dict[int, float] | None = None,
    sensitivity: dict[int, float] | None = None,
) -> list[BlockSelection]:
    """Choose what every block in scope keeps so that ``ratio`` of the prunable parameters go.

    Args:
        adapter: The model's adapter (prepared for pruning, unpruned).
        blocks: Blocks in scope.
        ratio: Requested ratio in [0, 1) (see the module docstring for its definition).
        scores: Per block (head scores, channel scores); higher = more important. ``global``
            needs scores that add up over units (all of :mod:`coinfer.pruner.importance`'s do).
        method: One of :data:`ALLOCATIONS`.
        round_to: Channel chunk (kept MLP width stays a multiple of it).
        block_norms: ``global`` only: the mean squared norm of each block's input hidden state
            (None: 1 for every block).
        sensitivity: ``sensitivity`` only: the measured damage per block
            (:func:`coinfer.pruner.sensitivity.probe`).

    Returns:
        One selection per block in scope.
    """
    units = [_block(adapter, b, *scores[b], round_to) for b in blocks]
    if method in ("uniform", "sensitivity"):
        if method == "sensitivity" and sensitivity is None:
            raise ValueError("the sensitivity allocation needs the probe's sensitivities")
        shares = block_ratios(adapter, sensitivity, ratio) if method == "sensitivity" and sensitivity else {}
        for u in units:
            _uniform(u, shares.get(u.block, ratio))
        return [u.selection() for u in units]
    if ratio <= 0 or not units:
        return [u.selection() for u in units]
    target = ratio * sum(prunable_params(adapter, b) for b in blocks)
    keys: dict[int, tuple[list[float], list[float]]] = {}
    for u in units:
        hs, cs = _unit_costs(u, *scores[u.block])
        if method == "global":
            norm = (block_norms or {}).get(u.block, 1.0) or 1.0
            keys[u.block] = ([h / (u.step_params() * norm) for h in hs], [c / (u.chunk * u.chan_params * norm) for c in cs])
        else:
            keys[u.block] = _standardized(u, *scores[u.block])
    _greedy(units, keys, target)
    return [u.selection() for u in units]


def _standardized(u: _Block, head_scores: torch.Tensor, chan_scores: torch.Tensor) -> tuple[list[float], list[float]]:
    """FLAP-style keys: each unit's score as a z-score within its block and kind."""

    def z(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        sd = x.std() if x.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
        return (x - x.mean()) / (sd if sd > 0 else 1.0)

    zh, zc = z(head_scores), z(chan_scores)
    hs = [float(sum(zh[h] for h in u.heads_of_step(k)) / u.step_heads) for k in range(u.max_head_steps)]
    zc_sorted = zc[torch.tensor(u.chan_order, dtype=torch.long)]
    n = (u.channels // u.chunk) * u.chunk
    return hs, zc_sorted[:n].reshape(-1, u.chunk).mean(1).tolist()


def block_ratios(
    adapter: FamilyAdapter, sensitivity: dict[int, float], ratio: float, cap: float | None = None
) -> dict[int, float]:
    """Per-block ratios ``∝ 1 / sensitivity``, clipped to ``[0, cap]``, meeting ``ratio`` overall.

    Args:
        adapter: The model's adapter (unpruned).
        sensitivity: From :func:`coinfer.pruner.sensitivity.probe`.
        ratio: The scope's requested ratio.
        cap: The most any block loses (None: ``min(0.9, 2.5 * ratio)``).

    Returns:
        Ratio per block; their prunable-parameter-weighted mean is ``ratio`` (unless the cap
        makes that impossible: then every block is at the cap).
    """
    if ratio <= 0 or not sensitivity:
        return {b: 0.0 for b in sensitivity}
    cap = min(0.9, 2.5 * ratio) if cap is None else cap
    blocks = sorted(sensitivity)
    floor = max(1e-12, 1e-6 * max(sensitivity.values()))
    inv = torch.tensor([1.0 / max(sensitivity[b], floor) for b in blocks], dtype=torch.float64)
    size = torch.tensor([prunable_params(adapter, b) for b in blocks], dtype=torch.float64)
    size = size / size.sum()

    def mean_at(mu: float) -> float:
        return float(((mu * inv).clamp(0, cap) * size).sum())

    lo, hi = 0.0, 1.0 / float(inv.min())  # at hi every block reaches the cap
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_at(mid) < ratio else (lo, mid)
    r = (hi * inv).clamp(0, cap)
    return {b: float(x) for b, x in zip(blocks, r, strict=True)}
