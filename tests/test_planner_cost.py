"""The cost model against hand-computed values (SCIENCE.md's formulas, worked by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coinfer.errors import SchemaError, UserInputError
from coinfer.planner.cost import (
    Budgets,
    Objective,
    Workload,
    build_cost_model,
    derive_server_profile,
    evaluate,
)
from coinfer.planner.link import Link, shannon_rate_bps, wireless_link
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report

# 2 blocks; stages embed, block.0, block.1, head. hidden 8, prompt 4 tokens, batch 1:
# fp32 activation 4*8*4 = 128 B (32 B per token); token ids 32 B (8 per token); result 8 B.
STAGE_MS = [1.0, 2.0, 3.0, 4.0]
DECODE_MS = [[0.1, 0.2], [0.2, 0.4], [0.3, 0.6], [0.4, 0.8]]  # at contexts 4 and 8
PARAMS = [100, 1000, 1000, 50]


def dev(**kw):
    args = dict(stage_ms=STAGE_MS, decode_ms=DECODE_MS, decode_contexts=(4, 8), param_bytes=PARAMS,
                kv_bytes_per_token=512, hidden=8, seq_len=4, energy_j_per_ms=0.01)
    args.update(kw)
    return synthetic_profile(2, **args)


LINK = Link(rate_bps=1e6, rtt_ms=10.0, tx_powers_w=(0.5,))  # 1 byte = 0.008 ms


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-12)


def test_split_prefill_and_decode_by_hand():
    d = dev()
    c = evaluate(d, derive_server_profile(d, 2.0), LINK, cut=2, prompt_tokens=4, new_tokens=2)
    # Decode at contexts 4 and 5: stage i costs v0 and v0 + (v1 - v0) / 4; mean over the two steps.
    assert c.cut_name == "block.0"
    assert c.prefill.device_ms == approx(3.0)
    assert c.prefill.uplink_ms == approx(128 * 0.008 + 5)
    assert c.prefill.server_ms == approx(1.5 + 2.0)
    assert c.prefill.downlink_ms == approx(8 * 0.008 + 5)
    assert c.prefill.total_ms == approx(17.588)
    assert c.per_token.device_ms == approx(0.1125 + 0.225)
    assert c.per_token.uplink_ms == approx(32 * 0.008 + 5)
    assert c.per_token.server_ms == approx((0.3375 + 0.45) / 2)
    assert c.per_token.downlink_ms == approx(8 * 0.008 + 5)
    assert c.total_latency_ms == approx(17.588 + 2 * 11.05125)
    assert c.energy.compute_j == approx(0.01 * (3.0 + 2 * 0.3375))
    assert c.energy.transmit_j == approx(0.5 * (128 + 2 * 32) * 8 / 1e6)
    assert c.device_memory_bytes == 100 + 1000 + 512 * 6
    assert c.uplink_prefill_bytes == 128 and c.uplink_per_token_bytes == 32


def test_ends_by_hand():
    d = dev()
    s = derive_server_profile(d, 2.0)
    srv = evaluate(d, s, LINK, cut=0, prompt_tokens=4, new_tokens=2)
    # All on the server: token ids up once, then the server generates and streams ids back.
    assert srv.cut_name == "server-only"
    assert srv.prefill.total_ms == approx(32 * 0.008 + 5 + 5.0 + 8 * 0.008 + 5)
    assert srv.per_token.uplink_ms == 0 and srv.per_token.device_ms == 0
    assert srv.per_token.total_ms == approx(0.5625 + 0.064)
    assert srv.energy.compute_j == 0 and srv.energy.transmit_j == approx(0.5 * 32 * 8 / 1e6)
    dv = evaluate(d, s, LINK, cut=4, prompt_tokens=4, new_tokens=2)
    assert dv.cut_name == "head"
    assert dv.prefill.total_ms == approx(10.0) and dv.prefill.uplink_ms == 0 and dv.prefill.downlink_ms == 0
    assert dv.total_latency_ms == approx(10.0 + 2 * 1.125)
    assert dv.energy.transmit_j == 0


def test_dvfs_scales_latency_and_energy():
    d = dev()
    s = derive_server_profile(d, 2.0)
    full = evaluate(d, s, LINK, cut=2, prompt_tokens=4, new_tokens=2)
    half = evaluate(d, s, LINK, cut=2, prompt_tokens=4, new_tokens=2, freq_scale=0.5)
    assert half.prefill.device_ms == approx(2 * full.prefill.device_ms)
    assert half.per_token.device_ms == approx(2 * full.per_token.device_ms)
    assert half.energy.compute_j == approx(0.25 * full.energy.compute_j)
    assert half.prefill.server_ms == full.prefill.server_ms


def test_prompt_scaling_and_wire_dtype():
    d = dev()
    s = derive_server_profile(d, 2.0)
    c = evaluate(d, s, LINK, cut=2, prompt_tokens=8, wire_dtype="fp16")
    assert c.uplink_prefill_bytes == 8 * 8 * 2  # exact by tokens; fp16 = 2 bytes
    assert c.prefill.device_ms == approx(6.0)  # linear per token
    c0 = evaluate(d, s, LINK, cut=0, prompt_tokens=8)
    assert c0.uplink_prefill_bytes == 64
    i8 = evaluate(d, s, LINK, cut=2, prompt_tokens=4, wire_dtype="int8")
    assert i8.uplink_prefill_bytes == 4 * 8 + 4 * 4  # int8 plus one fp32 scale per token


def test_decode_extrapolates_linearly_and_constant_with_one_point():
    d = dev()
    s = derive_server_profile(d, 2.0)
    c = evaluate(d, s, LINK, cut=1, prompt_tokens=10, new_tokens=1)
    assert c.per_token.device_ms == approx(0.2 + 0.025 * 2)  # beyond context 8, slope of the last segment
    d1 = dev(decode_ms=[[v[0]] for v in DECODE_MS], decode_contexts=(4,))
    c1 = evaluate(d1, derive_server_profile(d1, 2.0), LINK, cut=1, prompt_tokens=100, new_tokens=3)
    assert c1.per_token.device_ms == approx(0.1)


def test_energy_from_power_model_when_not_measured():
    d = dev(energy_j_per_ms=None)
    d.context.power_w = 5.0
    c = evaluate(d, derive_server_profile(d, 2.0), LINK, cut=2, prompt_tokens=4)
    assert c.energy.compute_j == approx(5.0 * 3.0 / 1e3)


def test_pruning_speeds_up_pruned_blocks_and_shrinks_weights():
    d = dev()
    s = derive_server_profile(d, 2.0)
    rep = synthetic_prune_report(2, ratios=(0.5,), speedups=(2.0,), distortions=(0.1,))
    c = evaluate(d, s, LINK, cut=2, ratio=0.5, prune=rep, prompt_tokens=4, new_tokens=2)
    assert c.prefill.device_ms == approx(1.0 + 2.0 / 2)
    assert c.prefill.server_ms == approx(1.5 / 2 + 2.0)  # scope 'all': the server runs the pruned model too
    assert c.per_token.device_ms == approx(0.1125 + 0.225 / 2)
    assert c.device_memory_bytes == 100 + 500 + 512 * 6
    assert c.distortion == 0.1
    with pytest.raises(UserInputError, match="ratio 0.3 is not in the pruning report"):
        evaluate(d, s, LINK, cut=2, ratio=0.3, prune=rep)


def test_device_scope_pruning_only_at_its_split():
    d = dev()
    s = derive_server_profile(d, 2.0)
    rep = synthetic_prune_report(2, ratios=(0.5,), speedups=(2.0,), scope="device", split=1)
    ok = evaluate(d, s, LINK, cut=2, ratio=0.5, prune=rep, prompt_tokens=4)
    assert ok.feasible and ok.prefill.server_ms == approx(1.5 + 2.0)
    other = evaluate(d, s, LINK, cut=3, ratio=0.5, prune=rep, prompt_tokens=4)
    assert not other.feasible and "another cut" in other.violations[0]


def test_budgets_are_listed_as_violations():
    d = dev()
    c = evaluate(d, derive_server_profile(d, 2.0), LINK, cut=2, prompt_tokens=4,
                 budgets=Budgets(latency_ms=1.0, memory_bytes=10))
    assert not c.feasible and len(c.violations) == 2 and "latency" in c.violations[0]


def test_objectives():
    d = dev()
    s = derive_server_profile(d, 2.0)
    lat = evaluate(d, s, LINK, cut=2, prompt_tokens=4)
    en = evaluate(d, s, LINK, cut=2, prompt_tokens=4, objective=Objective("energy"))
    w = evaluate(d, s, LINK, cut=2, prompt_tokens=4, objective=Objective("weighted", 100.0))
    assert lat.objective == lat.total_latency_ms
    assert en.objective == en.energy.total_j
    assert w.objective == approx(lat.total_latency_ms + 100.0 * lat.energy.total_j)
    with pytest.raises(UserInputError):
        Objective("speed")
    with pytest.raises(UserInputError):
        Budgets(latency_ms=-1)
    with pytest.raises(UserInputError):
        Budgets(energy_j=math.nan)


def test_shannon_rate_and_wireless_transmit_energy():
    # B = 1 MHz, P g / (N0 B) = 0.1 * 1e-6 / (1e-15 * 1e6) = 100 -> r = 1e6 * log2(101)
    assert shannon_rate_bps(1e6, 0.1, 1e-6, 1e-15) == approx(1e6 * math.log2(101))
    link = wireless_link(bandwidth_hz=1e6, noise_w_per_hz=1e-15, tx_powers_w=(0.1,), channel_gain=1e-6)
    d = dev()
    c = evaluate(d, derive_server_profile(d, 2.0), link, cut=2, prompt_tokens=4)
    r = 1e6 * math.log2(101)
    assert c.uplink_rate_bps == approx(r)
    assert c.prefill.uplink_ms == approx(128 * 8e3 / r)
    assert c.energy.transmit_j == approx(0.1 * 128 * 8 / r)
    # distance form: g = g_ref * d^-alpha = 1e-3 * 100^-3 = 1e-9
    far = wireless_link(bandwidth_hz=1e6, noise_w_per_hz=1e-15, tx_powers_w=(0.1,), distance_m=100.0,
                        path_loss_exponent=3.0, reference_gain=1e-3)
    assert far.channel_gain == approx(1e-9)
    assert far.uplink_rates()[0] == approx(1e6 * math.log2(1.1))


def test_incompatible_inputs_are_schema_errors():
    d = dev()
    other = synthetic_profile(2, hidden=8, seq_len=4, config="cd")
    with pytest.raises(SchemaError, match="different models"):
        build_cost_model(d, other, Workload(4))
    with pytest.raises(SchemaError, match="another model"):
        build_cost_model(d, d, Workload(4), prune=synthetic_prune_report(2, config="cd", hidden=8))
    three = synthetic_profile(3, hidden=8, seq_len=4)
    with pytest.raises(SchemaError):
        build_cost_model(d, three, Workload(4))


def test_encoder_cannot_generate():
    enc = synthetic_profile(2, is_decoder=False, hidden=8, seq_len=4)
    with pytest.raises(UserInputError, match="not a decoder"):
        build_cost_model(enc, enc, Workload(4, 3))
    c = evaluate(enc, derive_server_profile(enc, 2.0), LINK, cut=2)
    assert c.per_token is None and c.total_latency_ms == c.prefill.total_ms


def test_derived_server_is_faster_and_has_no_energy():
    d = dev()
    s = derive_server_profile(d, 4.0)
    assert s.derived_from and s.stages[1].prefill.median_ms == 0.5 and s.stages[1].prefill_energy_j is None
    assert d.stages[1].prefill.median_ms == 2.0  # the device profile is untouched
    with pytest.raises(UserInputError):
        derive_server_profile(d, 0.0)


def test_cut_bounds():
    d = dev()
    with pytest.raises(UserInputError, match="outside 0..4"):
        evaluate(d, d, LINK, cut=5)
    assert np.isclose(evaluate(d, d, LINK, cut=4).total_latency_ms, 10.0)


def test_falling_decode_cost_is_not_extrapolated():
    # Noisy profile: cost falls from context 4 to 8; beyond 8 it is held at the last value, not sent to 0.
    d = dev(decode_ms=[[0.4, 0.2], [0.4, 0.2], [0.4, 0.2], [0.4, 0.2]])
    c = evaluate(d, derive_server_profile(d, 2.0), LINK, cut=1, prompt_tokens=100, new_tokens=1)
    assert c.per_token.device_ms == approx(0.2)
    below = evaluate(d, derive_server_profile(d, 2.0), LINK, cut=1, prompt_tokens=1, new_tokens=1)
    assert below.per_token.device_ms == approx(0.4)


def test_predict_cut_from_paths(tmp_path):
    from coinfer.planner import predict_cut
    from coinfer.reports.io import write_json

    d = dev()
    write_json(d, tmp_path / "d.json")
    write_json(derive_server_profile(d, 2.0), tmp_path / "s.json")
    a = predict_cut(tmp_path / "d.json", tmp_path / "s.json", 2, 1e6, 10.0, "fp32", prompt_tokens=4, new_tokens=2)
    assert a.total_latency_ms == approx(17.588 + 2 * 11.05125)
    b = predict_cut(tmp_path / "d.json", None, 2, 1e6, 10.0, server_speedup=2.0, prompt_tokens=4, new_tokens=2)
    assert b.total_latency_ms == a.total_latency_ms
    free = predict_cut(d, None, 2, None, 10.0, server_speedup=2.0, prompt_tokens=4)
    assert free.prefill.uplink_ms == pytest.approx(5.0) and free.prefill.downlink_ms == pytest.approx(5.0)
    with pytest.raises(UserInputError):
        predict_cut(d, None, 2, 1e6)


def test_speedup_applies_to_the_stages_it_was_measured_over():
    d = dev()
    s = derive_server_profile(d, 2.0)
    rep = synthetic_prune_report(2, ratios=(0.5,), speedups=(2.0,), scope="device", split=1)
    rep.results[0].speedup.measured_stages = ["embed", "block.0"]
    c = evaluate(d, s, LINK, cut=2, ratio=0.5, prune=rep, prompt_tokens=4)
    assert c.prefill.device_ms == approx((1.0 + 2.0) / 2)  # the timed shard, embed included, twice as fast
    assert c.prefill.server_ms == approx(1.5 + 2.0)


def test_contended_measurements_are_noted(contended_watch):
    record = contended_watch().stop()
    d, server = dev(), dev()
    rep = synthetic_prune_report(2, ratios=(0.5,), speedups=(2.0,), distortions=(0.1,))
    assert not any("CONTENDED" in n for n in build_cost_model(d, server, Workload(4), prune=rep).notes)
    d.contention = record
    rep.results[-1].speedup.contention = record
    notes = build_cost_model(d, server, Workload(4), prune=rep).notes
    assert [n for n in notes if "CONTENDED" in n] == [
        "device profile was measured on a CONTENDED machine (other processes took the cores it timed on): "
        "its latencies are inflated",
        "prune ratio 0.5: speed-up measured on a CONTENDED machine; it may be wrong either way",
    ]
