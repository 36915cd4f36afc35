"""The pruning recipe (importance x allocation x compensation), its defaults, and applying it.

Defaults, chosen by measurement (``benchmarks/bench_quality.py``, results in
``benchmarks/results/quality_*.json``):

- decoders: ``fluctuation`` importance, ``sensitivity`` allocation, ``lstsq`` compensation;
- encoders: see :data:`ENCODER_DEFAULT`.

:class:`Pruner` gathers what the recipe needs once (calibration statistics, scores, the
sensitivity probe) and then prunes a copy of the model at any ratio.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from coinfer.pruner import allocation, compensation, importance, sensitivity, structure

AUTO = "auto"


@dataclass(frozen=True)
class Recipe:
    """How a ratio becomes a pruned model.

    Attributes:
        importance: One of :data:`coinfer.pruner.importance.IMPORTANCES`.
        allocation: One of :data:`coinfer.pruner.allocation.ALLOCATIONS`.
        compensation: One of :data:`coinfer.pruner.compensation.COMPENSATIONS`.
    """

    importance: str
    allocation: str
    compensation: str

    def describe(self) -> str:
        return f"importance {self.importance}, allocation {self.allocation}, compensation {self.compensation}"


DECODER_DEFAULT = Recipe("fluctuation", "sensitivity", "lstsq")
ENCODER_DEFAULT = Recipe("fluctuation", "sensitivity", "lstsq")


def resolve(importance_: str, allocation_: str, compensation_: str, is_decoder: bool) -> Recipe:
    """Replace every ``auto`` with the measured default for decoders or encoders."""
    d = DECODER_DEFAULT if is_decoder else ENCODER_DEFAULT
    return Recipe(
        d.importance if importance_ == AUTO else importance_,
        d.allocation if allocation_ == AUTO else allocation_,
        d.compensation if compensation_ == AUTO else compensation_,
    )


class Pruner:
    """A model, its calibration windows and a recipe: prunes copies at any ratio.

    Args:
        adapter: The model's adapter, prepared for pruning (it is never modified).
        blocks: Blocks in scope.
        windows: Calibration token windows.
        recipe: The (resolved) recipe.
        round_to: Channel chunk (kept MLP width stays a multiple of it).
    """

    def __init__(self, adapter: Any, blocks: list[int], windows: list[torch.Tensor], recipe: Recipe, round_to: int = 8) -> None:
        self.adapter, self.blocks, self.round_to = adapter, blocks, round_to
        self.notes: list[str] = []
        tokens = sum(int(w.numel()) for w in windows)
        widest = max((max(adapter.mlp_channels(b), adapter.attention_heads(b)[0] * adapter.head_dim()) for b in blocks), default=0)
        if recipe.compensation == "lstsq" and tokens < compensation.LSTSQ_MIN_TOKENS_PER_INPUT * widest:
            # Too few tokens: the refit would reproduce the calibration text and little else.
            recipe = Recipe(recipe.importance, recipe.allocation, "bias")
            self.notes.append(
                f"lstsq compensation needs at least {compensation.LSTSQ_MIN_TOKENS_PER_INPUT} calibration tokens per "
                f"out-projection input ({compensation.LSTSQ_MIN_TOKENS_PER_INPUT * widest:,} here), got {tokens:,}: "
                "bias compensation used instead (give more calibration text or windows)"
            )
        self.recipe = r = recipe
        needs_stats = r.importance in ("activation", "fluctuation") or r.compensation != "none" or r.allocation == "global"
        self.stats = (
            importance.collect_stats(adapter, blocks, windows, full_gram=r.compensation == "lstsq")
            if needs_stats and blocks
            else {}
        )
        self.scores = importance.scores(r.importance, adapter, blocks, windows, self.stats) if blocks else {}
        self.sensitivity: dict[int, float] | None = None
        if r.allocation == "sensitivity" and blocks:
            self.sensitivity = sensitivity.probe(adapter, blocks, windows, self.scores, self.stats, r.compensation, round_to)

    def selections(self, ratio: float) -> list[structure.BlockSelection]:
        """What every block in scope keeps at ``ratio``."""
        norms = {b: s.resid_sq / s.tokens for b, s in self.stats.items() if s.tokens}
        return allocation.allocate(
            self.adapter, self.blocks, ratio, self.scores, self.recipe.allocation, self.round_to,
            block_norms=norms, sensitivity=self.sensitivity,
        )

    def prune_copy(self, ratio: float) -> tuple[Any, list[structure.BlockSelection]]:
        """A pruned (and compensated) deep copy of the model: (its adapter, the selections)."""
        sels = self.selections(ratio)
        todo = compensation.updates(self.adapter, sels, self.stats, self.recipe.compensation)
        ad = type(self.adapter)(copy.deepcopy(self.adapter.model))
        with torch.no_grad():
            structure.apply(ad, sels)
            compensation.apply_updates(ad, todo)
        return ad, sels
