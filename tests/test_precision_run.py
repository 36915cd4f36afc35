"""`coinfer run` with the device shard at a weight precision, on torch and on ONNX Runtime."""

from __future__ import annotations

import pytest
import torch

from coinfer.errors import UnsupportedModelError, UserInputError
from coinfer.models.shards import Shard, generate_greedy, shard_range, split


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_config):
    """A tiny GPT-2 saved as a folder, its loaded copy and one child server."""
    from coinfer.models.loading import build_from_config, load_model
    from coinfer.runner import local

    folder = str(tmp_path_factory.mktemp("precision-run") / "gpt2")
    build_from_config(tiny_config("gpt2"), name="gpt2").model.save_pretrained(folder)
    server = local.start_server(folder, 0, 1, 30.0)
    try:
        yield {"folder": folder, "loaded": load_model(folder), "server": server}
    finally:
        local.stop_server(server)


def _device(env, cut, **kw):
    from coinfer.runner.api import device_outcome

    ids = torch.randint(0, 101, (1, 7), generator=torch.Generator().manual_seed(cut))
    out = device_outcome(model=env["folder"], seed=0, loaded=env["loaded"], bounds=[0, cut, 6],
                         members=[[env["server"].host, env["server"].port]], input_ids=ids.tolist(), attention_mask=None,
                         new_tokens=4, wire_dtype="fp32", runs=1, rtt_ms=0.0, timeout_s=30.0, threads=1, check=True, **kw)
    return ids, out


def _reference(env, cut, precision, ids):
    """Tokens of the same split built independently: a fresh model, prepared, its device blocks quantized."""
    from coinfer.models.loading import load_model
    from coinfer.precision.apply import Scope, quantized_copy

    fresh = load_model(env["folder"])
    fresh.adapter.prepare_for_pruning()
    q = quantized_copy(fresh.adapter, precision, Scope.of_stages(fresh.adapter, 0, cut))
    chain = [Shard(q.adapter, 0, cut), shard_range(env["loaded"], cut, 6)]
    return generate_greedy(chain, ids, 5).tolist()


@pytest.mark.parametrize("precision,cut", [("int8", 3), ("int4", 4), ("bf16", 2)])
def test_torch_device_shard_at_a_precision(env, precision, cut):
    ids, out = _device(env, cut, precision=precision)
    assert out["matches_unsplit"] is True and out["tokens"] == _reference(env, cut, precision, ids)
    assert any(precision in n for n in out["notes"])


def test_onnxruntime_device_shard_decodes_with_its_kv_cache(env):
    m = env["loaded"]
    ids, out = _device(env, 3, engine="onnxruntime")
    # fp32 on ONNX Runtime: the same tokens as the unsplit torch model (differences ~1e-7).
    assert out["tokens"] == generate_greedy([shard_range(m, 0, 6)], ids, 5).tolist()
    assert out["matches_unsplit"] is True and any("onnxruntime" in n and "KV cache" in n for n in out["notes"])


def test_onnx_graph_matches_torch_step_by_step(tiny_config, tmp_path):
    import onnx

    from coinfer.models.loading import build_from_config
    from coinfer.precision.onnx_engine import OrtShard, build_ort_shard, session

    loaded = build_from_config(tiny_config("llama"), name="llama")
    dev = split(loaded.adapter, 2).device
    int4, _ = build_ort_shard(dev, "int4", tmp_path, 1)  # exports device-fp32.onnx, then quantizes it
    graph = onnx.load(str(tmp_path / "device-int4.onnx"), load_external_data=False)
    assert sum(n.op_type == "MatMulNBits" for n in graph.graph.node) == 14  # 7 matrices in each of 2 blocks
    assert not any(n.op_type == "MatMul" and "proj" in n.name for n in graph.graph.node)
    fp32 = OrtShard(session(tmp_path / "device-fp32.onnx", 1), dev, "fp32")
    st_t, st_o = dev.new_state(), fp32.new_state()
    ids = torch.randint(0, 101, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for x in (ids, ids[:, :1], ids[:, 1:2]):  # a prefill, then two decode steps over the cache
            want, got = dev(x, st_t), fp32(x, st_o)
            assert float((want - got).abs().max()) < 1e-5
    assert st_o.past_length == 8 and st_o.past[0].shape == (1, 2, 8, 16)
    with torch.no_grad():
        q, ref = int4(ids), dev(ids)
    assert 0 < float((q - ref).norm() / ref.norm()) < 0.2


def test_what_the_engine_refuses(tiny_config, tmp_path):
    from coinfer.errors import DeviceUnavailableError
    from coinfer.models.loading import build_from_config
    from coinfer.precision.onnx_engine import build_ort_shard
    from coinfer.runner.api import RunOptions, run_command

    mistral = build_from_config(tiny_config("mistral"), name="mistral")
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        build_ort_shard(split(mistral.adapter, 2).device, "fp32", tmp_path, 1)
    with pytest.raises(DeviceUnavailableError, match="bf16"):
        build_ort_shard(split(mistral.adapter, 2).device, "bf16", tmp_path, 1)
    with pytest.raises(UserInputError, match="--engine 'tensorrt'"):
        run_command(RunOptions(model="gpt2", cut=2, engine="tensorrt", out=None))
    with pytest.raises(UserInputError, match="--precision 'int2'"):
        run_command(RunOptions(model="gpt2", cut=2, precision="int2", out=None))
