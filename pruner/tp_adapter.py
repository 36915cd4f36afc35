"""The one place coinfer imports torch-pruning.

coinfer chooses *which* heads and channels go (importance, grouped-query constraints, rounding)
itself and asks torch-pruning to remove them from the weights. Whole-model dependency tracing
(``MetaPruner``) was tried: it hangs in ``get_all_groups`` on Llama in this stack and needs the
fused GPT-2 attention rewritten anyway, while the coupling inside a transformer block is known
exactly (q/k/v rows and out-projection columns of a head; MLP in/gate rows and out columns of a
channel), so the coupled slices are pruned explicitly here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def prune_out_features(linear: nn.Module, idxs: Sequence[int]) -> None:
    """Remove output features (weight rows and bias entries) ``idxs`` of a ``nn.Linear``."""
    if len(idxs):
        import torch_pruning as tp

        tp.prune_linear_out_channels(linear, sorted(int(i) for i in idxs))


def prune_in_features(linear: nn.Module, idxs: Sequence[int]) -> None:
    """Remove input features (weight columns) ``idxs`` of a ``nn.Linear``."""
    if len(idxs):
        import torch_pruning as tp

        tp.prune_linear_in_channels(linear, sorted(int(i) for i in idxs))


def version() -> str:
    """torch-pruning's version, for the report."""
    import torch_pruning as tp

    return str(getattr(tp, "__version__", "unknown"))
