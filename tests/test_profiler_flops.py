"""FLOPs from shapes against hand-computed values and torch.utils.flop_counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from coinfer.models.flops import block_flops, head_flops, stage_flops
from coinfer.models.loading import build_from_config


@pytest.fixture(scope="module")
def cfgs(tiny_config):
    """The shared tiny configs with two blocks."""
    return {f: tiny_config(f, layers=2) for f in ("gpt2", "llama", "bert")}


def _counted(ad, ids, past_state=None):
    """flop_counter's figure for block.0 and the head on a real forward."""
    st = past_state or ad.new_state()
    with torch.no_grad():
        h = ad.embed(ids, st.past_length)
        ctx = ad.context(h, st, 0, None)
        with FlopCounterMode(display=False) as fb:
            h = ad.block(0, h, ctx)
        with FlopCounterMode(display=False) as fh:
            ad.head(h, ctx, 1)
    return fb.get_total_flops(), fh.get_total_flops()


def test_llama_block_by_hand(cfgs):
    ad = build_from_config(cfgs["llama"], name="t").adapter
    # d=64, 4 q heads / 2 kv heads of 16, MLP 96 gated; batch 1, 8 new tokens, none cached
    proj = 2 * 8 * 64 * (64 + 2 * 32)
    out = 2 * 8 * 64 * 64
    attn = 2 * 2 * 1 * 4 * 8 * 8 * 16
    mlp = 3 * 2 * 8 * 64 * 96
    assert block_flops(ad, 0, 1, 8, 0) == proj + out + attn + mlp == 507904
    # a decode step with 20 cached tokens: one row, 21 keys
    assert block_flops(ad, 0, 1, 1, 20) == 2 * 64 * 128 + 2 * 64 * 64 + 4 * 4 * 21 * 16 + 6 * 64 * 96
    assert head_flops(ad, 3, 8, 1) == 2 * 3 * 64 * 101
    assert head_flops(ad, 3, 8, 0) == 2 * 3 * 8 * 64 * 101


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_matches_flop_counter_with_eager_attention(family, cfgs):
    # Eager attention is plain matmuls, which the counter sees: the figures must agree exactly.
    ad = build_from_config(cfgs[family], name="t", attn_implementation="eager").adapter
    ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(0))
    block, head = _counted(ad, ids)
    ours = stage_flops(ad, 2, 8, 0, 1)
    assert ours["block.0"] == block
    assert ours["head"] == head
    assert ours["embed"] == 0


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_flop_counter_misses_fused_attention_on_cpu(family, cfgs):
    # With sdpa the CPU attention kernel is not counted by flop_counter: its figure is short by
    # exactly the attention term (scores + weighted sum), everything else agrees.
    ad = build_from_config(cfgs[family], name="t", attn_implementation="sdpa").adapter
    ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(0))
    block, _ = _counted(ad, ids)
    q_heads, _ = ad.attention_heads(0)
    attention = 2 * 2 * 2 * q_heads * 8 * 8 * ad.head_dim()
    assert stage_flops(ad, 2, 8)["block.0"] - block in (0, attention)


def test_decode_step_matches_counter_with_cache(cfgs):
    ad = build_from_config(cfgs["llama"], name="t", attn_implementation="eager").adapter
    st = ad.new_state()
    ids = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        from coinfer.models.shards import shard_range

        shard_range(ad, 0, ad.num_blocks + 2)(ids, st)  # 12 tokens now cached
    block, _ = _counted(ad, ids[:, :1], st)
    assert stage_flops(ad, 1, 1, 12)["block.0"] == block


def test_pruned_block_counts_its_own_shapes(cfgs):
    # Shrink block 1 as structured pruning would: 2 of 4 query heads, 48 of 96 MLP channels.
    loaded = build_from_config(cfgs["llama"], name="t", attn_implementation="eager")
    ad = loaded.adapter
    layer = ad.blocks()[1]
    attn, mlp = layer.self_attn, layer.mlp
    attn.q_proj = nn.Linear(64, 32, bias=False)
    attn.o_proj = nn.Linear(32, 64, bias=False)
    attn.num_key_value_groups = 1
    mlp.gate_proj = nn.Linear(64, 48, bias=False)
    mlp.up_proj = nn.Linear(64, 48, bias=False)
    mlp.down_proj = nn.Linear(48, 64, bias=False)
    assert ad.attention_heads(1) == (2, 2) and ad.mlp_channels(1) == 48
    ours = stage_flops(ad, 1, 8)
    assert ours["block.1"] < ours["block.0"]
    st = ad.new_state()
    ids = torch.randint(0, 101, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h = ad.embed(ids, 0)
        ctx = ad.context(h, st, 0, None)
        h = ad.block(0, h, ctx)
        with FlopCounterMode(display=False) as fc:
            ad.block(1, h, ctx)
    assert ours["block.1"] == fc.get_total_flops()
