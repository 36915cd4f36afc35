"""The profile of tiny models: structure, payloads, FLOPs, energy labelling and validation."""

from __future__ import annotations

import pytest
import torch

from coinfer.errors import DeviceUnavailableError, UserInputError
from coinfer.models.flops import stage_flops
from coinfer.models.loading import build_from_config
from coinfer.profiler import measure
from coinfer.profiler.measure import (
    ProfileOptions,
    parse_context_list,
    profile_loaded,
    run_profile,
)
from coinfer.profiler.timing import DecodeState
from coinfer.reports import Profile, load_document, write_json


@pytest.fixture(scope="module")
def tiny(tiny_config):
    """The shared tiny configs with 64 positions (none of the default decode contexts fits), 3 or 2 blocks."""
    return {
        "gpt2": tiny_config("gpt2", layers=3, positions=64),
        "llama": tiny_config("llama", layers=3, positions=64),
        "mistral": tiny_config("mistral", layers=2, positions=64),
        "bert": tiny_config("bert", layers=2, positions=64),
    }


def quick(**kw) -> ProfileOptions:
    base = dict(seq_len=8, batch=2, decode_context=[4, 16], repeats=3, warmup=1, threads=1, power_w=10.0,
                emissions=False, gemm=False, bandwidth=False, min_time_s=0.0)
    base.update(kw)
    return ProfileOptions(**base)


@pytest.fixture(autouse=True)
def no_hardware_counter(monkeypatch):
    # This machine may or may not expose RAPL; tests decide which reader exists.
    monkeypatch.setattr(measure, "open_hardware_reader", lambda device: None)


def test_decoder_profile_structure_and_payloads(tmp_path, tiny):
    loaded = build_from_config(tiny["llama"], name="tiny-llama")
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)  # not the 1 thread the profile runs with, so a restore shows
    try:
        p = profile_loaded(loaded, quick())
        assert torch.get_num_threads() == before + 1  # the caller's threads are restored
    finally:
        torch.set_num_threads(before)
    assert [s.name for s in p.stages] == ["embed", "block.0", "block.1", "block.2", "head"]
    assert p.context.batch == 2 and p.context.decode_context_tokens == [4, 16] and p.context.threads == 1
    assert p.context.logits_to_keep == 1 and p.context.context_charged_to == "block.0"
    embed, b0, head = p.stages[0], p.stages[1], p.stages[-1]
    # batch 2 x 8 tokens x 64 hidden: fp32 4096 B, fp16 2048 B, int8 1024 B + one fp32 scale per row
    assert b0.payload_after["fp32"].prefill_bytes == 2 * 8 * 64 * 4
    assert b0.payload_after["fp16"].per_token_bytes == 2 * 64 * 2
    assert b0.payload_after["int8"].prefill_bytes == 2 * 8 * 64 + 2 * 8 * 4
    assert head.payload_after["fp32"].prefill_bytes == 0 and head.payload_after["int8"].per_token_bytes == 0
    assert p.input_payload.prefill_bytes == 2 * 8 * 8 and p.input_payload.per_token_bytes == 2 * 8
    assert p.result_payload.per_token_bytes == 2 * 8  # one int64 token id per sequence
    # KV cache: 2 kv heads x 16 dims x (k and v) x 4 bytes x batch 2
    assert b0.kv_cache_bytes_per_token == 2 * 2 * 16 * 4 * 2 and embed.kv_cache_bytes_per_token == 0
    assert embed.param_bytes == 101 * 64 * 4
    assert head.param_bytes == (64 + 101 * 64) * 4
    # FLOPs are the flops module's, prefill and per decode context
    ref = stage_flops(loaded.adapter, 2, 8, 0, 1)
    assert [s.prefill_flops for s in p.stages] == [ref[s.name] for s in p.stages]
    assert b0.decode[1].flops == stage_flops(loaded.adapter, 2, 1, 16, 1)["block.0"]
    # Energy is labelled an estimate and is exactly power x median latency
    assert p.context.energy_source == "estimate" and p.context.power_w == 10.0
    assert b0.prefill_energy_j == pytest.approx(10.0 * b0.prefill.median_ms / 1e3)
    assert b0.decode[0].energy_j == pytest.approx(10.0 * b0.decode[0].timing.median_ms / 1e3)
    assert any("ESTIMATE" in n for n in p.notes)
    assert p.notes[0].startswith("weights: random")
    # coverage is the sum of stage medians over the whole model's median, prefill and decode
    wm = p.whole_model
    assert wm.prefill_coverage == pytest.approx(sum(s.prefill.median_ms for s in p.stages) / wm.prefill.median_ms)
    assert len(wm.decode_coverage) == 2 and all(c > 0 for c in wm.decode_coverage)
    assert wm.prefill_pass_coverage > 0 and len(wm.decode_pass_coverage) == 2
    assert all(s.prefill.repeats == 3 for s in p.stages)
    assert p.peak_memory_source == "ru_maxrss" and p.peak_memory_bytes > 0
    # stage memory peaks: the embedding allocates exactly its (2, 8, 64) fp32 output; a block holds
    # at least the gated MLP's gate and up activations, (2, 8, 96) fp32 each, at once
    assert embed.peak_memory_bytes == 2 * 8 * 64 * 4
    assert 2 * (2 * 8 * 96 * 4) <= b0.peak_memory_bytes < 10**6
    write_json(p, tmp_path / "p.json")
    assert load_document(tmp_path / "p.json", Profile) == p


def test_encoder_has_no_decode_and_sends_back_an_embedding(tiny):
    loaded = build_from_config(tiny["bert"], name="tiny-bert")
    p = profile_loaded(loaded, quick())
    assert all(s.decode == [] for s in p.stages)
    assert p.context.decode_context_tokens == []
    assert p.result_payload.prefill_bytes == 2 * 64 * 4 and p.result_payload.per_token_bytes == 0
    assert p.stages[1].payload_after["fp32"].per_token_bytes == 0
    assert p.stages[1].kv_cache_bytes_per_token == 0
    assert p.context.logits_to_keep is None


@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_other_decoders_profile(family, tiny):
    p = profile_loaded(build_from_config(tiny[family], name=f"tiny-{family}"), quick(decode_context=[6]))
    assert len(p.stages) == p.model.num_blocks + 2
    assert all(len(s.decode) == 1 for s in p.stages)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_decode_context_stays_fixed(family, tiny):
    ad = build_from_config(tiny[family], name="t").adapter
    ds = DecodeState(ad, 1, 10, torch.float32, "cpu")
    cache = ds.state.cache
    fresh = cache.get_seq_length()
    keys0 = cache.layers[1].keys.clone()
    tok = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        for _ in range(3):
            h = ad.embed(tok, 10)
            ctx = ad.context(h, ds.state, 0, None)
            for i in range(ad.num_blocks):
                h = ad.block(i, h, ctx)
            keys = cache.layers[1].keys
            if family == "mistral":
                # the sliding window of 4 keeps the last 3 keys: the step rolls the oldest out
                assert keys.shape == keys0.shape and torch.equal(keys[..., :-1, :], keys0[..., 1:, :])
            else:
                # the step appended the new token's key after the 10 cached ones
                assert keys.shape[-2] == keys0.shape[-2] + 1 and torch.equal(keys[..., :-1, :], keys0)
            ds.reset()
            # the same cache object, back to exactly the keys it held (no rebuild between steps)
            assert ds.state.cache is cache and cache.get_seq_length() == fresh
            assert torch.equal(cache.layers[1].keys, keys0)
    if family != "mistral":
        assert fresh == 10  # a sliding window of 4 holds fewer


def test_default_contexts_that_do_not_fit_are_reported(tiny):
    # 64 positions: none of the defaults 128, 512, 2048 fits; the longest that does (63) stands in
    p = profile_loaded(build_from_config(tiny["gpt2"], name="t"), quick(decode_context=None, repeats=1))
    assert p.context.decode_context_tokens == [63]
    assert any("[128, 512, 2048] do not fit" in n and "63 measured instead" in n for n in p.notes)


def test_hardware_counter_energy_is_labelled_and_measured(monkeypatch, tiny):
    class Counter:
        source = "rapl"
        min_window_s = 0.0

        def __init__(self):
            self.j = 0.0

        def read_j(self):
            self.j += 1.0  # one joule per read: each window of n calls reads 1 J
            return self.j

    monkeypatch.setattr(measure, "open_hardware_reader", lambda device: Counter())
    p = profile_loaded(build_from_config(tiny["llama"], name="t"), quick(power_w=None, decode_context=[4]))
    assert p.context.energy_source == "rapl" and p.context.power_w is None
    # windows are at least 3 calls and the counter moved 1 J: 1/3 J per call at most
    for s in p.stages:
        assert 0 < s.prefill_energy_j <= 1 / 3 and 0 < s.decode[0].energy_j <= 1 / 3
    assert not any("ESTIMATE" in n for n in p.notes)


def test_no_power_model_means_no_energy(monkeypatch, tiny):
    monkeypatch.setattr(measure, "codecarbon_cpu_power_w", lambda: None)
    p = profile_loaded(build_from_config(tiny["bert"], name="t"), quick(power_w=None))
    assert p.context.energy_source == "none"
    assert all(s.prefill_energy_j is None for s in p.stages)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seq_len=0), "--prompt-tokens must be positive"),
        (dict(batch=-1), "--batch"),
        (dict(repeats=0), "--repeats"),
        (dict(dtype="fp8"), "--dtype"),
        (dict(device="tpu"), "--device"),
        (dict(power_w=0.0), "--power must be positive"),
        (dict(decode_context=[0]), "--decode-context"),
        (dict(threads=0), "--threads"),
    ],
)
def test_bad_options_fail_before_work(kw, match):
    with pytest.raises(UserInputError, match=match):
        run_profile("no-such-model-folder", quick(**kw))


def test_prompt_or_context_too_long(tiny):
    loaded = build_from_config(tiny["llama"], name="t")
    with pytest.raises(UserInputError, match="exceeds the model's 64 positions"):
        profile_loaded(loaded, quick(seq_len=65))
    with pytest.raises(UserInputError, match=r"--decode-context \[64\]"):
        profile_loaded(loaded, quick(decode_context=[4, 64]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_device_error():
    with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
        run_profile("gpt2", quick(device="cuda"))


def test_fast_models_get_more_repeats_up_to_the_bound(tiny):
    p = profile_loaded(build_from_config(tiny["bert"], name="t"), quick(min_time_s=60.0, max_repeats=7))
    assert all(s.prefill.repeats == 7 for s in p.stages) and p.whole_model.prefill.repeats == 7
    assert p.context.repeats == 3 and p.context.min_time_s == 60.0


def test_parse_context_list():
    assert parse_context_list("128, 512,2048") == [128, 512, 2048]
    assert parse_context_list("") == []
    with pytest.raises(UserInputError, match="integers"):
        parse_context_list("12,abc")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_cuda_profile(dtype, monkeypatch, tiny):
    monkeypatch.undo()  # use NVML when the GPU has it
    p = profile_loaded(build_from_config(tiny["llama"], name="t"), quick(device="cuda", dtype=dtype, power_w=None))
    assert p.context.device == "cuda" and p.context.dtype == dtype
    assert p.peak_memory_source == "cuda_max_allocated" and p.peak_memory_bytes > 0
    assert all(s.peak_memory_bytes is not None for s in p.stages)
    el = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    assert p.stages[0].param_bytes == 101 * 64 * el
    assert p.context.energy_source in ("nvml", "none")
    if p.context.energy_source == "nvml":
        assert all(s.prefill_energy_j is not None and s.prefill_energy_j >= 0 for s in p.stages)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_on_cpu(dtype, tiny):
    p = profile_loaded(build_from_config(tiny["llama"], name="t"), quick(dtype=dtype, decode_context=[4]))
    assert p.context.dtype == dtype
    assert p.stages[0].param_bytes == 101 * 64 * 2
    assert p.stages[1].kv_cache_bytes_per_token == 2 * 2 * 16 * 2 * 2  # 2-byte cache entries
    assert any("fp16 on CPU" in n for n in p.notes) == (dtype == "fp16")


def _fake_runner(stage_times, whole_s: float):
    """A StagedRunner stand-in: pass number ``call`` (from 1) of ``n`` stages takes
    ``stage_times(call, n)`` seconds per stage; the whole model always takes ``whole_s``."""

    class FakeRunner:
        def __init__(self, ad, device, k):
            self.n, self.calls = ad.num_blocks + 2, 0

        def staged(self, x, state, past, capture=None):
            self.calls += 1
            return stage_times(self.calls, self.n)

        def whole(self, x, cache):
            return whole_s

    return FakeRunner


def test_medians_coverage_and_noise_from_known_timings(monkeypatch, tiny):
    # Stage i takes (i + 1) ms, plus a 10 ms spike that lands in a different stage on each pass;
    # the whole model always takes 30 ms.
    def spiky(call, n):
        t = [0.001 * (i + 1) for i in range(n)]
        t[call % n] += 0.010
        return t

    monkeypatch.setattr(measure, "StagedRunner", _fake_runner(spiky, 0.030))
    p = profile_loaded(build_from_config(tiny["llama"], name="t"), quick(repeats=5, warmup=0, decode_context=[4]))
    # 5 stages, 5 passes: every stage gets one spike, so each median is the clean value, IQR 0
    assert [s.prefill.median_ms for s in p.stages] == pytest.approx([1, 2, 3, 4, 5])
    assert all(s.prefill.iqr_ms == pytest.approx(0) and not s.noisy for s in p.stages)
    assert [s.decode[0].timing.median_ms for s in p.stages] == pytest.approx([1, 2, 3, 4, 5])
    wm = p.whole_model
    assert wm.prefill.median_ms == pytest.approx(30)
    assert wm.prefill_coverage == pytest.approx(15 / 30)  # sum of stage medians / whole
    assert wm.prefill_pass_coverage == pytest.approx(25 / 30)  # every pass totals 15 + 10 ms
    assert wm.decode_coverage == pytest.approx([0.5]) and wm.decode_pass_coverage == pytest.approx([25 / 30])
    assert p.stages[2].prefill_energy_j == pytest.approx(10.0 * 0.003)
    assert any("coverage 0.50 is outside" in n for n in p.notes)


def test_noisy_stage_is_flagged(monkeypatch, tiny):
    def growing_block0(call, n):
        t = [0.001] * n
        t[1] = 0.001 * call  # block.0: 1, 2, 3, 4 ms -> median 2.5, IQR 1.5
        return t

    monkeypatch.setattr(measure, "StagedRunner", _fake_runner(growing_block0, 0.010))
    p = profile_loaded(build_from_config(tiny["bert"], name="t"), quick(repeats=4, warmup=0))
    b0 = p.stages[1]
    assert b0.prefill.median_ms == pytest.approx(2.5) and b0.prefill.iqr_ms == pytest.approx(1.5)
    assert b0.noisy and not p.stages[0].noisy
    assert any(n.startswith("noisy (IQR/median > 10%): block.0") for n in p.notes)
