"""Distortion, FLOPs and reference-curve formulas against hand or independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from coinfer.errors import UserInputError
from coinfer.models.loading import build_from_config
from coinfer.pruner import metrics
from coinfer.pruner.api import parse_ratios


def test_magnitude_pruning_distortion_matches_numeric_integration():
    # Laplace(lambda=1): sigma^2 = 2. Pruning |w| < t with P(|w| < t) = rho removes
    # E[w^2; |w| < t] = integral_0^t w^2 e^-w dw (both signs), t = -ln(1 - rho).
    for rho in (0.1, 0.3, 0.5, 0.9):
        t = -math.log(1 - rho)
        n = 20000
        h = t / n
        integral = sum(((i + 0.5) * h) ** 2 * math.exp(-(i + 0.5) * h) for i in range(n)) * h
        assert metrics.magnitude_pruning_distortion(rho) == pytest.approx(integral / 2.0, rel=1e-6)
    assert metrics.magnitude_pruning_distortion(0.0) == 0.0


def test_shannon_bound_and_laplace_fit_by_hand():
    assert metrics.shannon_lower_bound(1.0) == pytest.approx(math.e / math.pi / 4)
    lam, var, emp = metrics.laplace_fit(torch.tensor([1.0, -1.0, 3.0, -3.0]))
    assert lam == pytest.approx(0.5) and var == pytest.approx(8.0) and emp == pytest.approx(5.0)


def test_output_metrics_by_hand():
    y = [torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)]
    yh = [torch.tensor([[[1.0, 1.0], [0.0, 2.0]]], dtype=torch.float64)]
    assert metrics.rel_mse(y, yh) == pytest.approx(1 / 5)
    # mean-pooled: (0.5, 1) vs (0.5, 1.5): cos = (0.25 + 1.5) / (sqrt(1.25) sqrt(2.5))
    assert metrics.pooled_cosine(y, yh) == pytest.approx(1.75 / math.sqrt(1.25 * 2.5))
    p = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]], dtype=torch.float64))
    q = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]], dtype=torch.float64))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_next_token([p], [q]) == pytest.approx(kl0 / 2)
    ids = torch.tensor([[0, 1]])
    # only position 0 predicts a target (token 1): p = 0.5
    assert metrics.perplexity([p], [ids]) == pytest.approx(2.0)


def test_block_flops_by_hand():
    m = build_from_config(
        dict(model_type="bert", hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
             vocab_size=50, max_position_embeddings=32),
        name="f",
    )
    macs = 4 * 64 * 64 + 2 * 64 * 96
    t = 10
    assert metrics.block_flops(m.adapter, 0, t, t) == 2 * t * macs + 4 * t * t * 4 * 16
    assert metrics.block_params(m.adapter, 0) == sum(p.numel() for p in m.model.encoder.layer[0].parameters())


def test_interleaved_medians_calls_each_function_in_rotating_order():
    calls: list[str] = []
    meds, cvs = metrics.interleaved_medians([lambda: calls.append("a"), lambda: calls.append("b")], repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(meds) == 2 and all(m >= 0 for m in meds) and len(cvs) == 2


@pytest.mark.parametrize("text, want", [("0.1,0.2", [0.1, 0.2]), ("0, 0.5,0.5", [0.0, 0.5])])
def test_parse_ratios(text, want):
    assert parse_ratios(text) == want


@pytest.mark.parametrize("text", ["1.0", "-0.1", "abc", "", "0.2,1.5", "nan"])
def test_parse_ratios_rejects(text):
    with pytest.raises(UserInputError):
        parse_ratios(text)
