"""Schemas: round trips, wrong kinds, unknown versions, malformed JSON, atomic writes."""

from __future__ import annotations

import json
import os
import stat

import pytest

from coinfer.errors import SchemaError, UserInputError
from coinfer.reports import Plan, Profile, PruneReport, load_document, write_json
from coinfer.reports.common import MachineInfo, ModelIdentity
from coinfer.reports.io import atomic_write_bytes, check_writable
from coinfer.reports.profile import MeasureContext, PayloadBytes, StageProfile, Timing


def identity(blocks=2):
    return ModelIdentity(
        name="tiny", family="gpt2", model_type="gpt2", config_sha256="ab" * 32, weights="random",
        weights_seed=0, num_blocks=blocks, hidden_size=8, vocab_size=10, num_parameters=100, is_decoder=True,
    )


def stage(name, kind):
    pay = {d: PayloadBytes(prefill_bytes=10, per_token_bytes=1) for d in ("fp32", "fp16", "int8")}
    return StageProfile(
        name=name, stage_kind=kind, prefill=Timing(median_ms=1.0, iqr_ms=0.05, repeats=5), prefill_flops=1e6,
        param_bytes=100, kv_cache_bytes_per_token=0, payload_after=pay,
    )


def profile():
    ctx = MeasureContext(
        machine=MachineInfo.here(), device="cpu", dtype="fp32", threads=2, batch=1, seq_len=8,
        repeats=5, warmup=1, energy_source="estimate", power_w=15.0,
    )
    stages = [stage("embed", "embed"), stage("block.0", "block"), stage("block.1", "block"), stage("head", "head")]
    return Profile(
        model=identity(), context=ctx, stages=stages,
        input_payload=PayloadBytes(prefill_bytes=64, per_token_bytes=8),
        result_payload=PayloadBytes(prefill_bytes=8, per_token_bytes=8),
    )


def test_profile_round_trip(tmp_path):
    p = profile()
    write_json(p, tmp_path / "p.json")
    back = load_document(tmp_path / "p.json", Profile)
    assert back == p
    assert json.loads((tmp_path / "p.json").read_text())["kind"] == "profile"


def test_stage_order_is_validated():
    p = profile().model_dump()
    p["stages"] = p["stages"][::-1]
    with pytest.raises(ValueError, match="stages must be"):
        Profile.model_validate(p)


def test_noisy_flag():
    assert Timing(median_ms=1.0, iqr_ms=0.2, repeats=3).noisy
    assert not Timing(median_ms=1.0, iqr_ms=0.05, repeats=3).noisy


def test_wrong_kind_is_clear(tmp_path):
    write_json(profile(), tmp_path / "p.json")
    with pytest.raises(SchemaError, match="expected a 'plan' file, found a 'profile' file"):
        load_document(tmp_path / "p.json", Plan)
    with pytest.raises(SchemaError, match="expected a 'prune_report' file"):
        load_document(tmp_path / "p.json", PruneReport)


def test_unknown_version_is_clear(tmp_path):
    d = profile().model_dump(mode="json")
    d["schema_version"] = 99
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(SchemaError, match="version 99 is not supported"):
        load_document(tmp_path / "p.json", Profile)


def test_malformed_json_and_invalid_body(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SchemaError, match="malformed JSON at line 1"):
        load_document(tmp_path / "bad.json", Profile)
    d = profile().model_dump(mode="json")
    d["stages"][0]["prefill"]["median_ms"] = -1
    (tmp_path / "neg.json").write_text(json.dumps(d))
    with pytest.raises(SchemaError, match=r"stages.0.prefill.median_ms"):
        load_document(tmp_path / "neg.json", Profile)
    d = profile().model_dump(mode="json")
    d["surprise"] = 1
    (tmp_path / "extra.json").write_text(json.dumps(d))
    with pytest.raises(SchemaError, match="surprise"):
        load_document(tmp_path / "extra.json", Profile)
    with pytest.raises(UserInputError, match="no such file"):
        load_document(tmp_path / "missing.json", Profile)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_unwritable_destinations(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        check_writable(tmp_path / "no" / "x.json")
    with pytest.raises(UserInputError, match="is a folder"):
        check_writable(tmp_path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mode):
    # Written files are readable like any other file the user writes (mkstemp alone gives 0600).
    old = os.umask(umask)
    try:
        target = atomic_write_bytes(tmp_path / "out.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert os.umask(old) == old  # the umask is left as it was


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() == b"new"


def test_a_document_that_would_not_load_back_is_not_written(tmp_path):
    target = tmp_path / "p.json"
    target.write_bytes(b"previous")
    broken = profile()
    broken.stages[1].prefill.median_ms = float("inf")  # assignment is not validated: like a computed overflow
    with pytest.raises(UserInputError, match=r"p.json not written: the profile's stages.1.prefill.median_ms is not a "
                                             r"finite number"):
        write_json(broken, target)
    wrong = profile()
    wrong.stages[0].name = "block.7"
    with pytest.raises(UserInputError, match=r"would not load back: \(root\): Value error, stages must be embed"):
        write_json(wrong, target)
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["p.json"]


@pytest.mark.parametrize("text, message", [
    ('{"x": NaN}', "NaN is not a number coinfer reads"),
    ('{"x": -Infinity}', "-Infinity is not a number"),
    ('{"x": 1e400}', "1e400 is out of range"),
    ('{"x": -1e999}', "out of range"),
    ('{"x": ' + "9" * 41 + "}", "a number of 41 digits"),
    ('{"x": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
])
def test_files_hold_finite_numbers_of_sensible_length(tmp_path, text, message):
    (tmp_path / "f.json").write_text(text)
    with pytest.raises(SchemaError, match=message):
        load_document(tmp_path / "f.json", Profile)


def test_a_write_sweeps_temporaries_of_dead_writers_only(tmp_path):
    import socket

    host = socket.gethostname()
    dead = tmp_path / f".out.json.{host}~999999999.abc.tmp"  # no such process
    alive = tmp_path / f".out.json.{host}~{os.getppid()}.def.tmp"  # our parent: someone else writing
    other = tmp_path / f".other.json.{host}~999999999.ghi.tmp"  # another file's business
    for p in (dead, alive, other):
        p.write_text("x")
    atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out.json", alive.name, other.name])


def test_writability_is_probed_not_guessed(tmp_path):
    with pytest.raises(UserInputError, match="cannot write -o /proc/x.json"):
        check_writable("/proc/x.json", "-o")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match="does not exist"):
        check_writable(tmp_path / "file" / "x.json")
    assert check_writable(tmp_path / "ok.json") == tmp_path / "ok.json"
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the probe left nothing
