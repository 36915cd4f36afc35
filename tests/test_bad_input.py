"""The bad-input catalogue (issue 13): every command, every kind of option and input file.

Each case must end in exit code 2 with exactly one line on stderr (``error: ...``, naming the
problem), no traceback, nothing on stdout, the previous output file byte-identical, and no litter:
no new file in the output folder or beside the inputs, no ``.tmp`` left anywhere. Most cases fail
before any model is loaded; those that need one use a 2-block GPT-2 of 32 hidden units.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

from coinfer.cli.main import main
from coinfer.planner.cost import derive_server_profile
from coinfer.planner.synthetic import synthetic_profile, synthetic_prune_report
from coinfer.reports import write_json
from coinfer.reports.prune import ShardFile

PREVIOUS = b'{"previous": "output, must survive every refusal"}\n'
SECRET = b"root:x:0:0:a file outside the export folder, never to be echoed\n"
UNWRITABLE = "/proc/coinfer-out.json"  # even root cannot create files there
TINY_GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=50)


def _profile_variant(base: dict, folder: Path, name: str, edit) -> None:
    data = json.loads(json.dumps(base))
    text = edit(data)
    (folder / name).write_text(text if isinstance(text, str) else json.dumps(data))


def _profiles(ws: Path) -> None:
    dev = synthetic_profile(6, seq_len=32, hidden=128)
    write_json(dev, ws / "dev.json")
    write_json(derive_server_profile(dev, 5.0), ws / "srv.json")
    write_json(synthetic_profile(6, seq_len=32, hidden=128, config="cd"), ws / "other.json")
    write_json(synthetic_prune_report(6, ratios=(0.2, 0.5), hidden=128), ws / "prune.json")
    write_json(synthetic_prune_report(6, ratios=(0.2,), hidden=128, config="cd"), ws / "prune-other.json")
    base = json.loads((ws / "dev.json").read_text())

    def timing(value: str):
        def edit(d):
            d["stages"][1]["prefill"]["median_ms"] = 12345.0
            return json.dumps(d).replace("12345.0", value)
        return edit

    _profile_variant(base, ws, "inf.json", timing("Infinity"))
    _profile_variant(base, ws, "big.json", timing("1e400"))
    _profile_variant(base, ws, "nan.json", timing("NaN"))
    _profile_variant(base, ws, "digits.json", timing("1" * 5000))
    _profile_variant(base, ws, "negative.json", timing("-1.0"))
    _profile_variant(base, ws, "v99.json", lambda d: d.update(schema_version=99))
    _profile_variant(base, ws, "positions.json", lambda d: d["model"].update(max_positions=64))

    def huge(d):  # finite, but sums and energies overflow
        for s in d["stages"]:
            s["prefill"]["median_ms"] = 1e307
            for dc in s["decode"]:
                dc["timing"]["median_ms"] = 1e307
    _profile_variant(base, ws, "huge.json", huge)
    (ws / "deep.json").write_text('{"kind": "profile", "schema_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    (ws / "malformed.json").write_text('{"kind": "profile",')
    (ws / "empty.json").write_bytes(b"")
    (ws / "binary.json").write_bytes(b"\xff\xfe\x00\x01" * 64)
    (ws / "array.json").write_text("[1, 2, 3]")
    assert main(["plan", "-d", str(ws / "dev.json"), "--server-speedup", "4", "--rate", "20Mbps", "-q",
                 "-o", str(ws / "plan.json")]) == 0


def _models(ws: Path) -> None:
    import torch

    from coinfer.models.loading import build_from_config

    tiny = build_from_config(TINY_GPT2, name="tiny", seed=3)
    good = ws / "model"
    tiny.model.save_pretrained(good)
    pickled = ws / "model-bin"
    pickled.mkdir()
    shutil.copy(good / "config.json", pickled)
    torch.save(tiny.model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "stray.safetensors").write_bytes(b"")
    for name, edit in (("model-corrupt", lambda f: (f / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{x}")),
                       ("model-truncated", lambda f: (f / "model.safetensors").write_bytes(
                           (f / "model.safetensors").read_bytes()[:3000])),
                       ("model-wider", lambda f: _edit_config(f, n_embd=64)),
                       ("model-deeper", lambda f: _edit_config(f, n_layer=3)),
                       ("model-huge", lambda f: _edit_config(f, n_embd=4096, n_layer=64))):
        shutil.copytree(good, ws / name)
        edit(ws / name)
    (ws / "model.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    (ws / "notgguf.gguf").write_bytes(b"this is not a GGUF file at all\n" * 4)


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _texts(ws: Path) -> None:
    (ws / "empty.txt").write_text("  \n\n")
    (ws / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    (ws / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 20)
    (ws / "short.txt").write_text("hi")
    (ws / "short-token.txt").write_text("abc")


def _traversal_report(ws: Path, name: str, export_dir: str, device_path: str, sha256: str, size: int) -> None:
    rep = synthetic_prune_report(6, ratios=(0.2,), hidden=128)
    rep.export_dir = export_dir
    rep.results[0].shards = [
        ShardFile(role="device", format="json", path=device_path, sha256=sha256, size_bytes=size),
        ShardFile(role="server", format="json", path="ratio-0.200/server.json", sha256="1" * 64, size_bytes=2),
    ]
    write_json(rep, ws / name)


def _reports(ws: Path) -> None:
    (ws / "secret.txt").write_bytes(SECRET)
    secret_sha = hashlib.sha256(SECRET).hexdigest()
    for folder in ("shards", "linked", "hashed"):
        (ws / folder / "ratio-0.200").mkdir(parents=True)
        (ws / folder / "ratio-0.200" / "server.json").write_text("{}")
    (ws / "linked" / "ratio-0.200" / "device.json").symlink_to(ws / "secret.txt")
    (ws / "hashed" / "ratio-0.200" / "device.json").write_bytes(SECRET)
    _traversal_report(ws, "trav-dotdot.json", "shards", "../../../../../../etc/passwd", secret_sha, len(SECRET))
    _traversal_report(ws, "trav-absolute.json", "shards", str(ws / "secret.txt"), secret_sha, len(SECRET))
    _traversal_report(ws, "trav-link.json", "linked", "ratio-0.200/device.json", secret_sha, len(SECRET))
    _traversal_report(ws, "trav-hash.json", "hashed", "ratio-0.200/device.json", "0" * 64, len(SECRET))
    _traversal_report(ws, "trav-size.json", "hashed", "ratio-0.200/device.json", secret_sha, 10**9)
    _traversal_report(ws, "trav-exportdir.json", "/definitely/not/a/folder", "ratio-0.200/device.json", secret_sha, 1)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Every input the catalogue names, made once: profiles, reports, models, texts."""
    folder = tmp_path_factory.mktemp("inputs")
    _profiles(folder)
    _models(folder)
    _texts(folder)
    _reports(folder)
    return folder


# (id, arguments with {placeholders}, a fragment the one line must hold). {out} is the previous
# output file (added as -o to commands that write one, unless a case names its own -o), {ws} the
# inputs folder, {tmp} the output folder.
D = "-d {ws}/dev.json"
PLAN = f"plan {D} --server-speedup 4"
WIRELESS = f"{PLAN} --bandwidth 10MHz --tx-power 1W"
RUN = "run -m {ws}/model --cut 2"
PRUNE = "prune -m {ws}/model --no-speed --no-onnx --prompt-tokens 16 --windows 1 --repeats 1"
PROFILE = "profile -m {ws}/model --repeats 1 --warmup 0 --min-time 0s --no-emissions --prompt-tokens 8"
CASES = [
    # -- the command line itself ------------------------------------------------------------------
    ("no-such-command", "fly", "No such command"),
    ("unknown-option", "plan --bogus", "No such option: --bogus"),
    ("missing-value", "profile -o {tmp}/prev.json --model", "requires an argument"),
    ("missing-required", "plan --rate 20Mbps", "Missing option"),
    ("bad-int", "profile --repeats abc", "'--repeats'"),
    ("bad-float", f"{PLAN} --rate 20Mbps --max-distortion lots", "'--max-distortion'"),
    ("bad-choice", "profile --device tpu", "'--device'"),
    ("quiet-and-verbose", "models -q -v", "give -q or -v, not both"),
    ("models-unknown-option", "models --model gpt2", "No such option"),
    # -- profile ----------------------------------------------------------------------------------
    ("profile-no-model", "profile -m /definitely/not/here", "no such folder"),
    ("profile-pickled-model", "profile -m {ws}/model-bin", "coinfer loads safetensors only"),
    ("profile-corrupt-safetensors", "profile -m {ws}/model-corrupt", "not a valid safetensors file"),
    ("profile-truncated-safetensors", "profile -m {ws}/model-truncated", "not a valid safetensors file"),
    ("profile-config-wider-than-weights", "profile -m {ws}/model-wider", "disagrees with the weights"),
    ("profile-config-deeper-than-weights", "profile -m {ws}/model-deeper", "missing from the weights"),
    ("profile-config-far-larger", "profile -m {ws}/model-huge", "describes about"),
    ("profile-bad-gguf", "profile -m {ws}/model.gguf", "not a valid GGUF file"),
    ("profile-not-gguf", "profile -m {ws}/notgguf.gguf", "not a valid GGUF file"),
    ("profile-batch-zero", "profile --batch 0", "'--batch'"),
    ("profile-batch-beyond-memory", f"{PROFILE} --batch 1000000000", "of memory"),
    ("profile-prompt-beyond-positions", f"{PROFILE} --prompt-tokens 100", "exceeds the model's 64 positions"),
    ("profile-prompt-zero", "profile --prompt-tokens 0", "'--prompt-tokens'"),
    ("profile-prompt-absurd", "profile --prompt-tokens 99999999999", "'--prompt-tokens'"),
    ("profile-dtype", "profile --dtype fp8", "'--dtype'"),
    ("profile-min-time-unit", "profile --min-time 5parsecs", "unknown duration unit"),
    ("profile-min-time-absurd", "profile --min-time 1e300s", "outside"),
    ("profile-power-absurd", "profile --power 1e300W", "outside"),
    ("profile-power-negative", "profile --power -5W", "not be negative"),
    ("profile-decode-context", "profile --decode-context 128,x", "--decode-context"),
    ("profile-threads", "profile --threads 100000000", "'--threads'"),
    ("profile-unwritable-output", f"profile -o {UNWRITABLE}", "cannot write"),
    ("profile-output-is-folder", "profile -o {tmp}", "it is a folder"),
    ("profile-output-folder-missing", "profile -o {tmp}/no/such/p.json", "does not exist"),
    # -- prune ------------------------------------------------------------------------------------
    ("prune-ratio-one", "prune --ratios 1.0", "outside [0, 1)"),
    ("prune-ratio-nan", "prune --ratios nan", "outside [0, 1)"),
    ("prune-ratio-text", "prune --ratios 0.1,x", "not a number"),
    ("prune-ratios-empty", "prune --ratios ,", "at least one ratio"),
    ("prune-scope-without-split", "prune --scope device", "needs --split"),
    ("prune-export-without-split", "prune --export {tmp}/shards", "needs --split"),
    ("prune-export-is-a-file", "prune --split 1 --export {ws}/dev.json", "not a folder"),
    ("prune-export-unwritable", "prune --split 1 --export /proc/coinfer-shards", "cannot write"),
    ("prune-unwritable-output", f"prune -o {UNWRITABLE}", "cannot write"),
    ("prune-calib-missing", "prune --calib {ws}/no-such.txt", "no such file"),
    ("prune-calib-empty", "prune --calib {ws}/empty.txt", "empty file"),
    ("prune-calib-binary", "prune --calib {ws}/binary.txt", "binary file"),
    ("prune-calib-not-utf8", "prune --calib {ws}/latin1.txt", "not UTF-8"),
    ("prune-calib-too-short", f"{PRUNE} --ratios 0.5 --calib {{ws}}/short.txt", "too short"),
    ("prune-split-beyond-model", f"{PRUNE} --ratios 0.5 --split 9", "outside 0..2"),
    ("prune-importance", "prune --importance random", "'--importance'"),
    ("prune-windows-zero", "prune --windows 0", "'--windows'"),
    ("prune-prompt-too-short", "prune --prompt-tokens 4", "'--prompt-tokens'"),
    ("prune-pickled-model", f"{PRUNE} -m {{ws}}/model-bin --ratios 0.5", "coinfer loads safetensors only"),
    # -- plan: input files ------------------------------------------------------------------------
    ("plan-missing-profile", "plan -d {ws}/no-such.json --server-speedup 4 --rate 20Mbps", "no such file"),
    ("plan-profile-is-folder", "plan -d {ws} --server-speedup 4 --rate 20Mbps", "is a folder"),
    ("plan-infinity-in-profile", "plan -d {ws}/inf.json --server-speedup 4 --rate 20Mbps", "Infinity"),
    ("plan-1e400-in-profile", "plan -d {ws}/big.json --server-speedup 4 --rate 20Mbps", "1e400 is out of range"),
    ("plan-nan-in-profile", "plan -d {ws}/nan.json --server-speedup 4 --rate 20Mbps", "NaN"),
    ("plan-5000-digits-in-profile", "plan -d {ws}/digits.json --server-speedup 4 --rate 20Mbps", "digits"),
    ("plan-deeply-nested-profile", "plan -d {ws}/deep.json --server-speedup 4 --rate 20Mbps", "nested too deeply"),
    ("plan-negative-latency", "plan -d {ws}/negative.json --server-speedup 4 --rate 20Mbps", "invalid profile"),
    ("plan-wrong-kind", "plan -d {ws}/plan.json --server-speedup 4 --rate 20Mbps", "found a 'plan' file"),
    ("plan-wrong-version", "plan -d {ws}/v99.json --server-speedup 4 --rate 20Mbps", "schema version 99"),
    ("plan-malformed-json", "plan -d {ws}/malformed.json --server-speedup 4 --rate 20Mbps", "malformed JSON"),
    ("plan-empty-file", "plan -d {ws}/empty.json --server-speedup 4 --rate 20Mbps", "malformed JSON"),
    ("plan-binary-file", "plan -d {ws}/binary.json --server-speedup 4 --rate 20Mbps", "not a text file"),
    ("plan-latencies-overflow", "plan -d {ws}/huge.json --server-speedup 4 --rate 20Mbps", "not a finite number"),
    ("plan-json-array", "plan -d {ws}/array.json --server-speedup 4 --rate 20Mbps", "expected a JSON object"),
    ("plan-server-of-another-model", f"plan {D} -s {{ws}}/other.json --rate 20Mbps", "model"),
    ("plan-prune-report-of-another-model", f"{PLAN} --rate 20Mbps --prune-report {{ws}}/prune-other.json", "model"),
    ("plan-prune-report-wrong-kind", f"{PLAN} --rate 20Mbps --prune-report {{ws}}/dev.json", "prune_report"),
    # -- plan: numbers and units ------------------------------------------------------------------
    ("plan-rate-1e-300", f"{PLAN} --rate 1e-300bps", "outside 1 bps..10 Tbps"),
    ("plan-rate-ambiguous", f"{PLAN} --rate 20MBps", "ambiguous"),
    ("plan-rate-no-unit", f"{PLAN} --rate 20", "missing unit"),
    ("plan-rate-wrong-kind-of-unit", f"{PLAN} --rate 20ms", "unknown rate unit"),
    ("plan-bandwidth-1e-300", f"{WIRELESS} --bandwidth 1e-300Hz --channel-gain 1e-9", "outside 1 Hz..1 THz"),
    ("plan-tx-power-1e300dBm", f"{PLAN} --bandwidth 10MHz --tx-power 1e300dBm --channel-gain 1e-9", "outside"),
    ("plan-channel-gain-1e-300", f"{WIRELESS} --channel-gain 1e-300", "outside 1e-30..1e3"),
    ("plan-zero-power-in-range", f"{PLAN} --bandwidth 10MHz --tx-power-range 0W:1W --channel-gain 1e-9",
     "below 1 bps"),
    ("plan-distance-gain-underflow", f"{WIRELESS} --distance 100000km --path-loss-exp 10", "channel gain"),
    ("plan-path-loss-exp-nan", f"{WIRELESS} --distance 100m --path-loss-exp nan", "--path-loss-exp"),
    ("plan-rtt-absurd", f"{PLAN} --rate 20Mbps --rtt 1e300s", "outside 1 ns..1 day"),
    ("plan-rtt-negative", f"{PLAN} --rate 20Mbps --rtt -5ms", "not be negative"),
    ("plan-server-speedup-absurd", f"plan {D} --server-speedup 1e300 --rate 20Mbps", "--server-speedup"),
    ("plan-server-speedup-inf", f"plan {D} --server-speedup inf --rate 20Mbps", "--server-speedup"),
    ("plan-energy-weight-absurd", f"{PLAN} --rate 20Mbps --objective weighted --energy-weight 1e300", "--energy-weight"),
    ("plan-max-distortion-nan", f"{PLAN} --rate 20Mbps --max-distortion nan", "--max-distortion"),
    ("plan-max-memory-ambiguous", f"{PLAN} --rate 20Mbps --max-memory 4KB", "ambiguous"),
    ("plan-max-memory-overflow", f"{PLAN} --rate 20Mbps --max-memory 1e300TB", "outside 1 B..1 PB"),
    ("plan-freq-range-text", f"{PLAN} --rate 20Mbps --freq-range 0.5:x", "--freq-range"),
    ("plan-sweep-absurd", f"{PLAN} --rate 20Mbps --sweep-rate 1Mbps:1e300Gbps", "outside"),
    ("plan-prompt-beyond-positions", "plan -d {ws}/positions.json --server-speedup 4 --rate 20Mbps --prompt-tokens 100",
     "64 positions"),
    ("plan-decode-steps-absurd", f"{PLAN} --rate 20Mbps --decode-steps 1000000000", "'--decode-steps'"),
    ("plan-rate-and-bandwidth", f"{WIRELESS} --rate 20Mbps --channel-gain 1e-9", "not both"),
    ("plan-wire-dtype", f"{PLAN} --rate 20Mbps --wire-dtype fp8", "'--wire-dtype'"),
    ("plan-objective", f"{PLAN} --rate 20Mbps --objective fast", "'--objective'"),
    ("plan-chain-link", "plan -d a={ws}/dev.json -d b={ws}/srv.json --link a-b:fast", "--link"),
    ("plan-unwritable-output", f"{PLAN} --rate 20Mbps -o {UNWRITABLE}", "cannot write"),
    # -- run --------------------------------------------------------------------------------------
    ("run-batch-absurd", f"{RUN} --batch 1000000000", "--batch 1000000000: outside 1..256"),
    ("run-repeats-absurd", f"{RUN} --repeats 5000", "--repeats 5000"),
    ("run-too-many-requests", f"{RUN} --warmup 600 --repeats 600", "at most 1000"),
    ("run-timeout-absurd", f"{RUN} --timeout 2h", "--timeout"),
    ("run-timeout-zero", f"{RUN} --timeout 0s", "must be positive"),
    ("run-rtt-absurd", f"{RUN} --emulate-rtt 20s", "--emulate-rtt"),
    ("run-rate-no-unit", f"{RUN} --emulate-rate 20", "missing unit"),
    ("run-rate-absurd", f"{RUN} --emulate-rate 1e-300bps", "outside"),
    ("run-plan-is-a-profile", "run --plan {ws}/dev.json", "expected a 'plan' file"),
    ("run-plan-infinity", "run --plan {ws}/inf.json", "Infinity"),
    ("run-plan-of-another-model", "run --plan {ws}/plan.json -m {ws}/model --cut 2", "is for synthetic-6"),
    ("run-shard-path-dotdot", f"{RUN} --prune-report {{ws}}/trav-dotdot.json --ratio 0.2", "not a relative name"),
    ("run-shard-path-absolute", f"{RUN} --prune-report {{ws}}/trav-absolute.json --ratio 0.2", "not a relative name"),
    ("run-shard-path-symlink-out", f"{RUN} --prune-report {{ws}}/trav-link.json --ratio 0.2", "leads outside"),
    ("run-shard-wrong-size", f"{RUN} --prune-report {{ws}}/trav-size.json --ratio 0.2", "recorded size"),
    ("run-shard-export-dir-missing", f"{RUN} --prune-report {{ws}}/trav-exportdir.json --ratio 0.2", "no such folder"),
    ("run-prune-report-without-ratio", f"{RUN} --prune-report {{ws}}/prune.json", "needs --ratio"),
    ("run-ratio-not-in-report", f"{RUN} --prune-report {{ws}}/prune.json --ratio 0.3", "is not in"),
    ("run-ratio-without-report", f"{RUN} --ratio 0.3", "needs --prune-report"),
    ("run-token-file-short", f"{RUN} --token-file {{ws}}/short-token.txt", "at least 16 characters"),
    ("run-token-file-endless", f"{RUN} --token-file /dev/zero", "not a small text file"),
    ("run-token-file-missing", f"{RUN} --token-file {{ws}}/no-such.txt", "cannot read"),
    ("run-device-without-server", f"{RUN} --role device", "needs --server"),
    ("run-server-exposed-without-token", "run --role server --listen 0.0.0.0:29651", "token"),
    ("run-server-bad-address", "run --role server --listen nowhere", "--listen"),
    ("run-cut-negative", "run --cut -1", "'--cut'"),
    ("run-role", "run --role bystander", "'--role'"),
    ("run-chain-cuts", "run --chain-cuts 1,x", "--chain-cuts"),
    ("run-unwritable-output", f"{RUN} -o {UNWRITABLE}", "cannot write"),
    ("run-prompt-beyond-positions", f"{RUN} --prompt-tokens 100 --decode-steps 0", "exceeds the model's 64 positions"),
    ("run-pickled-model", "run -m {ws}/model-bin --cut 2", "coinfer loads safetensors only"),
    # -- inspect and models -----------------------------------------------------------------------
    ("inspect-no-model", "inspect -m /definitely/not/here", "no such folder"),
    ("inspect-corrupt-model", "inspect -m {ws}/model-corrupt", "not a valid safetensors file"),
    ("inspect-mismatched-config", "inspect -m {ws}/model-wider", "disagrees with the weights"),
    ("inspect-verify-beyond-model", "inspect -m {ws}/model --verify 9", "outside 0..2"),
    ("inspect-wire-dtype", "inspect --wire-dtype fp8", "'--wire-dtype'"),
    ("inspect-batch-zero", "inspect --batch 0", "'--batch'"),
    # -- perplexity -------------------------------------------------------------------------------
    ("perplexity-no-model", "perplexity -m /definitely/not/here", "no such folder"),
    ("perplexity-text-empty", "perplexity -m {ws}/model --eval-text {ws}/empty.txt", "empty file"),
    ("perplexity-text-missing", "perplexity -m {ws}/model --eval-text {ws}/no-such.txt", "no such file"),
    ("perplexity-text-binary", "perplexity -m {ws}/model --eval-text {ws}/binary.txt", "binary file"),
    ("perplexity-window-zero", "perplexity -m {ws}/model --window 0", "'--window'"),
    ("perplexity-tokens-negative", "perplexity -m {ws}/model --eval-tokens -5", "'--eval-tokens'"),
    ("perplexity-stride-text", "perplexity --stride abc", "'--stride'"),
    ("perplexity-threads-zero", "perplexity -m {ws}/model --threads 0", "'--threads'"),
    ("perplexity-unwritable-output", f"perplexity -m {{ws}}/model -o {UNWRITABLE}", "cannot write"),
    # -- report, show, compare ---------------------------------------------------------------------
    ("report-no-such-file", "report {ws}/no-such.json -o {tmp}/rep", "no such file"),
    ("report-two-models", "report {ws}/dev.json {ws}/other.json -o {tmp}/rep", "is about another model"),
    ("report-future-version", "report {ws}/v99.json -o {tmp}/rep", "schema version 99"),
    ("report-non-finite", "report {ws}/inf.json -o {tmp}/rep", "inf.json"),
    ("report-text-file", "report {ws}/latin1.txt -o {tmp}/rep", "latin1.txt"),
    ("report-output-is-a-file", "report {ws}/dev.json -o {ws}/dev.json", "dev.json"),
    ("show-no-such-file", "show {ws}/no-such.json", "no such file"),
    ("show-binary", "show {ws}/binary.txt", "binary.txt"),
    ("show-future-version", "show {ws}/v99.json", "schema version 99"),
    ("compare-two-kinds", "compare {ws}/dev.json {ws}/prune.json", "dev.json"),
    ("compare-missing", "compare {ws}/dev.json {ws}/no-such.json", "no such file"),
    ("compare-one-file", "compare {ws}/dev.json", "Missing argument"),
    # -- quantize ----------------------------------------------------------------------------------
    ("quantize-precision", "quantize -m {ws}/model --precision fp8", "--precision"),
    ("quantize-no-precision", "quantize -m {ws}/model --precision ,", "--precision"),
    ("quantize-engine", "quantize -m {ws}/model --engine tensorrt", "--engine"),
    ("quantize-ratio", "quantize -m {ws}/model --ratios 1.5", "--ratios"),
    ("quantize-scope-without-split", "quantize -m {ws}/model --scope device", "--split"),
    ("quantize-no-model", "quantize -m /definitely/not/here", "no such folder"),
    ("quantize-unwritable-output", f"quantize -m {{ws}}/model -o {UNWRITABLE}", "cannot write"),
    # -- trace and the channel options of plan ------------------------------------------------------
    ("trace-kind", "trace --kind ricean -o {tmp}/t.json", "'ricean' is not one of"),
    ("trace-snr-not-a-number", "trace --mean-snr-db loud -o {tmp}/t.json", "--mean-snr-db"),
    ("trace-duration-unit", "trace --duration 60 -o {tmp}/t.json", "--duration"),
    ("trace-bandwidth-unit", "trace --bandwidth 10MBps -o {tmp}/t.json", "--bandwidth"),
    ("trace-unwritable-output", f"trace -o {UNWRITABLE}", "cannot write"),
    # -- channel -----------------------------------------------------------------------------------
    ("channel-erasure-above-one", "channel -m {ws}/model --erasure 1.5", "--erasure"),
    ("channel-snr-word", "channel -m {ws}/model --snr-db loud", "--snr-db"),
    ("channel-wire", "channel -m {ws}/model --wire fp8", "--wire"),
    ("channel-confidence", "channel -m {ws}/model --confidence 1", "--confidence"),
    ("channel-eval-tokens", "channel -m {ws}/model --eval-tokens 1", "--eval-tokens"),
    ("channel-no-model", "channel -m /definitely/not/here", "no such folder"),
    ("channel-unwritable-output", f"channel -m {{ws}}/model -o {UNWRITABLE}", "cannot write"),
    ("run-erasure-above-one", "run -m {ws}/model --cut 2 --erasure 2", "--erasure"),
    ("plan-precision-missing", f"{PLAN} --rate 20Mbps --precision-report {{ws}}/no-such.json", "no such file"),
    ("plan-precision-wrong-kind", f"{PLAN} --rate 20Mbps --precision-report {{ws}}/prune.json", "prune.json"),
    ("prune-eval-text-missing", "prune -m {ws}/model --eval-text {ws}/no-such.txt", "no such file"),
    ("plan-erasure-without-robustness", f"{PLAN} --rate 20Mbps --erasure 0.1", "--erasure needs --robustness"),
    ("plan-robustness-missing", f"{PLAN} --rate 20Mbps --robustness {{ws}}/no-such.json --max-ppl-ratio 1.1",
     "no such file"),
    ("plan-robustness-wrong-kind", f"{PLAN} --rate 20Mbps --robustness {{ws}}/prune.json --max-ppl-ratio 1.1",
     "prune.json"),
]
WRITERS = ("profile", "prune", "plan", "run", "perplexity", "quantize", "channel")


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy overflow would be a line on stderr too
@pytest.mark.parametrize("args, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_everything_as_it_was(args, fragment, ws, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default output name (prune.json, run.json) would land here
    monkeypatch.setenv("COINFER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("COINFER_TOKEN", raising=False)
    out = tmp_path / "prev.json"
    out.write_bytes(PREVIOUS)
    argv = args.format(ws=ws, tmp=tmp_path).split()
    if argv[0] in WRITERS and "-o" not in argv:
        argv += ["-o", str(out)]
    before_out, before_ws = _listing(tmp_path), _listing(ws)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert fragment in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    assert out.read_bytes() == PREVIOUS
    assert _listing(tmp_path) == before_out and _listing(ws) == before_ws


def test_the_catalogue_covers_every_command_and_enough_cases():
    from coinfer.cli.main import COMMANDS

    assert set(COMMANDS) <= {c[1].split()[0] for c in CASES}
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("report", ["trav-dotdot.json", "trav-absolute.json", "trav-link.json", "trav-hash.json"])
def test_nothing_about_a_file_outside_the_export_folder_is_echoed(report, ws, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "-m", str(ws / "model"), "--cut", "2", "--prune-report", str(ws / report), "--ratio", "0.2"])
    err = capsys.readouterr().err
    real = hashlib.sha256(SECRET).hexdigest()
    assert code == 2 and len(err.strip().splitlines()) == 1
    for n in (8, 12, 16):  # no fragment of the file's hash, of any length a message used to show
        assert real[:n] not in err and "0" * n not in err
    assert "root:x" not in err


def test_a_wrong_hash_is_named_and_nothing_else(ws, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "-m", str(ws / "model"), "--cut", "2", "--prune-report", str(ws / "trav-hash.json"),
                 "--ratio", "0.2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("does not match the recorded sha256; refusing to load")


# -- usage errors: one line for every command ------------------------------------------------------
USAGE = {
    "profile": (["--model"], ["--repeats", "x"], ["--device", "tpu"]),
    "prune": (["--ratios"], ["--windows", "x"], ["--scope", "galaxy"]),
    "plan": (["--rate"], ["--decode-steps", "x"], ["--objective", "fast"]),
    "run": (["--plan"], ["--repeats", "x"], ["--role", "bystander"]),
    "inspect": (["--model"], ["--batch", "x"], ["--wire-dtype", "fp8"]),
    "perplexity": (["--model"], ["--window", "x"], ["--seed", "1.5"]),
    "models": (["--json", "extra"], ["--quiet", "--quiet=3"], ["-z"]),
    "trace": (["--seed"], ["--seed", "x"], ["--kind", "ricean"]),
    "quantize": (["--model"], ["--repeats", "x"], ["--scope", "galaxy"]),
    "channel": (["--model"], ["--draws", "x"], ["--confidence", "x"]),
    "report": ([], ["a.json", "--output"], ["a.json", "--force=3"]),
    "show": ([], ["a.json", "b.json"], ["a.json", "--json=3"]),
    "compare": ([], ["a.json"], ["a.json", "b.json", "c.json"]),
}
# Commands whose arguments are files: a surplus word is a file name for them, not a usage error.
TAKES_FILES = {"report", "show", "compare"}


@pytest.mark.parametrize("command", sorted(USAGE))
def test_usage_errors_are_one_line_for_every_command(command, capsys):
    from coinfer.cli.main import COMMANDS

    assert set(USAGE) == set(COMMANDS)
    surplus = [] if command in TAKES_FILES else [["surplus-argument"]]
    for extra in (["--no-such-option"], *surplus, *USAGE[command]):
        code = main([command, *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (extra, err)
        assert f"coinfer {command} --help" in err[0]


# -- names inside exported files are data, never directions ---------------------------------------
@pytest.fixture(scope="module")
def exported_shard(tmp_path_factory):
    """A real exported device shard of the tiny GPT-2 (safetensors and JSON config)."""
    from coinfer.models import shard_io
    from coinfer.models.loading import build_from_config
    from coinfer.models.shards import split

    loaded = build_from_config(TINY_GPT2, name="tiny", seed=3)
    folder = tmp_path_factory.mktemp("export") / "ratio-0.000"
    folder.mkdir()
    shard_io.export_safetensors(split(loaded.adapter, 1).device, folder, "device", loaded.identity,
                                requested_ratio=0.0, scope="all")
    (folder.parent / "secret.txt").write_bytes(SECRET)
    return folder


def _config_naming(folder: Path, **changes) -> tuple[Path, str]:
    cfg = json.loads((folder / "device.json").read_text())
    cfg.update(changes)
    path = folder / "edited.json"
    path.write_text(json.dumps(cfg))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("weights_file, message", [
    ("../secret.txt", "not a relative name"),
    ("/etc/passwd", "not a relative name"),
    ("link.safetensors", "leads outside"),
    ("device.safetensors", "recorded size"),
])
def test_a_shard_config_cannot_point_at_other_files(exported_shard, weights_file, message):
    from coinfer.errors import IntegrityError
    from coinfer.models.shard_io import load_shard

    link = exported_shard / "link.safetensors"
    if not link.is_symlink():
        link.symlink_to(exported_shard.parent / "secret.txt")
    changes = {"weights_file": weights_file}
    if weights_file == "device.safetensors":
        changes["weights_size_bytes"] = 10**12
    path, sha = _config_naming(exported_shard, **changes)
    with pytest.raises(IntegrityError, match=message) as info:
        load_shard(path, sha)
    assert hashlib.sha256(SECRET).hexdigest()[:8] not in str(info.value)


def test_the_exported_shard_itself_still_loads(exported_shard):
    from coinfer.models.shard_io import load_shard

    path = exported_shard / "device.json"
    shard = load_shard(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert shard.start == 0 and shard.end == 2


def _onnx_with_external(path: Path, location: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [w])
    onnx.save(helper.make_model(graph), str(path))


def test_an_onnx_graph_cannot_point_its_weights_elsewhere(tmp_path):
    from coinfer.errors import IntegrityError
    from coinfer.models.shard_io import check_onnx_external_data

    _onnx_with_external(tmp_path / "device.onnx", "device.onnx.data")
    check_onnx_external_data(tmp_path / "device.onnx", "device.onnx.data")
    for where in ("../../etc/passwd", "/etc/passwd", "other.data"):
        _onnx_with_external(tmp_path / "bad.onnx", where)
        with pytest.raises(IntegrityError, match="external data is not device.onnx.data"):
            check_onnx_external_data(tmp_path / "bad.onnx", "device.onnx.data")
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 100)
    with pytest.raises(IntegrityError, match="not an ONNX file"):
        check_onnx_external_data(tmp_path / "junk.onnx", "junk.onnx.data")


# -- killed in the write window: nothing left behind -----------------------------------------------
_SLOW_WRITE = """
import os, sys, time
real_fsync = os.fsync
def slow_fsync(fd):
    real_fsync(fd)
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".tmp"):
        time.sleep(60)  # the write window, held open until the test signals
os.fsync = slow_fsync
from coinfer.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

_SLOW_EXPORT = """
import sys, time
from coinfer.models import shard_io
real = shard_io.export_safetensors
def slow(*args, **kw):
    out = real(*args, **kw)
    time.sleep(60)  # the export folder holds a shard: the window a kill must clean up
    return out
shard_io.export_safetensors = slow
from coinfer.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_when(proc, folder: Path, pattern: str, sig) -> tuple[int, str]:
    import time

    deadline = time.monotonic() + 120
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the write window never opened"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_killed_while_writing_leaves_the_previous_file_and_no_temp(sig, code, ws, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "prev.json"
    out.write_bytes(PREVIOUS)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITE, "plan", "-d", str(ws / "dev.json"),
                             "--server-speedup", "4", "--rate", "20Mbps", "-q", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, err = _kill_when(proc, tmp_path, ".prev.json.*.tmp", getattr(signal, sig))
    assert rc == code and "Traceback" not in err, err
    assert out.read_bytes() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev.json"]


def test_killed_while_exporting_leaves_no_temp_folder(ws, tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, "prune", "-m", str(ws / "model"), "--ratios", "0.5",
                             "--split", "1", "--export", str(tmp_path / "shards"), "--no-onnx", "--no-speed",
                             "--prompt-tokens", "16", "--windows", "1", "-q", "-o", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, err = _kill_when(proc, tmp_path, ".shards.*.tmp/ratio-0.500/device.json", signal.SIGTERM)
    assert rc == 143 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# -- memory estimates behind the refusals ---------------------------------------------------------
def test_memory_estimate_by_hand():
    from transformers import AutoConfig

    from coinfer.errors import UserInputError
    from coinfer.models.footprint import check_fits, parameters, request_bytes

    cfg = AutoConfig.for_model(**TINY_GPT2)
    # KV: 2 (k, v) x 2 layers x 4 heads x 8 head dim x batch 2 x 16 tokens x 4 B; one block's
    # prefill: 2 x 8 tokens x (4 x 32 + 128 MLP) x 4 B; scores: 2 x 4 heads x 8 x 8 x 4 B.
    need = request_bytes(cfg, batch=2, tokens=8, context=16)
    assert need == 2 * 2 * 4 * 8 * 2 * 16 * 4 + 2 * 8 * 256 * 4 + 2 * 4 * 8 * 8 * 4
    check_fits(need, "x", available=need)
    with pytest.raises(UserInputError, match="x needs about 34.8 kB of memory; 34.8 kB is available here"):
        check_fits(need, "x", available=need - 1)
    from coinfer.models.loading import build_from_config

    real = sum(p.numel() for p in build_from_config(TINY_GPT2, name="t").model.parameters())
    assert abs(parameters(cfg) - real) / real < 0.05  # biases and norms are left out
