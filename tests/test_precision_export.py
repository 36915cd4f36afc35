"""Exported quantized shards: bit-exact reload, sha256 checked, precision recorded in the config."""

from __future__ import annotations

import json

import pytest
import torch

from coinfer.errors import IntegrityError
from coinfer.models import shard_io
from coinfer.models.loading import build_from_config
from coinfer.models.shards import split
from coinfer.precision.apply import Scope, quantized_copy
from coinfer.precision.export import export_variant
from coinfer.pruner import importance
from coinfer.pruner.structure import prune_copy


@pytest.fixture(scope="module")
def prepared(tiny_config):
    out = {}
    for fam in ("llama", "gpt2"):
        loaded = build_from_config(tiny_config(fam), name=f"tiny-{fam}")
        loaded.adapter.prepare_for_pruning()
        out[fam] = loaded
    return out


def _state(shard):
    return shard.hf_state_dict()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("precision,ratio", [("int8", 0.0), ("int4", 0.0), ("int4", 0.5), ("bf16", 0.5)])
def test_quantized_shards_reload_bit_exactly(prepared, tmp_path, family, precision, ratio):
    loaded = prepared[family]
    ad = loaded.adapter
    if ratio:
        blocks = list(range(ad.num_blocks))
        ad, _ = prune_copy(loaded, ratio, importance.magnitude_scores(ad, blocks), blocks, 8)
    q = quantized_copy(ad, precision, Scope(tuple(range(ad.num_blocks)), True))
    files = export_variant(q, loaded, 2, ratio, tmp_path, "all")
    configs = [f for f in files if f.format == "json"]
    assert [f.role for f in configs] == ["device", "server"]
    parts = split(q.adapter, 2)
    reloaded = []
    for f, orig in zip(configs, (parts.device, parts.server), strict=True):
        shard = shard_io.load_shard(tmp_path / f.path, f.sha256)
        a, b = _state(orig), _state(shard)
        assert a.keys() == b.keys()
        assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
        reloaded.append(shard)
    ids = torch.randint(0, ad.vocab_size, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = parts.server(parts.device(ids)).logits
        got = reloaded[1](reloaded[0](ids)).logits
    assert torch.equal(want, got)


def test_config_records_the_precision_and_sha256_is_checked(prepared, tmp_path):
    loaded = prepared["llama"]
    q = quantized_copy(loaded.adapter, "int8", Scope((0, 1), False))
    files = {(f.role, f.format): f for f in export_variant(q, loaded, 2, 0.0, tmp_path, "device")}
    dev, srv = files[("device", "json")], files[("server", "json")]
    cfg = json.loads((tmp_path / dev.path).read_text())
    assert cfg["schema_version"] == 2 and cfg["dtype"] == "int8"
    assert cfg["quantization"]["precision"] == "int8" and len(cfg["quantization"]["modules"]) == 14
    assert cfg["tensor_shapes"]["model.layers.0.mlp.down_proj.qweight"] == [64, 96]
    # The server side holds no quantized matrix: an fp32 shard named after its role only.
    assert srv.path.endswith("/server.json") and json.loads((tmp_path / srv.path).read_text())["quantization"] is None
    weights = tmp_path / files[("device", "safetensors")].path
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="sha256"):
        shard_io.load_shard(tmp_path / dev.path, dev.sha256)
    with pytest.raises(IntegrityError, match="sha256"):
        shard_io.load_shard(tmp_path / srv.path, dev.sha256)


def test_version_1_shard_configs_still_load(prepared, tmp_path):
    loaded = prepared["llama"]
    s = split(loaded.adapter, 1)
    written = shard_io.export_safetensors(s.device, tmp_path, "device", loaded.identity, requested_ratio=0.0, scope="all")
    cfg = json.loads(written["json"].read_text())
    cfg["schema_version"] = 1
    del cfg["quantization"]
    written["json"].write_text(json.dumps(cfg))
    from coinfer.reports.io import file_sha256

    shard = shard_io.load_shard(written["json"], file_sha256(written["json"]))
    assert torch.equal(shard.hf_state_dict()["model.embed_tokens.weight"], loaded.model.model.embed_tokens.weight)
