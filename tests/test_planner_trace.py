"""Channel traces: generators' statistics with a seed, the SNR models by hand, files and their refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coinfer.errors import SchemaError, UserInputError
from coinfer.planner.channel import (
    ChannelState,
    bit_error_rate,
    common_impairment,
    erasure_from_snr,
    parse_erasure,
    parse_snr_db,
    shannon_rate_from_snr,
    state_rates,
)
from coinfer.planner.link import Link
from coinfer.planner.trace import generate_trace, load_states, load_trace, snr_series
from coinfer.reports.io import write_json


def test_rayleigh_block_fading_statistics():
    snr = snr_series("rayleigh", 40_000, 10.0, seed=1)
    g = 10 ** (snr / 10) / 10.0  # the power gain: exponential with mean 1
    assert g.mean() == pytest.approx(1.0, abs=0.02)
    assert g.var() == pytest.approx(1.0, abs=0.05)
    assert np.mean(g < math.log(2)) == pytest.approx(0.5, abs=0.01)  # median of Exp(1) is ln 2
    assert np.corrcoef(g[:-1], g[1:])[0, 1] == pytest.approx(0.0, abs=0.02)  # independent blocks
    np.testing.assert_array_equal(snr, snr_series("rayleigh", 40_000, 10.0, seed=1))
    assert not np.array_equal(snr, snr_series("rayleigh", 40_000, 10.0, seed=2))


def test_gauss_markov_statistics():
    x = snr_series("gauss-markov", 40_000, 12.0, seed=0, correlation=0.8, sigma_db=3.0)
    assert x.mean() == pytest.approx(12.0, abs=0.15)
    assert x.std() == pytest.approx(3.0, abs=0.1)
    assert np.corrcoef(x[:-1], x[1:])[0, 1] == pytest.approx(0.8, abs=0.02)
    assert np.corrcoef(x[:-2], x[2:])[0, 1] == pytest.approx(0.64, abs=0.03)  # AR(1): rho^2 at lag 2


def test_snr_models_by_hand():
    assert bit_error_rate(0.0, "bpsk") == pytest.approx(0.5 * math.erfc(1.0))
    assert bit_error_rate(3.0, "qpsk") == pytest.approx(0.5 * math.erfc(math.sqrt(10 ** 0.3 / 2)))
    ber = 0.5 * math.erfc(1.0)
    assert erasure_from_snr(0.0, "bpsk", 16) == pytest.approx(1 - (1 - ber) ** 16)
    assert erasure_from_snr(0.0, "bpsk", 1) == pytest.approx(ber)
    assert shannon_rate_from_snr(1e6, 10 * math.log10(3)) == pytest.approx(2e6)  # log2(1 + 3) = 2
    p = erasure_from_snr(np.array([-5.0, 0.0, 5.0, 10.0]), "bpsk", 16)
    assert np.all(np.diff(p) < 0)  # a better channel erases less


def test_generated_trace_carries_rate_and_erasure_and_reloads(tmp_path):
    tr = generate_trace("rayleigh", mean_snr_db=10, duration_s=2, block_s=0.1, seed=0, bandwidth_hz=1e6,
                        erasure_model="qpsk", element_bits=8)
    assert len(tr.steps) == 20 and tr.steps[1].t_s == pytest.approx(0.1)
    s = tr.steps[3]
    assert s.rate_bps == pytest.approx(shannon_rate_from_snr(1e6, s.snr_db))
    assert s.erasure_p == pytest.approx(erasure_from_snr(s.snr_db, "qpsk", 8))
    assert tr.generator.seed == 0 and "model" in tr.generator.model_description
    write_json(tr, tmp_path / "t.json")
    assert load_trace(str(tmp_path / "t.json")).steps == tr.steps


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_csv_trace_and_distribution(tmp_path):
    tr = load_trace(write(tmp_path, "t.csv", "# coinfer channel_trace v1\nt_s,rate_bps,erasure_p\n0,1e6,0.1\n0.5,2e6,0.2\n"))
    assert [s.erasure_p for s in tr.steps] == [0.1, 0.2]
    st = load_states(write(tmp_path, "s.csv", "probability,snr_db\n0.25,5\n0.75,15\n"))
    assert [s.probability for s in st.states] == [0.25, 0.75]


@pytest.mark.parametrize("text, fragment", [
    ("t_s,erasure_p\n0,0.1\n,0.2\n", "row 2: missing t_s"),
    ("t_s,erasure_p\n0,0.1\n0.5,0.2\n0.5,0.3\n", "row 3: t_s 0.5 does not come after 0.5"),
    ("t_s,erasure_p\n1,0.1\n0.5,0.2\n", "timestamps must increase"),
    ("t_s,erasure_p\n0,1.5\n", "row 1: erasure_p"),
    ("t_s,snr_db\n0,abc\n", "snr_db 'abc' is not a number"),
    ("t_s,snr_db\n0,nan\n", "not a finite number"),
    ("t_s,snr_db,erasure_p\n0,3,0.1\n1,4,\n", "row 2 gives snr_db but row 1 gives snr_db, erasure_p"),
    ("erasure_p\n0.1\n", "no t_s column"),
    ("t_s,speed\n0,1\n", "unknown column 'speed'"),
    ("# coinfer channel_trace v2\nt_s,snr_db\n0,1\n", "is not a channel_trace v1 file"),
])
def test_bad_csv_traces_are_refused_in_one_line(tmp_path, text, fragment):
    with pytest.raises(SchemaError) as exc:
        load_trace(write(tmp_path, "bad.csv", text))
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_bad_json_trace_and_distribution(tmp_path):
    bad = write(tmp_path, "b.json", '{"kind": "channel_trace", "schema_version": 1, "steps": '
                '[{"t_s": 0, "erasure_p": 0.1}, {"erasure_p": 0.2}]}')
    with pytest.raises(SchemaError, match="row 2: t_s: Field required"):
        load_trace(bad)
    bad = write(tmp_path, "c.json", '{"kind": "channel_trace", "schema_version": 1, "steps": '
                '[{"t_s": 1, "erasure_p": 0.1}, {"t_s": 0, "erasure_p": 0.2}]}')
    with pytest.raises(SchemaError, match="does not come after"):
        load_trace(bad)
    with pytest.raises(SchemaError, match="sum to 0.9"):
        load_states(write(tmp_path, "s.csv", "probability,erasure_p\n0.5,0.1\n0.4,0.2\n"))
    with pytest.raises(SchemaError, match="expected a 'channel_trace' file"):
        load_trace(write(tmp_path, "p.json", '{"kind": "plan", "schema_version": 1}'))


def test_parse_state_options():
    assert parse_erasure("0.25") == 0.25
    assert parse_snr_db("10dB") == 10.0 and parse_snr_db("-3.5") == -3.5
    for bad, fn in (("1.5", parse_erasure), ("-0.1", parse_erasure), ("x", parse_erasure), ("ten", parse_snr_db),
                    ("inf", parse_snr_db)):
        with pytest.raises(UserInputError):
            fn(bad)


def test_state_rates_and_impairments():
    wireless = Link(bandwidth_hz=1e6, channel_gain=1e-9, noise_w_per_hz=1e-17, tx_powers_w=(0.1,))
    fixed = Link(rate_bps=5e6, downlink_rate_bps=1e6)
    st = [ChannelState(rate_bps=3e6, snr_db=0.0), ChannelState(snr_db=10 * math.log10(3)), ChannelState()]
    up, down = state_rates(st, wireless)
    assert up[0] == 3e6 and up[1] == pytest.approx(2e6)
    assert up[2] == pytest.approx(1e6 * math.log2(1 + 0.1 * 1e-9 / (1e-17 * 1e6)))
    np.testing.assert_allclose(down, up)  # the downlink follows the state's uplink
    up, down = state_rates(st, fixed)
    np.testing.assert_allclose(up, [3e6, 5e6, 5e6])
    np.testing.assert_allclose(down, 1e6)
    assert common_impairment([ChannelState(erasure_p=0.1, snr_db=3)]) == "erasure"
    with pytest.raises(UserInputError, match="mix impairments"):
        common_impairment([ChannelState(erasure_p=0.1), ChannelState(snr_db=3)])
