"""Device shard then server shard must reproduce the unsplit model, prefill and cached decode."""

from __future__ import annotations

import pytest
import torch

from coinfer.errors import UserInputError
from coinfer.models.shards import cut_info, generate_greedy, shard_range, split

DECODERS = ["gpt2", "llama", "qwen2", "mistral"]


@pytest.mark.parametrize("family", [*DECODERS, "bert"])
@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_prefill_split_matches_unsplit(tiny_models, family, k):
    m = tiny_models[family]
    ids = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        ref = m.adapter.reference(ids, None, m.adapter.new_cache() if m.is_decoder else None, 0)
        s = split(m, k, logits_to_keep=0)
        got = s.server(s.device(ids))
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-6)
    if m.is_decoder:
        torch.testing.assert_close(got.logits, ref.logits, rtol=0, atol=1e-6)
        # and against the library's own causal-LM forward, not only our reference path
        hf = m.model(input_ids=ids).logits
        torch.testing.assert_close(got.logits, hf, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(got.pooled, ref.pooled, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("k", [0, 2, 4])
def test_cached_decode_matches_unsplit_step_by_step(tiny_models, family, k):
    """Each side keeps its own KV cache; logits agree at every decode step."""
    m = tiny_models[family]
    ids = torch.randint(0, 101, (1, 7), generator=torch.Generator().manual_seed(11))
    s = split(m, k)
    ds, ss = s.device.new_state(), s.server.new_state()
    cache = m.adapter.new_cache()
    x = ids
    with torch.no_grad():
        for step in range(6):
            got = s.server(s.device(x, ds), ss)
            ref = m.model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            torch.testing.assert_close(got.logits, ref, rtol=0, atol=1e-5, msg=f"step {step}")
            x = ref[:, -1:, :].argmax(-1)
    assert ds.past_length == ss.past_length == 7 + 5


@pytest.mark.parametrize("family", DECODERS)
def test_three_shard_chain_generates_same_tokens(tiny_models, family):
    m = tiny_models[family]
    ids = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(3))
    whole = generate_greedy([shard_range(m, 0, 6)], ids, 8)
    chain = generate_greedy([shard_range(m, 0, 2), shard_range(m, 2, 4), shard_range(m, 4, 6)], ids, 8)
    assert torch.equal(whole, chain)
    # and the same tokens as transformers' own generate
    hf = m.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(whole, hf)


def test_padded_encoder_batch_matches(tiny_models):
    m = tiny_models["bert"]
    ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        ref = m.model(input_ids=ids, attention_mask=mask)
        s = split(m, 2)
        got = s.server(s.device(ids, attention_mask=mask), attention_mask=mask)
    torch.testing.assert_close(got.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-6)


def test_shards_partition_the_weights(tiny_models):
    m = tiny_models["llama"]
    s = split(m, 2)
    dev, srv = s.device.hf_state_dict(), s.server.hf_state_dict()
    assert not set(dev) & set(srv)
    assert set(dev) | set(srv) == {k for k in m.model.state_dict() if m.adapter.stage_of(k)}
    assert all(k.startswith(("model.embed_tokens", "model.layers.0.", "model.layers.1.")) for k in dev)
    assert s.device.stage_names() == ["embed", "block.0", "block.1"]
    assert s.server.stage_names() == ["block.2", "block.3", "head"]


def test_gpt2_tied_head_is_in_both_shards(tiny_models):
    s = split(tiny_models["gpt2"], 1)
    assert "transformer.wte.weight" in s.device.hf_state_dict()
    assert "lm_head.weight" in s.server.hf_state_dict()


def test_cut_tensor_reports_shape_dtype_bytes(tiny_models):
    m = tiny_models["llama"]
    info = cut_info(m, 2, batch=3, seq_len=10)
    assert info.prefill.shape == (3, 10, 64)
    assert info.prefill.dtype == "fp32"
    assert info.prefill.nbytes == 3 * 10 * 64 * 4
    assert info.per_token.nbytes == 3 * 64 * 4
    assert info.payload_bytes("fp16") == (3 * 10 * 64 * 2, 3 * 64 * 2)
    assert info.payload_bytes("int8") == (3 * 10 * 64 + 3 * 10 * 4, 3 * 64 + 3 * 4)
    assert cut_info(tiny_models["bert"], 1, 1, 4).per_token is None
    # the hidden state actually produced has that shape
    h = split(m, 2).device(torch.zeros(3, 10, dtype=torch.long))
    assert tuple(h.shape) == info.prefill.shape


@pytest.mark.parametrize("k", [-1, 5])
def test_split_outside_range_is_user_error(tiny_models, k):
    with pytest.raises(UserInputError, match="outside 0..4"):
        split(tiny_models["gpt2"], k)


def test_minilm_real_weights_split_exact(minilm):
    assert minilm.identity.weights == "real"
    assert minilm.identity.family == "bert" and minilm.identity.num_blocks == 6
    tok = minilm.tokenizer
    enc = tok(["a phone and an edge server", "split inference"], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = minilm.model(**enc).last_hidden_state
        s = split(minilm, 3)
        got = s.server(s.device(enc["input_ids"], attention_mask=enc["attention_mask"]), attention_mask=enc["attention_mask"])
    torch.testing.assert_close(got.last_hidden_state, ref, rtol=0, atol=1e-6)
