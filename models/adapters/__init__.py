"""One adapter per model family; an unknown ``model_type`` is rejected, never guessed."""

from __future__ import annotations

from coinfer.errors import UnsupportedModelError
from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState, StageContext
from coinfer.models.adapters.bert import BertAdapter
from coinfer.models.adapters.gpt2 import GPT2Adapter
from coinfer.models.adapters.llama import LlamaAdapter

ADAPTERS: tuple[type[FamilyAdapter], ...] = (GPT2Adapter, LlamaAdapter, BertAdapter)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str) -> type[FamilyAdapter]:
    """The adapter class for a config's ``model_type``.

    Raises:
        UnsupportedModelError: No adapter handles it.
    """
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedModelError(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = [
    "ADAPTERS",
    "SUPPORTED_MODEL_TYPES",
    "BertAdapter",
    "FamilyAdapter",
    "GPT2Adapter",
    "HeadOutput",
    "LlamaAdapter",
    "ShardState",
    "StageContext",
    "adapter_class",
]
