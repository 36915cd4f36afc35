"""The wire codec and the channel (models/channel.py): hand-computed codes, statistics, and the
equivalence of a teacher-forced corrupted window with step-by-step split decoding."""

from __future__ import annotations

import math

import pytest
import torch

from coinfer.models import channel
from coinfer.models.payload import activation_bytes
from coinfer.models.shards import shard_range
from coinfer.reports.robustness import ChannelCondition, Estimate, student_t_quantile


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- wire -------------------------------------------------------------------------------------------
def test_int8_codes_and_values_by_hand():
    x = torch.tensor([[[127.0, -63.5, 2.25, 0.0], [-4.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    q, scale = channel.encode(x, "int8")
    # row 0: scale 1, -63.5 rounds half to even (-64); row 1: scale 4/127; zero row: scale 1
    assert q[0, 0].tolist() == [127, -64, 2, 0]
    assert q[0, 1].tolist() == [-127, 32, 16, 0]  # 1 / (4/127) = 31.75, 0.5 / (4/127) = 15.875
    assert scale[0].tolist() == pytest.approx([1.0, 4 / 127, 1.0])
    y = channel.decode([q, scale], "int8")
    assert y[0, 0].tolist() == [127.0, -64.0, 2.0, 0.0]
    assert y[0, 1].tolist() == pytest.approx([-4.0, 32 * 4 / 127, 16 * 4 / 127, 0.0])
    assert torch.equal(y[0, 2], torch.zeros(4))


def test_int4_codes_packing_and_values_by_hand():
    x = torch.zeros(1, 1, 40)  # two groups of 32, the second padded with 24 zeros
    x[0, 0, :4] = torch.tensor([7.0, -3.5, 2.5, 0.4])  # absmax 7: scale 1
    x[0, 0, 32:35] = torch.tensor([14.0, 1.0, -3.0])  # absmax 14: scale 2
    packed, scale = channel.encode(x, "int4")
    assert packed.shape == (1, 1, 32) and packed.dtype == torch.uint8
    assert scale.dtype == torch.float16 and scale.tolist() == [[[1.0, 2.0]]]
    # codes q + 8, even element in the low nibble: (7, -4) -> 15 | 4 << 4; (2, 0) -> 10 | 8 << 4
    assert packed[0, 0, :2].tolist() == [15 | 4 << 4, 10 | 8 << 4]
    # second group: 14/2 = 7, 1/2 = 0.5 -> 0 (half to even), -3/2 = -1.5 -> -2
    assert packed[0, 0, 16:18].tolist() == [15 | 8 << 4, 6 | 8 << 4]
    y = channel.decode([packed, scale], "int4", 40)
    assert y.shape == (1, 1, 40)
    assert y[0, 0, :4].tolist() == [7.0, -4.0, 2.0, 0.0]
    assert y[0, 0, 32:35].tolist() == [14.0, 0.0, -4.0]
    assert channel.decode([packed, scale], "int4").shape == (1, 1, 64)  # whole groups without the size


@pytest.mark.parametrize("wire_dtype, hidden", [("int8", 48), ("int4", 48), ("int4", 576)])
def test_quantised_roundtrip_error_within_half_a_step(wire_dtype, hidden):
    x = torch.randn(2, 5, hidden, generator=_gen(1)) * torch.tensor([0.1, 1.0, 30.0, 5.0, 2.0])[None, :, None]
    x[1, 2] = 0
    y = channel.roundtrip(x, wire_dtype)
    err = (y - x).abs()
    if wire_dtype == "int8":
        step = x.abs().amax(-1, keepdim=True) / 127
    else:
        g = torch.nn.functional.pad(x, (0, -hidden % 32)).reshape(2, 5, -1, 32)
        step = (g.abs().amax(-1, keepdim=True) / 7).half().float().expand_as(g).reshape(2, 5, -1)[..., :hidden]
    assert torch.all(err <= step / 2 * (1 + 1e-3) + 1e-7)
    assert torch.equal(y[1, 2], torch.zeros(hidden)) and err.max() > 0


def test_int4_payload_bytes_match_the_codec():
    # 18 B per group of 32: 16 B of codes, one fp16 scale
    assert activation_bytes(1, 1, 576, "int4") == 18 * 18 == 324
    assert activation_bytes(2, 3, 70, "int4") == 2 * 3 * 3 * 18  # 70 -> 3 groups (last one padded)
    assert activation_bytes(1, 1, 576, "int4") * 7 < activation_bytes(1, 1, 576, "fp32")
    for shape in ((2, 3, 70), (1, 1, 576), (1, 9, 64)):
        parts = channel.encode(torch.randn(shape, generator=_gen()), "int4")
        assert channel.nbytes(parts) == activation_bytes(*shape, "int4")
        bufs = channel.buffers(shape, "int4")
        assert [(b.shape, b.dtype) for b in bufs] == [(p.shape, p.dtype) for p in parts]


# -- channel ----------------------------------------------------------------------------------------
def test_erasure_rate_and_edges():
    x = torch.ones(1, 200, 500)
    y = channel.erase(x, 0.1, _gen(3))
    rate = float((y == 0).float().mean())
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / x.numel())  # 4 sigma
    rows = (y == 0).float().mean(-1)  # every token row is erased at the same rate
    assert float(rows.min()) > 0.05 and float(rows.max()) < 0.15
    assert torch.equal(y[y != 0], x[y != 0])  # the rest arrives intact
    assert torch.equal(channel.erase(x, 0.0, _gen()), x)
    assert torch.equal(channel.erase(x, 1.0, _gen()), torch.zeros_like(x))


def test_awgn_measured_snr_per_token_row():
    scales = torch.tensor([0.01, 1.0, 100.0])[:, None]
    x = torch.randn(1, 3, 8192, generator=_gen(4)) * scales
    for snr in (0.0, 10.0, 25.0):
        noise = channel.awgn(x, snr, _gen(5)) - x
        measured = 10 * torch.log10(x.pow(2).mean(-1) / noise.pow(2).mean(-1))
        assert torch.allclose(measured, torch.full_like(measured, snr), atol=0.15), measured
        assert float(noise.mean(-1).abs().div(noise.std(-1)).max()) < 0.05


def test_standard_normal_moments_and_rowwise_stream():
    z = channel.standard_normal((4, 50_000), _gen(6))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.01
    assert abs(float((z.abs() < 1).float().mean()) - 0.6827) < 0.005
    whole = channel.standard_normal((5, 37), _gen(7))
    g = _gen(7)
    rows = torch.cat([channel.standard_normal((1, 37), g) for _ in range(5)])
    assert torch.equal(whole, rows)


def test_conditions_need_a_generator_and_seeds_are_keyed():
    x = torch.randn(1, 4, 8, generator=_gen())
    with pytest.raises(ValueError, match="seeded generator"):
        channel.impair(x, ChannelCondition(impairment="erasure", erasure_p=0.5), None)
    cond = ChannelCondition(wire_dtype="int8", impairment="awgn", snr_db=5)
    a = channel.transmit(x, cond, channel.generator(0, 3, cond.label(), 0))
    assert torch.equal(a, channel.transmit(x, cond, channel.generator(0, 3, cond.label(), 0)))
    assert not torch.equal(a, channel.transmit(x, cond, channel.generator(0, 3, cond.label(), 1)))
    assert torch.equal(channel.transmit(x, ChannelCondition(wire_dtype="fp16"), None), x.half().float())


# -- teacher forcing is split decoding --------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("cond", [ChannelCondition(wire_dtype="int8"),
                                  ChannelCondition(wire_dtype="fp32", impairment="erasure", erasure_p=0.2),
                                  ChannelCondition(wire_dtype="int4", impairment="awgn", snr_db=8)])
def test_corrupted_window_equals_step_by_step_split_decoding(tiny_models, family, cond):
    m = tiny_models[family]
    L, cut, T = m.adapter.num_blocks, 2, 12
    ids = torch.randint(0, 101, (1, T), generator=_gen(8))
    act = shard_range(m, 0, cut)(ids)  # what the device sends (every token, clean)
    server = shard_range(m, cut, L + 2, logits_to_keep=0)
    with torch.no_grad():
        window = server(channel.transmit(act, cond, _gen(9))).logits
        # split decoding: token t crosses alone, the server's KV cache is built from what arrived
        state, g, steps = server.new_state(), _gen(9), []
        for t in range(T):
            steps.append(server(channel.transmit(act[:, t : t + 1], cond, g), state).logits[:, -1])
    stepwise = torch.stack(steps, dim=1)
    assert torch.allclose(window, stepwise, atol=2e-5, rtol=1e-4)
    clean = server(act).logits
    assert not torch.allclose(window, clean, atol=1e-3)  # the corruption did change the answer


# -- estimates --------------------------------------------------------------------------------------
def test_estimate_by_hand_and_t_quantiles():
    e = Estimate.of([1.0, 2.0, 3.0])
    half = 4.302652729749 / math.sqrt(3)  # t_{0.975, 2} * s / sqrt(n), s = 1
    assert (e.mean, e.draws) == (2.0, 3)
    assert e.ci_low == pytest.approx(2 - half, rel=1e-9) and e.ci_high == pytest.approx(2 + half, rel=1e-9)
    assert Estimate.of([0.7]).model_dump() == dict(mean=0.7, ci_low=0.7, ci_high=0.7, draws=1)
    for q, df, want in [(0.975, 1, 12.7062047362), (0.975, 9, 2.2621571628), (0.95, 4, 2.1318467813),
                        (0.995, 30, 2.7499956536)]:
        assert student_t_quantile(q, df) == pytest.approx(want, rel=1e-8)
    wide = Estimate.of([1.0, 2.0], 0.99)
    assert wide.ci_high - wide.ci_low > Estimate.of([1.0, 2.0], 0.9).ci_high - Estimate.of([1.0, 2.0], 0.9).ci_low


def test_int4_is_a_wire_dtype_the_planner_prices():
    from coinfer.planner.cost import derive_server_profile, evaluate
    from coinfer.planner.link import Link
    from coinfer.planner.synthetic import synthetic_profile

    d = synthetic_profile(2, hidden=64, seq_len=4)
    assert d.stages[1].payload_after["int4"].prefill_bytes == 4 * 2 * 18  # 4 tokens x 2 groups x 18 B
    c = evaluate(d, derive_server_profile(d, 2.0), Link(rate_bps=1e6), cut=2, prompt_tokens=4, new_tokens=2,
                 wire_dtype="int4")
    assert c.uplink_prefill_bytes == 4 * 2 * 18 and c.uplink_per_token_bytes == 2 * 18
