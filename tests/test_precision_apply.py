"""A precision applied to a scope of a model: which matrices change, and that nothing else does."""

from __future__ import annotations

import pytest
import torch

from coinfer.models.loading import build_from_config
from coinfer.precision.apply import Scope, quantized_copy, scope_linears
from coinfer.precision.modules import Int8Linear, WeightOnlyLinear


@pytest.fixture(scope="module")
def tiny(tiny_config):
    out = {f: build_from_config(tiny_config(f), name=f"tiny-{f}") for f in ("llama", "gpt2", "bert")}
    out["gpt2"].adapter.prepare_for_pruning()  # fused Conv1D attention -> separate Linear q/k/v
    return out


def scope_linears_after(q):
    paths = dict(q.adapter.model.named_modules())
    return [paths[p] for p in q.modules]


def test_scope_of_stages():
    class Four:
        num_blocks = 4

    assert Scope.of_stages(Four(), 0, 3) == Scope((0, 1), False)  # embed, block.0, block.1
    assert Scope.of_stages(Four(), 0, 6) == Scope((0, 1, 2, 3), True)
    assert Scope.of_stages(Four(), 3, 6) == Scope((2, 3), True)


@pytest.mark.parametrize("family,per_block,head", [("llama", 7, 1), ("gpt2", 6, 1), ("bert", 6, 0)])
def test_device_scope_replaces_only_its_blocks(tiny, family, per_block, head):
    loaded = tiny[family]
    ad = loaded.adapter
    before = {k: v.clone() for k, v in ad.model.state_dict().items()}
    q = quantized_copy(ad, "int8", Scope((0, 1), False))
    assert len(q.modules) == 2 * per_block
    assert all(p.startswith(ad.block_prefix + ".0.") or p.startswith(ad.block_prefix + ".1.") for p in q.modules)
    assert all(isinstance(m, Int8Linear) for m in scope_linears_after(q))
    # The original is untouched and the copy shares every tensor outside the scope.
    assert all(torch.equal(before[k], v) for k, v in ad.model.state_dict().items())
    assert not any(isinstance(m, WeightOnlyLinear) for m in ad.model.modules())
    emb = next(iter(ad.embed_modules().values()))
    emb_copy = next(iter(q.adapter.embed_modules().values()))
    assert next(emb.parameters()).data_ptr() == next(emb_copy.parameters()).data_ptr()
    whole = quantized_copy(ad, "int4", Scope(tuple(range(ad.num_blocks)), True))
    assert len(whole.modules) == ad.num_blocks * per_block + head
    assert all(s["group_size"] == 32 for s in whole.modules.values())


@pytest.mark.parametrize("precision,tol", [("bf16", 0.02), ("int8", 0.03), ("int4", 0.3)])
def test_quantized_model_stays_close(tiny, precision, tol):
    ad = tiny["llama"].adapter
    ids = torch.randint(0, ad.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    q = quantized_copy(ad, precision, Scope(tuple(range(ad.num_blocks)), True))
    with torch.no_grad():
        ref = ad.reference(ids, None, None, 0).logits
        got = q.adapter.reference(ids, None, None, 0).logits
    rel = float((got - ref).norm() / ref.norm())
    assert 0 < rel < tol


def test_fp32_is_the_model_itself(tiny):
    ad = tiny["llama"].adapter
    q = quantized_copy(ad, "fp32", Scope((0,), False))
    assert q.adapter is ad and q.modules == {}
    assert set(scope_linears(ad, Scope((), True))) == {"lm_head"}
