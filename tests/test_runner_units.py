"""`coinfer run` pieces that need no second process: wire codec, parsing, schema, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from coinfer import units
from coinfer.cli.main import main
from coinfer.errors import UserInputError
from coinfer.models.payload import activation_bytes
from coinfer.runner import wire
from coinfer.runner.linkemu import parse_duration_ms, parse_rate_bps, tbf_burst_bytes


@pytest.mark.parametrize("wire_dtype", ["fp32", "fp16", "int8"])
def test_codec_sizes_match_payload_model_and_roundtrip(wire_dtype):
    x = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(0)) * 3
    x[1, 2] = 0  # an all-zero row must survive int8
    parts = wire.encode(x, wire_dtype)
    assert wire.nbytes(parts) == activation_bytes(2, 5, 48, wire_dtype)
    bufs = wire.buffers((2, 5, 48), wire_dtype)
    assert [(b.shape, b.dtype) for b in bufs] == [(p.shape, p.dtype) for p in parts]
    y = wire.decode(parts, wire_dtype)
    assert y.dtype == torch.float32 and y.shape == x.shape
    err = (y - x).abs()
    if wire_dtype == "fp32":
        assert torch.equal(y, x)
    elif wire_dtype == "fp16":
        assert err.max() <= 3e-3 * x.abs().max()
    else:
        # symmetric per-token: error at most half a step of that row's scale
        step = x.abs().amax(-1, keepdim=True) / 127
        assert torch.all(err <= step / 2 + 1e-6)
        assert torch.equal(y[1, 2], torch.zeros(48))
        assert err.max() > 0


@pytest.mark.parametrize("text", ["20Mbps", "500kbps", "1.5Gbps", "2MB/s", "20", "20mbit", "20MBps", "fast",
                                  "-5Mbps", "0Mbps", "20 furlongs"])
def test_emulate_rate_reads_like_plan_rate(text):
    # One parser: the same value, or the same refusal under the option's own name.
    try:
        expected = units.parse_rate_bps(text, "--rate")
    except UserInputError as exc:
        with pytest.raises(UserInputError) as info:
            parse_rate_bps(text)
        assert str(info.value) == str(exc).replace("--rate", "--emulate-rate", 1)
    else:
        assert parse_rate_bps(text) == expected


def test_parse_duration():
    assert parse_duration_ms("10ms") == 10 and parse_duration_ms("0.2s") == 200 and parse_duration_ms("500us") == 0.5
    for bad in ("soon", "10"):
        with pytest.raises(UserInputError, match="--emulate-rtt"):
            parse_duration_ms(bad)


def test_tbf_bucket_is_small_but_covers_one_tick():
    assert tbf_burst_bytes(5e6) == 1600  # just over one 1514-byte frame, so messages pay bytes / rate
    assert tbf_burst_bytes(500e6) >= 500e6 / 8 / 1000


def test_non_root_gets_a_clear_error(monkeypatch):
    from coinfer.runner import linkemu

    monkeypatch.setattr(linkemu.os, "geteuid", lambda: 1000)
    with pytest.raises(UserInputError, match="needs root"):
        with linkemu.shaped_namespace(20e6):
            pass


def test_protocol_rejects_oversized_frames_without_reading_them():
    import socket
    import struct

    from coinfer.runner.protocol import MAX_FRAME_BYTES, ProtocolError, recv_frame

    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
        with pytest.raises(ProtocolError, match="refused"):
            recv_frame(b)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from coinfer.models.loading import build_from_config

    folder = tmp_path_factory.mktemp("tiny") / "gpt2"
    cfg = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)
    build_from_config(cfg, name="t").model.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--wire-dtype", "fp8", "--cut", "1"], "fp8"),
        (["--cut", "99"], "cut(s) [99]"),
        (["--chain-cuts", "3,2"], "increasing"),
        (["--cut", "1", "--emulate-rate", "fast"], "--emulate-rate 'fast'"),
        (["--cut", "1", "--role", "device"], "needs --server"),
        (["--cut", "1", "--role", "device", "--server", "nonsense"], "HOST:PORT"),
        (["--cut", "1", "--role", "device", "--server", "127.0.0.1:1"], "cannot reach server"),
        (["--cut", "1", "--role", "device", "--server", "127.0.0.1:1", "--emulate-rate", "5Mbps"], "--emulate-rate"),
        (["--cut", "1", "--prompt-tokens", "60", "--decode-steps", "10"], "positions"),
        (["--cut", "1", "--role", "moon"], "--role"),
    ],
)
def test_bad_input_exit_2_and_no_file(tiny_folder, tmp_path, capsys, args, message):
    out = tmp_path / "run.json"
    small = [] if "--prompt-tokens" in args else ["--prompt-tokens", "8", "--decode-steps", "2"]
    assert main(["run", "--model", tiny_folder, "--output", str(out), *small, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists()


def test_bad_plan_file_one_line_no_traceback(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"kind": "profile", "schema_version": 1}')
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", "run", "--plan", str(plan), "--output",
                           str(tmp_path / "r.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "expected a 'plan' file" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_all_on_device_cli_run_renders_table(tiny_folder, tmp_path, capsys):
    """Cut L+2: nothing crosses, no server needed; the table and the file still come out."""
    from coinfer.reports.io import load_document
    from coinfer.reports.run import RunResult

    out = tmp_path / "run.json"
    assert main(["run", "--model", tiny_folder, "--cut", "4", "--decode-steps", "3", "--prompt-tokens", "4",
                 "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured vs predicted" in text and "identical to the unsplit model: yes" in text
    res = load_document(out, RunResult)
    assert res.cut_name == "head" and res.traffic.total_bytes == 0 and [c.role for c in res.chain] == ["device"]
    assert res.prefill.end_to_end.predicted_ms is None and res.prefill.end_to_end.error_pct is None


def _cand(cut, total, ratio=0.0):
    from coinfer.reports.plan import Candidate, EnergyBreakdown, PhaseBreakdown

    pb = PhaseBreakdown(device_ms=1, uplink_ms=1, server_ms=1, downlink_ms=1, total_ms=total)
    return Candidate(cut=cut, cut_name="x", ratio=ratio, prefill=pb, per_token=pb, total_latency_ms=total, objective=total,
                     energy=EnergyBreakdown(compute_j=0, transmit_j=0, total_j=0), device_memory_bytes=0)


def test_plan_predictions_use_best_then_nominal_never_pruned():
    from coinfer.reports.common import ModelIdentity
    from coinfer.reports.plan import ChainPlan, ChainSegment, LinkModel, Plan
    from coinfer.runner.predict import chain_from_plan, from_plan

    link = LinkModel(uplink_rate_bps=1e6, downlink_rate_bps=1e6, rtt_ms=0)
    ident = ModelIdentity(name="m", family="gpt2", model_type="gpt2", config_sha256="0" * 64, weights="random",
                          num_blocks=4, hidden_size=8, vocab_size=10, num_parameters=1, is_decoder=True)
    plan = Plan(model=ident, inputs=[], link=link, objective="latency", prompt_tokens=4, new_tokens=2,
                best=_cand(3, 10.0, ratio=0.5), nominal=[_cand(c, 100.0 + c) for c in range(7)])
    pred, notes = from_plan(plan, 3, "fp32", "p.json")
    assert pred.prefill.total_ms == 103.0 and "pruned" in notes[0]  # the unpruned run is not held to a pruned plan
    pred, notes = from_plan(plan, 5, "int8", "p.json")
    assert pred.prefill.total_ms == 105.0 and any("int8" in n for n in notes)
    plan.best = _cand(3, 10.0)
    assert from_plan(plan, 3, "fp32", "p.json")[0].prefill.total_ms == 10.0
    plan.nominal = []
    assert from_plan(plan, 4, "fp32", "p.json")[0] is None

    segs = [ChainSegment(member=m, first_stage=a, num_stages=n, stage_names=[], compute_ms=0, memory_bytes=0)
            for m, a, n in (("phone", 0, 2), ("edge", 2, 2), ("cloud", 4, 2))]
    plan.best = None
    plan.chain = ChainPlan(members=["phone", "edge", "cloud"], objective="latency", segments=segs, hops=[],
                           total_latency_ms=42.0, bottleneck_ms=1, throughput_rps=1)
    cuts, pred = chain_from_plan(plan, "p.json")
    assert cuts == [2, 4] and pred.total_ms == 42.0 and pred.prefill is None
