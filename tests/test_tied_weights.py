"""Tied embedding/LM-head weights: counted in both stages, one copy when both run on one machine."""

from __future__ import annotations

import numpy as np
import pytest

from coinfer.models.loading import build_from_config
from coinfer.models.summary import shared_param_bytes, stage_param_bytes
from coinfer.planner.cost import Workload, build_cost_model, derive_server_profile
from coinfer.planner.link import Link
from coinfer.planner.search import cumulative
from coinfer.planner.synthetic import synthetic_profile


def test_shared_bytes_are_the_tied_matrix_once(tiny_config):
    gpt2 = build_from_config(tiny_config("gpt2"), name="g")  # GPT-2 ties wte and lm_head
    vocab, hidden = gpt2.adapter.vocab_size, gpt2.adapter.hidden_size
    assert shared_param_bytes(gpt2) == vocab * hidden * 4
    per_stage = stage_param_bytes(gpt2)
    assert per_stage["head"] >= vocab * hidden * 4  # the head stage holds the tied matrix too
    llama = build_from_config({**tiny_config("llama"), "tie_word_embeddings": False}, name="l")
    assert shared_param_bytes(llama) == 0


def test_all_on_device_memory_counts_the_tied_copy_once():
    dev = synthetic_profile(4, seq_len=16).model_copy(update={"shared_param_bytes": 5000})
    model = build_cost_model(dev, derive_server_profile(dev, 2.0), Workload(16, 4))
    n = model.num_stages
    link = Link(rate_bps=10e6)
    ctx = 16 + 4
    every = float(np.sum(model.param_bytes) + np.sum(model.kv_bytes_per_token) * ctx)
    assert model.evaluate(link, n, 0).device_memory_bytes == round(every - 5000)
    # a split keeps both copies where it needs them: the device holds the embedding only
    split = model.evaluate(link, 1, 0).device_memory_bytes
    assert split == round(model.param_bytes[0] + model.kv_bytes_per_token[0] * ctx)
    assert cumulative(model).mem[0, n] == pytest.approx(every - 5000)
