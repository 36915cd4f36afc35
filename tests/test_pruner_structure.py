"""Structured pruning removes exactly the chosen heads and channels, for every family.

The strongest check: the pruned model must compute exactly what the original computes with the
removed rows/columns zeroed. That holds only if the right slices were removed together and, for
grouped-query attention, every kept query head still reads its own key/value head.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from coinfer.models.loading import build_from_config
from coinfer.pruner import importance, structure
from coinfer.pruner.structure import prune_copy


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """The shared tiny configs with 3 blocks, 64 positions and 97 tokens; llama with 8 query heads in 2 groups."""
    sizes = dict(layers=3, positions=64, vocab=97)
    return {"gpt2": tiny_config("gpt2", **sizes), "llama": tiny_config("llama", heads=8, **sizes),
            "qwen2": tiny_config("qwen2", **sizes), "bert": tiny_config("bert", **sizes)}


def _prepared(tiny: dict, family: str):
    m = build_from_config(tiny[family], name=f"t-{family}", seed=3)
    with torch.no_grad():
        m.adapter.prepare_for_pruning()
    return m


def _ids(seed: int = 0, n: int = 11) -> torch.Tensor:
    return torch.randint(0, 97, (2, n), generator=torch.Generator().manual_seed(seed))


def _match(small: torch.Tensor, big: torch.Tensor) -> list[int]:
    """Indices of big's rows that small's rows are (exact copies, in order)."""
    out = []
    for row in small:
        hits = [j for j in range(big.shape[0]) if torch.equal(big[j], row)]
        assert len(hits) >= 1
        out.append(hits[0])
    return out


def _masked_original(orig: nn.Module, pruned: nn.Module) -> nn.Module:
    """The original with every entry the pruned model lacks set to zero (found by matching)."""
    masked = copy.deepcopy(orig)
    pm = dict(pruned.named_modules())
    with torch.no_grad():
        for name, lin in masked.named_modules():
            if not isinstance(lin, nn.Linear) or name not in pm:
                continue
            p = pm[name]
            if p.out_features != lin.out_features:
                keep = _match(p.weight, lin.weight)
                drop = [j for j in range(lin.out_features) if j not in keep]
                lin.weight[drop] = 0
                if lin.bias is not None:
                    lin.bias[drop] = 0
                torch.testing.assert_close(p.bias, lin.bias[keep]) if p.bias is not None else None
            if p.in_features != lin.in_features:
                keep = _match(p.weight.t(), lin.weight.t())
                drop = [j for j in range(lin.in_features) if j not in keep]
                lin.weight[:, drop] = 0
    return masked


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "bert"])
def test_pruned_equals_original_with_removed_entries_zeroed(family, tiny):
    m = _prepared(tiny, family)
    ad0 = m.adapter
    scores = importance.magnitude_scores(ad0, [0, 1, 2])
    ad, sels = prune_copy(m, 0.5, scores, [0, 1, 2], round_to=8)
    assert any(s.removes_anything for s in sels)
    masked = _masked_original(m.model, ad.model)
    ids = _ids()
    with torch.no_grad():
        got = ad.reference(ids, None, None, 0).last_hidden_state
        want = type(ad0)(masked).reference(ids, None, None, 0).last_hidden_state
        orig = ad0.reference(ids, None, None, 0).last_hidden_state
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    assert (got - orig).abs().max() > 1e-3  # and something really changed
    assert sum(p.numel() for p in ad.model.parameters()) < sum(p.numel() for p in m.model.parameters())


@pytest.mark.parametrize(
    "family, ratio, heads, kv, channels",
    [
        # MHA 4 heads: round(0.5*4)=2 removed; MLP 96 -> 48 (multiple of 8)
        ("bert", 0.5, 2, 2, 48),
        # round(0.1*4)=0 heads; MLP 96 - round(9.6)=86 -> nearest multiple of 8 = 88
        ("bert", 0.1, 4, 4, 88),
        # GQA 8q/2kv: 4 per group, round(0.3*4)=1 removed per group -> 6 q heads, kv kept
        ("llama", 0.3, 6, 2, 64),
        # GQA 4q/2kv at 0.1: round(0.2)=0 per group -> nothing removed from attention
        ("qwen2", 0.1, 4, 2, 88),
        # GPT-2 inner width 4*64=256 -> 128; 4 heads -> 2
        ("gpt2", 0.5, 2, 2, 128),
    ],
)
def test_counts_follow_the_documented_rounding(family, ratio, heads, kv, channels, tiny):
    m = _prepared(tiny, family)
    scores = importance.magnitude_scores(m.adapter, [0, 1, 2])
    ad, _ = prune_copy(m, ratio, scores, [0, 1, 2], round_to=8)
    for b in range(3):
        assert ad.block_shape(b) == {"q_heads": heads, "kv_heads": kv if family not in ("bert", "gpt2") else heads,
                                     "mlp_channels": channels}


def test_gqa_removes_query_heads_evenly_per_kv_group(tiny):
    m = _prepared(tiny, "llama")
    ad0 = m.adapter
    hd = ad0.head_dim()
    # Make group 0's heads all weaker than group 1's so a global choice would empty group 0.
    with torch.no_grad():
        for b in range(3):
            ad0.attention_linears(b)["q"].weight[: 4 * hd] *= 0.01
    scores = importance.magnitude_scores(ad0, [0, 1, 2])
    ad, _ = prune_copy(m, 0.5, scores, [0, 1, 2], round_to=8)
    for b in range(3):
        rows = _match(ad.attention_linears(b)["q"].weight, ad0.attention_linears(b)["q"].weight)
        heads = sorted({r // hd for r in rows})
        per_group = [sum(1 for h in heads if h // 4 == g) for g in range(2)]
        assert per_group == [2, 2]
        assert ad.blocks()[b].self_attn.num_key_value_groups == 2


def test_gpt2_conversion_keeps_outputs_and_makes_pruning_remove_something(tiny):
    raw = build_from_config(tiny["gpt2"], name="g", seed=3)
    ids = _ids(1)
    with torch.no_grad():
        before = raw.model(input_ids=ids).logits
        assert raw.adapter.module_layout() == "conv1d"
        raw.adapter.prepare_for_pruning()
        raw.adapter.prepare_for_pruning()  # idempotent
        after = raw.model(input_ids=ids).logits
    assert raw.adapter.module_layout() == "split_qkv_linear"
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not any(type(mod).__name__ == "Conv1D" for mod in raw.model.modules())
    scores = importance.magnitude_scores(raw.adapter, [0])
    ad, _ = prune_copy(raw, 0.5, scores, [0], round_to=8)
    assert ad.attention_heads(0) == (2, 2) and ad.blocks()[0].attn.split_size == 32


def test_device_scope_leaves_server_blocks_untouched(tiny):
    m = _prepared(tiny, "bert")
    scores = importance.magnitude_scores(m.adapter, [0])
    ad, _ = prune_copy(m, 0.5, scores, [0], round_to=8)
    assert ad.block_shape(0)["q_heads"] == 2
    for b in (1, 2):
        assert ad.block_shape(b) == m.adapter.block_shape(b)
        for (n1, p1), (_, p2) in zip(ad.blocks()[b].named_parameters(), m.adapter.blocks()[b].named_parameters(), strict=True):
            assert torch.equal(p1, p2), n1


def test_activation_scores_match_an_independent_hook_on_the_mlp_activation(tiny):
    m = _prepared(tiny, "bert")
    ad = m.adapter
    batches = [_ids(5, 9), _ids(6, 9)]
    got = importance.activation_scores(ad, [1], importance.collect_stats(ad, [1], batches))[1][1]
    acts = []
    h = ad.blocks()[1].intermediate.register_forward_hook(lambda _m, _i, o: acts.append(o.detach().double()))
    with torch.no_grad():
        for ids in batches:
            m.model(input_ids=ids)
    h.remove()
    x = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts])
    w = ad.blocks()[1].output.dense.weight.double()
    want = w.pow(2).sum(0) * x.pow(2).mean(0)  # E||W[:, j] x_j||^2 (Wanda's column score squared)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_taylor_scores_match_autograd_on_one_block(tiny):
    m = _prepared(tiny, "llama")
    ad = m.adapter
    ids = _ids(7, 10)
    got_h, got_c = importance.taylor_scores(ad, [2], [ids])[2]
    mlp = ad.mlp_linears(2)
    params = [mlp["gate"].weight, mlp["in"].weight, mlp["out"].weight]
    for p in m.model.parameters():
        p.requires_grad_(True)
    logits = m.model(input_ids=ids).logits[:, :-1]
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    g = torch.autograd.grad(loss, params)
    want = ((params[0] * g[0]).sum(1) + (params[1] * g[1]).sum(1) + (params[2] * g[2]).sum(0)).abs().double()
    torch.testing.assert_close(got_c, want.detach(), rtol=1e-4, atol=1e-9)
    assert got_h.shape == (8,) and bool((got_h >= 0).all())
    for p in m.model.parameters():
        p.requires_grad_(False)


def test_heads_to_remove_and_channel_rounding_by_hand():
    assert structure.heads_to_remove(12, 12, 0.5) == 6
    assert structure.heads_to_remove(12, 12, 0.99) == 11  # at least one head kept
    assert structure.heads_to_remove(32, 4, 0.3) == 4 * 2  # round(2.4)=2 per group of 8
    assert structure.heads_to_remove(8, 2, 0.3) == 2
    assert structure.channels_to_keep(3072, 0.3, 8) == 2152  # 3072-922=2150 -> 2152
    assert structure.channels_to_keep(10, 0.5, 8) == 5  # too narrow to round
