"""Pruning that keeps quality: ratio allocation, activation importance, compensation, added biases.

Tiny Llama models built in the test; every expectation is a hand computation or an independent
computation of the same quantity.
"""

from __future__ import annotations

import copy

import pytest
import torch

from coinfer.models import shard_io
from coinfer.models.loading import build_from_config
from coinfer.models.shards import split
from coinfer.pruner import allocation, compensation, importance, recipe, sensitivity, structure
from coinfer.pruner.structure import BlockSelection

LLAMA = dict(
    model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
    num_attention_heads=6, num_key_value_heads=2, vocab_size=97, max_position_embeddings=64,
)


def _llama(**extra):
    m = build_from_config({**LLAMA, **extra}, name="t-llama", seed=11)
    m.adapter.prepare_for_pruning()
    return m


def _ids(seed: int = 0, n: int = 12, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


SENS = {0: 0.5, 1: 0.1, 2: 0.2}  # a made-up probe result for the sensitivity allocation


def _random_scores(ad, blocks, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {b: (torch.rand(ad.attention_heads(b)[0], generator=g), torch.rand(ad.mlp_channels(b), generator=g)) for b in blocks}


def test_prunable_params_by_hand():
    ad = _llama().adapter
    # head_dim 8: a query head owns 8 q rows of 48 and 8 o columns of 48; a channel a gate row,
    # an up row and a down column of 48 each (GQA: k/v heads are not prunable)
    assert allocation.unit_params(ad, 0) == (2 * 8 * 48, 3 * 48)
    assert allocation.prunable_params(ad, 0) == 6 * 768 + 96 * 144


@pytest.mark.parametrize("method", allocation.ALLOCATIONS)
@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.35, 0.5])
def test_allocation_meets_the_requested_parameter_ratio_within_rounding(method, ratio):
    ad = _llama().adapter
    blocks = [0, 1, 2]
    sels = allocation.allocate(ad, blocks, ratio, _random_scores(ad, blocks), method, round_to=8, sensitivity=SENS)
    total = sum(allocation.prunable_params(ad, b) for b in blocks)
    removed = allocation.achieved_ratio(ad, sels) * total
    # independent count of what the selections remove
    head, chan = allocation.unit_params(ad, 0)
    by_hand = sum((6 - len(s.keep_q_heads)) * head + (96 - len(s.keep_channels)) * chan for s in sels)
    assert removed == pytest.approx(by_hand)
    # rounding: half a channel chunk (8 channels) per block for uniform, else half the largest
    # unit (a head step: one query head from each of the 2 groups) overall
    per_block = method in ("uniform", "sensitivity")
    slack = 8 * chan / 2 * len(blocks) if per_block else max(2 * head, 8 * chan) / 2
    assert abs(by_hand - ratio * total) <= slack
    for s in sels:
        assert len(s.keep_channels) % 8 == 0 and len(s.keep_channels) >= 8


def test_uniform_never_cuts_heads_beyond_the_ratio():
    ad = _llama().adapter  # 3 query heads per kv group: one head step removes 1/3 of the heads
    scores = _random_scores(ad, [0])
    for ratio, heads_kept in ((0.2, 6), (0.3, 6), (0.34, 4), (0.5, 4), (0.66, 4), (0.7, 2), (0.9, 2)):
        (sel,) = allocation.allocate(ad, [0], ratio, scores, "uniform", round_to=8)
        assert len(sel.keep_q_heads) == heads_kept, ratio


@pytest.mark.parametrize("method", allocation.ALLOCATIONS)
def test_head_allocation_never_removes_more_heads_than_the_gqa_groups_allow(method):
    ad = _llama().adapter
    blocks = [0, 1, 2]
    for ratio in (0.5, 0.8, 0.95, 0.99):
        for sel in allocation.allocate(ad, blocks, ratio, _random_scores(ad, blocks, seed=3), method, round_to=8, sensitivity=SENS):
            per_group = [sum(1 for h in sel.keep_q_heads if h // 3 == g) for g in range(2)]
            assert per_group[0] == per_group[1] >= 1, (ratio, sel.keep_q_heads)


def test_global_allocation_prunes_the_cheapest_units_first():
    ad = _llama().adapter
    blocks = [0, 1, 2]
    scores = {b: (torch.full((6,), 1e6), torch.ones(96) * (1.0 if b == 1 else 100.0)) for b in blocks}
    sels = allocation.allocate(ad, blocks, 0.2, scores, "global", round_to=8)
    # 0.2 of 3 x 18,432 = 11,059 params = 9.6 chunks of 8 channels (1,152 params): 10 chunks,
    # all from block 1's cheap channels; no heads go
    assert [len(s.keep_channels) for s in sels] == [96, 16, 96]
    assert all(len(s.keep_q_heads) == 6 for s in sels)


def test_activation_importance_ranks_a_channel_with_zero_input_activation_last():
    m = _llama()
    ad = m.adapter
    with torch.no_grad():
        ad.mlp_linears(1)["gate"].weight[17] = 0  # silu(0) * up = 0: channel 17 never fires
    stats = importance.collect_stats(ad, [1], [_ids(1), _ids(2)])
    _, chans = importance.activation_scores(ad, [1], stats)[1]
    assert float(chans[17]) == 0.0 and bool((chans[torch.arange(96) != 17] > 0).all())
    (sel,) = allocation.allocate(ad, [1], 0.05, {1: importance.activation_scores(ad, [1], stats)[1]}, "uniform", 1)
    assert 17 not in sel.keep_channels


def test_statistics_match_an_independent_hook():
    m = _llama()
    ad = m.adapter
    batches = [_ids(5), _ids(6)]
    st = importance.collect_stats(ad, [2], batches, full_gram=True)[2]
    acts = []
    h = ad.mlp_linears(2)["out"].register_forward_pre_hook(lambda _m, i: acts.append(i[0].detach().double()))
    with torch.no_grad():
        for ids in batches:
            m.model(input_ids=ids)
    h.remove()
    x = torch.cat([a.reshape(-1, a.shape[-1]) for a in acts])
    assert st.tokens == x.shape[0] == 48
    torch.testing.assert_close(st.out_mean, x.mean(0))
    torch.testing.assert_close(st.out_gram, x.T @ x, rtol=1e-5, atol=1e-6)
    w = ad.mlp_linears(2)["out"].weight.double()
    want = w.pow(2).sum(0) * x.pow(2).mean(0)  # E||W[:, j] x_j||^2
    torch.testing.assert_close(importance.activation_scores(ad, [2], {2: st})[2][1], want, rtol=1e-5, atol=1e-9)
    want_f = w.pow(2).sum(0) * x.var(0, unbiased=False)
    torch.testing.assert_close(importance.fluctuation_scores(ad, [2], {2: st})[2][1], want_f, rtol=1e-4, atol=1e-8)


def _constant_units(m):
    """Tiny Llama with biases where MLP channels 0..7 and every attention head of block 1 output constants."""
    ad = m.adapter
    with torch.no_grad():
        mlp = ad.mlp_linears(1)
        mlp["gate"].weight[:8] = 0
        mlp["gate"].bias[:8] = torch.linspace(-1, 2, 8)
        mlp["in"].weight[:8] = 0
        mlp["in"].bias[:8] = torch.linspace(0.5, 3, 8)
        att = ad.attention_linears(1)
        att["v"].weight.zero_()  # both kv heads read constant value vectors, so every head
        att["v"].bias.copy_(torch.linspace(-2, 1, 16))  # outputs a constant (softmax weights sum to 1)


def test_bias_compensation_reproduces_the_model_when_removed_units_are_constant():
    m = build_from_config({**LLAMA, "mlp_bias": True, "attention_bias": True}, name="t", seed=2)
    _constant_units(m)
    ad = m.adapter
    ids = _ids(9)
    with torch.no_grad():
        want = m.model(input_ids=ids).logits
    stats = importance.collect_stats(ad, [1], [_ids(3)])
    sel = BlockSelection(1, 6, 2, [0, 1, 3, 4], 96, list(range(8, 96)))  # heads 2, 5 and channels 0..7 go
    for method, exact in (("none", False), ("bias", True)):
        pruned = copy.deepcopy(m.model)
        pad = type(ad)(pruned)
        todo = compensation.updates(ad, [sel], stats, method)
        structure.apply(pad, [sel])
        compensation.apply_updates(pad, todo)
        with torch.no_grad():
            got = pruned(input_ids=ids).logits
        if exact:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            assert float((got - want).abs().max()) > 1e-2


def test_lstsq_compensation_is_exact_when_removed_channels_copy_kept_ones(monkeypatch):
    monkeypatch.setattr(compensation, "LSTSQ_DAMP", 1e-10)  # the exact least-squares answer
    m = _llama()
    ad = m.adapter
    with torch.no_grad():
        mlp = ad.mlp_linears(0)
        for key in ("gate", "in"):
            mlp[key].weight[:4] = mlp[key].weight[4:8]  # channels 0..3 duplicate 4..7
    stats = importance.collect_stats(ad, [0], [_ids(4, n=64, batch=4)], full_gram=True)  # 256 tokens > 96
    sel = BlockSelection(0, 6, 2, list(range(6)), 96, list(range(4, 96)))
    w = ad.mlp_linears(0)["out"].weight.detach().double()
    up = compensation.updates(ad, [sel], stats, "lstsq")[0]["out"]
    folded = w[:, 4:].clone()
    folded[:, :4] += w[:, :4]  # the hand answer: a duplicate's column adds to its twin's
    torch.testing.assert_close(up.weight, folded, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(up.bias_delta, torch.zeros(48, dtype=torch.float64), rtol=0, atol=1e-5)
    bias_only = compensation.updates(ad, [sel], stats, "bias")[0]["out"]
    assert bias_only.weight is None


def test_added_bias_is_exported_and_reloads_bit_exactly(tmp_path):
    m = _llama()
    ad = m.adapter
    blocks = [0, 1, 2]
    stats = importance.collect_stats(ad, blocks, [_ids(7)])
    scores = importance.fluctuation_scores(ad, blocks, stats)
    sels = allocation.allocate(ad, blocks, 0.4, scores, "uniform", round_to=8)
    todo = compensation.updates(ad, sels, stats, "bias")
    pruned = copy.deepcopy(m.model)
    pad = type(ad)(pruned)
    structure.apply(pad, sels)
    compensation.apply_updates(pad, todo)
    assert m.model.config.attention_bias is False and pad.attention_linears(0)["o"].bias is not None
    assert pad.mlp_linears(2)["out"].bias is not None
    s = split(pad, 2)
    ident = m.identity
    paths = {role: shard_io.export_safetensors(sh, tmp_path, role, ident, requested_ratio=0.4, scope="all")
             for role, sh in (("device", s.device), ("server", s.server))}
    dev = shard_io.load_shard(paths["device"]["json"], sha256=_sha(paths["device"]["json"]))
    srv = shard_io.load_shard(paths["server"]["json"], sha256=_sha(paths["server"]["json"]))
    for b in (0, 1, 2):
        orig = pad.mlp_linears(b)["out"].bias
        rebuilt = (dev if b < 2 else srv).adapter.mlp_linears(b)["out"].bias
        assert torch.equal(orig, rebuilt)
    ids = _ids(8)
    with torch.no_grad():
        want = s.server(s.device(ids)).logits
        got = srv(dev(ids)).logits
    assert torch.equal(got, want)


def _sha(path) -> str:
    from coinfer.reports.io import file_sha256

    return file_sha256(path)


def test_block_ratios_by_hand():
    ad = _llama().adapter  # three blocks of equal prunable size
    got = allocation.block_ratios(ad, {0: 1.0, 1: 2.0, 2: 4.0}, 0.35)
    # r_b = mu / s_b with mean 0.35: mu (1 + 1/2 + 1/4) / 3 = 0.35 -> mu = 0.6
    assert [round(got[b], 9) for b in (0, 1, 2)] == [0.6, 0.3, 0.15]
    # a very robust block is held at the cap (min(0.9, 2.5 r)); the others share the rest
    got = allocation.block_ratios(ad, {0: 1.0, 1: 100.0, 2: 100.0}, 0.5)
    assert [round(got[b], 9) for b in (0, 1, 2)] == [0.9, 0.3, 0.3]


def test_sensitivity_probe_finds_a_block_that_does_nothing():
    m = _llama()
    ad = m.adapter
    with torch.no_grad():  # block 1 adds nothing to the residual stream: pruning it is free
        ad.attention_linears(1)["o"].weight.zero_()
        ad.mlp_linears(1)["out"].weight.zero_()
    windows = [_ids(1, n=24, batch=1), _ids(2, n=24, batch=1)]
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    scores = importance.magnitude_scores(ad, [0, 1, 2])
    sens = sensitivity.probe(ad, [0, 1, 2], windows, scores, None, "none", round_to=8)
    assert sens[1] == pytest.approx(0.0, abs=1e-12) and sens[0] > 1e-6 and sens[2] > 1e-6
    # the model is left exactly as it was
    after = m.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert [ad.block_shape(b) for b in range(3)] == [{"q_heads": 6, "kv_heads": 2, "mlp_channels": 96}] * 3
    ratios = allocation.block_ratios(ad, sens, 0.3)
    assert ratios[1] == pytest.approx(0.75) and ratios[0] + ratios[2] == pytest.approx(0.15)


def test_pruner_falls_back_to_bias_compensation_on_too_little_calibration_text():
    m = _llama()
    few = recipe.Pruner(m.adapter, [0, 1, 2], [_ids(1, n=16, batch=1)], recipe.Recipe("fluctuation", "uniform", "lstsq"))
    assert few.recipe.compensation == "bias" and "lstsq compensation needs at least 2" in few.notes[0]
    enough = [_ids(s, n=64, batch=1) for s in range(4)]  # 256 tokens >= 2 x 96 channels
    ok = recipe.Pruner(m.adapter, [0, 1, 2], enough, recipe.Recipe("fluctuation", "uniform", "lstsq"))
    assert ok.recipe.compensation == "lstsq" and not ok.notes
    ad, sels = ok.prune_copy(0.3)
    assert ad.mlp_channels(0) == len(sels[0].keep_channels) < 96 and m.adapter.mlp_channels(0) == 96
