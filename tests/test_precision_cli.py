"""`coinfer quantize` end to end on tiny models: the report, exported shards, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coinfer.cli.main import main
from coinfer.errors import DeviceUnavailableError
from coinfer.models import shard_io
from coinfer.models.loading import build_from_config
from coinfer.precision.modules import kernel_for
from coinfer.reports.io import file_sha256, load_document
from coinfer.reports.precision import PrecisionReport

QUICK = ["--repeats", "1", "--prompt-tokens", "16", "--eval-tokens", "256", "--eval-window", "64"]
TEXT = "It was a bright cold day in April, and the clocks were striking thirteen. " * 12
CALIB = "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 12


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_config):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for fam in ("llama", "bert"):
        m = build_from_config(tiny_config(fam), name=fam, seed=5)
        m.model.save_pretrained(root / fam)
        out[fam] = root / fam
    (root / "eval.txt").write_text(TEXT)
    (root / "calib.txt").write_text(CALIB)
    out["eval"], out["calib"] = root / "eval.txt", root / "calib.txt"
    return out


@pytest.fixture(scope="module")
def llama_run(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    rep, exp = root / "p.json", root / "shards"
    args = ["quantize", "--model", str(folders["llama"]), "--precision", "fp32,fp16,int8,int4", "--ratios", "0,0.5",
            "--split", "2", "--scope", "device", "--eval-text", str(folders["eval"]), "--calib", str(folders["calib"]),
            "--importance", "magnitude", "--export", str(exp), "-o", str(rep), *QUICK]
    assert main(args) == 0
    return load_document(rep, PrecisionReport), exp


def test_report_has_every_precision_and_ratio(llama_run):
    rep, _ = llama_run
    assert [(r.precision, r.pruning_ratio) for r in rep.results] == [
        (p, r) for r in (0.0, 0.5) for p in ("fp32", "fp16", "int8", "int4")]
    assert rep.timed_stages == ["embed", "block.0", "block.1"] and rep.decode_context_tokens == 16
    fp16 = rep.results[1]
    try:
        kernel_for("fp16", "cpu")
        assert fp16.supported
    except DeviceUnavailableError as exc:
        assert not fp16.supported and fp16.unsupported_reason == str(exc) and not fp16.stages
    ref, int8, int4 = rep.results[0], rep.results[2], rep.results[3]
    # The reference is timed once and compared with itself.
    assert all(s.prefill_speedup == 1.0 and s.decode_speedup == 1.0 for s in ref.stages)
    assert [s.stage for s in int8.stages] == rep.timed_stages and all(s.decode_ms > 0 for s in int8.stages)
    assert int8.prefill_ms == pytest.approx(sum(s.prefill_ms for s in int8.stages))
    assert [s.weight_bytes for s in int8.stages] == [101 * 64 * 4] + [int8.weight_bytes // 2] * 2  # embedding stays fp32
    # Scope weights: 2 blocks of q 64x64, k/v 32x64, o 64x64, gate/up 96x64, down 64x96, norms 2x64.
    mats = 64 * 64 * 2 + 32 * 64 * 2 + 96 * 64 * 3
    assert ref.weight_bytes == 2 * 4 * (mats + 128)
    assert int8.weight_bytes == 2 * (mats + 2 * (64 + 32 + 32 + 64 + 96 + 96 + 64) + 4 * 128)
    assert int4.quantized_modules == 14 and int4.weight_bytes < int8.weight_bytes < ref.weight_bytes
    assert ref.quality.kl_next_token_nats == 0 and ref.quality.perplexity == rep.reference_perplexity
    assert 0 < int8.quality.kl_next_token_nats < int4.quality.kl_next_token_nats
    assert rep.results[4].quality.kl_next_token_nats > 0  # pruned fp32
    assert rep.protocol.windows == 4 and rep.protocol.window_tokens == 64 and rep.protocol.calibration_disjoint
    assert rep.importance == "magnitude" and rep.calibration.source.endswith("calib.txt")


def test_exported_shards_match_the_report(llama_run):
    rep, exp = llama_run
    for r in rep.results:
        if not r.supported:
            assert r.shards == []
            continue
        assert {(f.role, f.format) for f in r.shards} == {(a, b) for a in ("device", "server") for b in ("json", "safetensors")}
        for f in r.shards:
            assert file_sha256(exp / f.path) == f.sha256
    int4 = next(r for r in rep.results if (r.precision, r.pruning_ratio) == ("int4", 0.5))
    cfg = next(f for f in int4.shards if f.role == "device" and f.format == "json")
    shard = shard_io.load_shard(exp / cfg.path, cfg.sha256)
    assert shard.adapter.mlp_channels(0) == 48 and shard.adapter.attention_heads(0) == (2, 2)


def test_onnxruntime_rows(folders, tmp_path):
    rep, exp = tmp_path / "o.json", tmp_path / "o"
    assert main(["quantize", "--model", str(folders["llama"]), "--precision", "bf16,int8", "--engine", "onnxruntime",
                 "--split", "2", "--scope", "device", "--eval-text", str(folders["eval"]), "--export", str(exp),
                 "-o", str(rep), *QUICK]) == 0
    bf16, int8 = load_document(rep, PrecisionReport).results
    assert (bf16.engine, bf16.supported) == ("onnxruntime", False) and "bf16" in bf16.unsupported_reason
    assert int8.engine == "onnxruntime" and int8.stages == [] and int8.decode_ms > 0 and "MatMulNBits 8-bit" in int8.kernel
    assert 0 < int8.quality.kl_next_token_nats < 0.05
    assert {f.format for f in int8.shards} == {"onnx", "onnx-data"}
    assert all(file_sha256(exp / f.path) == f.sha256 for f in int8.shards)


def test_encoder_reports_cosine(folders, tmp_path):
    rep = tmp_path / "b.json"
    assert main(["quantize", "--model", str(folders["bert"]), "--precision", "int8", "--eval-text", str(folders["eval"]),
                 "-o", str(rep), *QUICK]) == 0
    r = load_document(rep, PrecisionReport).results[0]
    assert 0.9 < r.quality.pooled_cosine < 1 and r.quality.kl_next_token_nats is None and r.decode_ms is None
    assert r.quantized_modules == 4 * 6  # no LM head on an encoder


@pytest.mark.parametrize("args, message", [
    (["--scope", "device"], "--split"),
    (["--group-size", "48"], "--group-size 48"),
    (["--ratios", "0.2", "--calib", "EVAL"], "overlap"),
])
def test_bad_input_is_one_line_exit_2(folders, tmp_path, capsys, args, message):
    out = tmp_path / "p.json"
    out.write_text("previous")
    args = [a.replace("EVAL", str(folders["eval"])) for a in args]
    code = main(["quantize", "--model", str(folders["llama"]), "--eval-text", str(folders["eval"]), "-o", str(out), *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert out.read_text() == "previous"


def test_bad_precision_name_in_a_fresh_process(folders, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coinfer.cli.main", "quantize", "--model", str(folders["llama"]),
                           "--precision", "fp32,int3", "-o", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: --precision 'int3': expected one of fp32, bf16, fp16, int8, int4"]
    assert not (tmp_path / "p.json").exists()
