"""Loading: presets, local folders, the real MiniLM, and clear errors for bad specs."""

from __future__ import annotations

import json

import pytest
import torch

from coinfer.errors import ModelNotFoundError, UnsupportedModelError
from coinfer.models.loading import build_from_config, config_sha256, load_model
from coinfer.models.presets import PRESETS

GPT2_TINY = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)


def test_random_weights_are_seeded_and_labelled():
    a = build_from_config(GPT2_TINY, name="t", seed=1)
    b = build_from_config(GPT2_TINY, name="t", seed=1)
    c = build_from_config(GPT2_TINY, name="t", seed=2)
    wa, wb, wc = (m.model.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.identity.weights == "random" and a.identity.weights_seed == 1
    assert a.identity.num_blocks == 2 and a.identity.hidden_size == 32
    assert a.identity.num_parameters == sum(p.numel() for p in a.model.parameters())


def test_config_hash_ignores_volatile_keys():
    assert config_sha256({"a": 1, "transformers_version": "x"}) == config_sha256({"a": 1})
    assert config_sha256({"a": 1}) != config_sha256({"a": 2})


def test_local_folder_round_trip(tmp_path):
    m = build_from_config(GPT2_TINY, name="t", seed=3)
    m.model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.identity.weights == "real"
    assert loaded.identity.config_sha256 == m.identity.config_sha256
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, m.model(input_ids=ids).logits)


def test_missing_path_names_supported_models(tmp_path):
    with pytest.raises(ModelNotFoundError, match="minilm"):
        load_model(str(tmp_path / "nope"))


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelNotFoundError, match="no safetensors"):
        load_model(str(tmp_path))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path))


def test_unsupported_architecture_names_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match=r"'t5'.*gpt2, llama, mistral, qwen2, bert"):
        load_model(str(tmp_path))


def test_presets_have_the_promised_shapes():
    # parameter counts from the configs alone (no weights built): the documented real sizes
    from transformers import AutoConfig

    def n_params(cfg):
        cfg = dict(cfg)
        c = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device("meta"):
            from transformers import AutoModel, AutoModelForCausalLM

            auto = AutoModel if c.model_type == "bert" else AutoModelForCausalLM
            model = auto.from_config(c)
        return sum(p.numel() for p in model.parameters())

    assert 120e6 < n_params(PRESETS["gpt2"][1]) < 130e6
    assert 340e6 < n_params(PRESETS["gpt2-medium"][1]) < 370e6
    assert 1.0e9 < n_params(PRESETS["llama-1.1b"][1]) < 1.2e9
    assert 40e6 < n_params(PRESETS["llama-small"][1]) < 60e6
    assert 0.45e9 < n_params(PRESETS["qwen2-0.5b"][1]) < 0.55e9
    assert 105e6 < n_params(PRESETS["bert-base"][1]) < 115e6
