"""The memory-bandwidth yardstick: cache size, buffer size, the STREAM passes, and the bytes a decode step reads."""

from __future__ import annotations

import json

import pytest
import torch

from coinfer.errors import SchemaError
from coinfer.models.loading import build_from_config
from coinfer.profiler import bandwidth, measure
from coinfer.profiler.measure import ProfileOptions, profile_loaded
from coinfer.reports import Profile, load_document, write_json
from coinfer.reports.profile import MemoryBandwidth

MiB = 2**20


def _cache(root, cpu: int, index: int, level: int, size: str, shared: str) -> None:
    d = root / f"cpu{cpu}" / "cache" / f"index{index}"
    d.mkdir(parents=True)
    (d / "level").write_text(f"{level}\n")
    (d / "size").write_text(f"{size}\n")
    (d / "shared_cpu_list").write_text(f"{shared}\n")


def test_last_level_cache_counts_each_shared_instance_once(tmp_path):
    # two L3 instances of 16 MiB (cpus 0-1 and 2-3), each listed by both of its cpus; private L2s
    for cpu in range(4):
        _cache(tmp_path, cpu, 2, 2, "1024K", str(cpu))
        _cache(tmp_path, cpu, 3, 3, "16384K", "0-1" if cpu < 2 else "2-3")
    assert bandwidth.last_level_cache_bytes("cpu", str(tmp_path)) == 32 * MiB
    assert bandwidth.last_level_cache_bytes("cpu", str(tmp_path / "none")) is None


def test_buffer_size_is_four_caches_between_the_floor_and_the_cap():
    assert bandwidth.buffer_bytes_for(None) == 256 * MiB
    assert bandwidth.buffer_bytes_for(32 * MiB) == 256 * MiB  # 4x = 128 MiB, under the floor
    assert bandwidth.buffer_bytes_for(96 * MiB) == 384 * MiB
    assert bandwidth.buffer_bytes_for(512 * MiB) == 1024 * MiB  # capped


def test_stream_passes_report_the_best_kernel():
    torch.set_num_threads(1)
    bw = bandwidth.measure_bandwidth("cpu", buffer_bytes=4 * MiB, passes=2)
    assert bw.buffer_bytes == 4 * MiB and bw.passes == 2 and bw.threads == 1 and bw.device == "cpu"
    assert bw.copy_bytes_per_s > 0 and bw.triad_bytes_per_s > 0
    assert bw.bytes_per_s == max(bw.copy_bytes_per_s, bw.triad_bytes_per_s)
    assert bw.method == ("copy" if bw.copy_bytes_per_s >= bw.triad_bytes_per_s else "triad")


def _fake_runner(stage_ms: float, whole_ms: float):
    class FakeRunner:
        def __init__(self, ad, device, k):
            self.n = ad.num_blocks + 2

        def staged(self, x, state, past, capture=None):
            return [stage_ms / 1e3] * self.n

        def whole(self, x, cache):
            return whole_ms / 1e3

    return FakeRunner


@pytest.fixture
def known_bandwidth(monkeypatch):
    bw = MemoryBandwidth(bytes_per_s=1e9, method="triad", copy_bytes_per_s=0.8e9, triad_bytes_per_s=1e9,
                         buffer_bytes=256 * MiB, passes=5, threads=1)
    monkeypatch.setattr(measure, "measure_bandwidth", lambda device, buffer_bytes=None: bw)
    monkeypatch.setattr(measure, "open_hardware_reader", lambda device: None)
    monkeypatch.setattr(measure, "StagedRunner", _fake_runner(2.0, 20.0))  # every stage 2 ms, whole 20 ms
    return bw


def _opts(**kw) -> ProfileOptions:
    base = dict(seq_len=8, batch=2, decode_context=[4, 16], repeats=2, warmup=0, threads=1, power_w=1.0,
                emissions=False, gemm=False, min_time_s=0.0)
    return ProfileOptions(**{**base, **kw})


def test_decode_bytes_bound_and_share_by_hand(known_bandwidth, tiny_config):
    loaded = build_from_config(tiny_config("llama", layers=2), name="t")
    blocks = [sum(p.numel() * 4 for p in blk.parameters()) for blk in loaded.model.model.layers]
    p = profile_loaded(loaded, _opts())
    assert p.memory_bandwidth == known_bandwidth
    kv = 2 * 2 * 16 * 4 * 2  # per token: k and v, 2 kv heads x 16 dims, fp32, batch 2
    for i, c in enumerate((4, 16)):
        want = {
            "embed": 2 * 64 * 4,  # one row of the 101 x 64 table per sequence, not the table
            "block.0": blocks[0] + kv * c,
            "block.1": blocks[1] + kv * c,
            "head": (64 + 101 * 64) * 4,  # final norm + LM head, read whole
        }
        for st in p.stages:
            d = st.decode[i]
            assert d.read_bytes == want[st.name]
            assert d.bandwidth_bound_ms == pytest.approx(want[st.name] / 1e9 * 1e3)
            assert d.bandwidth_fraction == pytest.approx(want[st.name] / 1e9 * 1e3 / 2.0)
        whole = p.whole_model.decode[i]
        assert whole.read_bytes == sum(want.values())
        assert whole.bandwidth_fraction == pytest.approx(sum(want.values()) / 1e6 / 20.0)
    assert any(n.startswith("memory bandwidth: best of 5 copy and 5 triad") and "1 GB/s (triad)" in n for n in p.notes)


def test_gpt2_embedding_reads_a_token_row_and_a_position_row(known_bandwidth, tiny_config):
    p = profile_loaded(build_from_config(tiny_config("gpt2", layers=1), name="t"), _opts(batch=3, decode_context=[4]))
    embed = p.stages[0]
    assert embed.param_bytes == (101 + 128) * 64 * 4  # both tables counted whole as weights
    assert embed.decode[0].read_bytes == 2 * 3 * 64 * 4  # but a step reads one row of each per sequence


def test_no_bandwidth_no_share(known_bandwidth, tiny_config):
    p = profile_loaded(build_from_config(tiny_config("llama", layers=1), name="t"), _opts(bandwidth=False))
    assert p.memory_bandwidth is None
    d = p.stages[1].decode[0]
    assert d.read_bytes > 0 and d.bandwidth_bound_ms is None and d.bandwidth_fraction is None


def test_version_1_profiles_still_load_and_unknown_versions_are_refused(known_bandwidth, tiny_config, tmp_path):
    p = profile_loaded(build_from_config(tiny_config("llama", layers=1), name="t"), _opts(decode_context=[4]))
    write_json(p, tmp_path / "v2.json")
    assert load_document(tmp_path / "v2.json", Profile).schema_version == 2
    data = json.loads((tmp_path / "v2.json").read_text())
    # a version-1 file: none of the fields version 2 added
    data["schema_version"] = 1
    for key in ("memory_bandwidth", "contention"):
        del data[key]
    for cost in [d for st in data["stages"] for d in st["decode"]] + data["whole_model"]["decode"]:
        for key in ("read_bytes", "bandwidth_bound_ms", "bandwidth_fraction"):
            del cost[key]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = load_document(tmp_path / "v1.json", Profile)
    assert old.schema_version == 1 and old.memory_bandwidth is None and old.stages[1].decode[0].read_bytes is None
    data["schema_version"] = 3
    (tmp_path / "v3.json").write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="version 3 is not supported .this coinfer reads versions 1, 2"):
        load_document(tmp_path / "v3.json", Profile)
