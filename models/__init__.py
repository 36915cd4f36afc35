"""What every stage shares about models: loading, family adapters and split shards.

Importing this package is cheap; torch and transformers load only when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coinfer.models.payload import activation_bytes, token_ids_bytes
from coinfer.models.presets import PRESETS, REAL_MODELS, available_models

if TYPE_CHECKING:
    from coinfer.models.loading import LoadedModel


def load_model(spec: str, **kwargs: Any) -> LoadedModel:
    """Load a model by ``--model`` spec; see :func:`coinfer.models.loading.load_model`."""
    from coinfer.models.loading import load_model as _load

    return _load(spec, **kwargs)


__all__ = ["PRESETS", "REAL_MODELS", "activation_bytes", "available_models", "load_model", "token_ids_bytes"]
