"""How sensitive the model is to pruning each block: a measured probe, and ratios from it.

The probe prunes one block at a time (at :data:`PROBE_RATIO`, with the same importance and
compensation as the real run), runs the model from that block on a few calibration windows and
measures how far the output moves from the unpruned model's: the mean next-token KL for decoders,
the relative squared error of the final hidden states for encoders. Only the blocks from the
probed one onwards run (their inputs are cached), so the probe of every block costs about as
much as one forward pass per window and block count / 2.

:func:`coinfer.pruner.allocation.block_ratios` turns the probe into per-block ratios.
"""

from __future__ import annotations

import torch

from coinfer.models.adapters.base import FamilyAdapter, ShardState
from coinfer.pruner import compensation as comp
from coinfer.pruner import structure
from coinfer.pruner.allocation import allocate
from coinfer.pruner.importance import BlockStats

#: The ratio each block is pruned at, alone, to measure its sensitivity.
PROBE_RATIO = 0.3
#: Calibration windows the probe runs on.
PROBE_WINDOWS = 2


def _block_inputs(adapter: FamilyAdapter, windows: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per window: the hidden state entering every block, and the unpruned output to compare to."""
    out = []
    for ids in windows:
        seen: list[torch.Tensor] = []

        def grab(_m, args, kwargs, seen=seen):  # noqa: ANN001
            seen.append((args[0] if args else kwargs["hidden_states"]).detach())

        hooks = [blk.register_forward_pre_hook(grab, with_kwargs=True) for blk in adapter.blocks()]
        try:
            with torch.no_grad():
                ref = _output(adapter, adapter.reference(ids, None, None, 0))
        finally:
            for h in hooks:
                h.remove()
        out.append((seen, ref))
    return out


def _output(adapter: FamilyAdapter, head_out) -> torch.Tensor:  # noqa: ANN001
    if adapter.is_decoder:
        return head_out.logits[0].float().log_softmax(-1)
    return head_out.last_hidden_state[0].double()


def _distance(adapter: FamilyAdapter, ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(sum, count) of the per-position distance: KL(ref || got) or squared error over ||ref||^2."""
    if adapter.is_decoder:
        return float((ref.exp() * (ref - got)).sum()), float(ref.shape[0])
    return float((ref - got).pow(2).sum()), float(ref.pow(2).sum())


def probe(
    adapter: FamilyAdapter,
    blocks: list[int],
    windows: list[torch.Tensor],
    scores: dict[int, tuple[torch.Tensor, torch.Tensor]],
    stats: dict[int, BlockStats] | None,
    compensation: str,
    round_to: int = 8,
    ratio: float = PROBE_RATIO,
) -> dict[int, float]:
    """The measured damage of pruning each block alone at ``ratio`` (see the module docstring).

    The model is left as it was: each probed block is a temporary copy.

    Args:
        adapter: The model's adapter (prepared for pruning, unpruned).
        blocks: Blocks to probe.
        windows: Calibration windows (the first :data:`PROBE_WINDOWS` are used).
        scores: Importance scores per block.
        stats: Calibration statistics (needed by compensation other than ``none``).
        compensation: As in :mod:`coinfer.pruner.compensation`.
        round_to: Channel chunk.
        ratio: The ratio each block is probed at.

    Returns:
        Damage per block (KL in nats per position for decoders, relative squared error else).
    """
    import copy

    from coinfer.models.shards import Shard

    cached = _block_inputs(adapter, windows[:PROBE_WINDOWS])
    L = adapter.num_blocks
    out: dict[int, float] = {}
    for b in blocks:
        original = adapter.blocks()[b]
        adapter.blocks()[b] = copy.deepcopy(original)
        try:
            sels = allocate(adapter, [b], ratio, {b: scores[b]}, "uniform", round_to)
            todo = comp.updates(adapter, sels, stats or {}, compensation)
            with torch.no_grad():
                structure.apply(adapter, sels)
                comp.apply_updates(adapter, todo)
                rest = Shard(adapter, b + 1, L + 2, logits_to_keep=0)
                num = den = 0.0
                for inputs, ref in cached:
                    n, d = _distance(adapter, ref, _output(adapter, rest(inputs[b], ShardState(cache=None))))
                    num, den = num + n, den + d
            out[b] = num / den if den > 0 else 0.0
        finally:
            adapter.blocks()[b] = original
            adapter.sync_pruned_attributes()
    return out
