"""`coinfer prune` end to end on tiny models: report, exported shards, verified reload, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coinfer.cli.main import main
from coinfer.errors import IntegrityError
from coinfer.models import shard_io
from coinfer.models.loading import build_from_config, load_model
from coinfer.models.shards import split
from coinfer.pruner import calibration, recipe
from coinfer.reports.io import file_sha256, load_document
from coinfer.reports.prune import PruneReport

QUICK = ["--repeats", "1", "--prompt-tokens", "16", "--windows", "2"]
# GPT-2 runs the plainest recipe (its rounding is checked by hand); Llama and BERT the defaults
# (measured importance, sensitivity probe, least-squares compensation with an added bias).
RECIPES = {"gpt2": ["--importance", "magnitude", "--allocation", "uniform", "--compensation", "none"], "llama": [], "bert": []}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_config):
    """The shared tiny gpt2, llama and bert with 64 positions and 97 tokens, saved as HF folders."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for fam in ("gpt2", "llama", "bert"):
        m = build_from_config(tiny_config(fam, positions=64, vocab=97), name=fam, seed=5)
        m.model.save_pretrained(root / fam)
        out[fam] = root / fam
    return out


@pytest.fixture(scope="module")
def exported(folders, tmp_path_factory):
    """One CLI run per family with export (ONNX included): the slow part, done once."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for fam, ratios in (("gpt2", "0,0.1,0.5"), ("llama", "0.5"), ("bert", "0.5")):
        rep, exp = root / f"{fam}.json", root / f"{fam}-shards"
        args = ["prune", "--model", str(folders[fam]), "--ratios", ratios, "--split", "2", "--export", str(exp), "-o", str(rep)]
        assert main([*args, *QUICK, *RECIPES[fam]]) == 0
        runs[fam] = (load_document(rep, PruneReport), exp)
    return runs


def _pruned(folder: Path, ratio: float, fam: str):
    """The model the CLI run of ``fam`` pruned, rebuilt through the library with the same recipe."""
    loaded = load_model(str(folder))
    with torch.no_grad():
        loaded.adapter.prepare_for_pruning()
    blocks = list(range(loaded.adapter.num_blocks))
    source, text = calibration.read_text(None)
    calib = calibration.build(text, source, loaded, 16, 2)
    opts = dict(zip(RECIPES[fam][::2], RECIPES[fam][1::2], strict=True))
    rec = recipe.resolve(
        opts.get("--importance", "auto"), opts.get("--allocation", "auto"), opts.get("--compensation", "auto"), loaded.is_decoder
    )
    ad, _ = recipe.Pruner(loaded.adapter, blocks, calib.windows, rec, 8).prune_copy(ratio)
    return ad


def test_report_says_what_was_removed(exported):
    rep, _ = exported["gpt2"]
    r0, r1, r5 = rep.results
    assert not r0.pruned_anything and r0.achieved_param_ratio == 0 and r0.speedup is None
    # MHA, 4 heads of 16: a head owns q/k/v rows (3 x (16 x 64 + 16)) and 16 o columns of 64:
    # 4,144 parameters; a channel a c_fc row (64 + 1) and a c_proj column (64): 129. Prunable:
    # 4 x 4,144 + 256 x 129 = 49,600 per block. Ratio 0.1: heads lose floor(0.4) = 0; the MLP
    # takes 4,960 / 129 = 38.4 channels -> 40 (a multiple of 8)
    assert r1.achieved_head_ratio == 0 and r1.achieved_channel_ratio == pytest.approx(40 / 256)
    assert r1.achieved_prunable_ratio == pytest.approx(40 * 129 / 49600)
    assert any("requested 0.1 of the prunable parameters, removed 0.104" in n for n in r1.notes)
    assert [b.heads_after for b in r5.blocks] == [2, 2, 2, 2]
    assert [b.mlp_channels_after for b in r5.blocks] == [128] * 4
    # parameters per block by hand (hidden 64, 4 heads of 16, MLP 256; q/k/v converted to Linear):
    # 2 layer norms, q/k/v and out projections, MLP up and down, biases included. At 0.5: 2 heads
    # (q/k/v 64 -> 32, out 32 -> 64) and MLP 128.
    before = 2 * 128 + 3 * (64 * 64 + 64) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    after = 2 * 128 + 3 * (64 * 32 + 32) + (32 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64)
    assert (before, after) == (49984, 25184)
    assert [b.params_after for b in r5.blocks] == [after] * 4
    assert r5.params_before == 4 * before and r5.params_after == 4 * after
    assert r5.achieved_param_ratio == pytest.approx(1 - after / before)
    assert r5.speedup is not None and r5.speedup.prefill_flops_ratio > 1 and r5.speedup.decode_measured
    assert r5.distortion.kl_next_token > 0 and r5.distortion.perplexity_after > 0
    assert rep.calibration.tokenizer == "bytes" and rep.laplace is not None
    assert rep.empirical_c == pytest.approx(
        max(r.distortion.output_rel_mse / r.distortion.param_distortion for r in (r1, r5))
    )


def test_param_distortion_equals_removed_energy(exported, folders):
    rep, _ = exported["bert"]
    loaded = load_model(str(folders["bert"]))
    ad = _pruned(folders["bert"], 0.5, "bert")
    res = rep.results[0]
    for b, row in enumerate(res.blocks):
        before = loaded.adapter.blocks()[b].state_dict()
        after = ad.blocks()[b].state_dict()
        tot = sum(float(v.double().pow(2).sum()) for v in before.values())
        # removed energy: every original entry not present in the pruned tensor
        kept = sum(float(after[k].double().pow(2).sum()) for k in before)
        assert row.param_distortion == pytest.approx((tot - kept) / tot, rel=1e-9)
    assert res.distortion.pooled_cosine is not None and res.distortion.pooled_cosine < 1


@pytest.mark.parametrize("fam", ["gpt2", "llama", "bert"])
def test_safetensors_reload_reproduces_pruned_model_exactly(exported, folders, fam):
    rep, exp = exported[fam]
    res = rep.results[-1]
    ad = _pruned(folders[fam], res.requested_ratio, fam)
    ref = split(ad, 2, logits_to_keep=0)
    sha = {f.path: f.sha256 for f in res.shards}
    sub = f"ratio-{res.requested_ratio:.3f}"
    dev = shard_io.load_shard(exp / sub / "device.json", sha[f"{sub}/device.json"])
    srv = shard_io.load_shard(exp / sub / "server.json", sha[f"{sub}/server.json"])
    srv.logits_to_keep = 0
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.server(ref.device(ids))
        h = dev(ids)
        got = srv(h)
    torch.testing.assert_close(h, ref.device(ids), rtol=0, atol=0)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=0, atol=0)
    assert dev.adapter.block_shape(0) == ad.block_shape(0)


@pytest.mark.parametrize("fam", ["gpt2", "llama", "bert"])
def test_onnx_shards_match_torch_at_two_lengths(exported, fam):
    rep, exp = exported[fam]
    res = rep.results[-1]
    assert set(res.onnx_max_abs_diff) == {"8", "24"} and max(res.onnx_max_abs_diff.values()) < 1e-4
    files = {(f.role, f.format): f for f in res.shards}
    for role in ("device", "server"):
        j = files[(role, "json")]
        shard = shard_io.load_shard(exp / j.path, j.sha256)
        o, d = files[(role, "onnx")], files[(role, "onnx-data")]
        sess = shard_io.load_onnx_shard(exp / o.path, o.sha256, d.sha256)
        for n in (5, 19):
            x = shard_io.example_input(shard, n)
            with torch.no_grad():
                want = shard(x)
            want = want if isinstance(want, torch.Tensor) else want.last_hidden_state
            got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
            assert got.shape == want.shape
            assert float((got - want).abs().max()) < 1e-4


def test_export_has_no_pickles_and_every_sha256_matches(exported):
    for rep, exp in exported.values():
        listed = {f.path: f.sha256 for r in rep.results for f in r.shards}
        on_disk = {str(p.relative_to(exp)) for p in exp.rglob("*") if p.is_file()}
        assert on_disk == set(listed)
        for path, sha in listed.items():
            assert path.endswith((".json", ".safetensors", ".onnx", ".onnx.data"))
            assert file_sha256(exp / path) == sha


def test_tampered_or_wrong_sha_is_refused(exported, tmp_path):
    rep, exp = exported["llama"]
    res = rep.results[0]
    j = next(f for f in res.shards if f.role == "device" and f.format == "json")
    with pytest.raises(IntegrityError):
        shard_io.load_shard(exp / j.path, "0" * 64)
    # a copy whose weights changed by one byte: config verifies, weights do not
    import shutil

    copy_dir = tmp_path / "c"
    shutil.copytree(exp / Path(j.path).parent, copy_dir)
    w = copy_dir / "device.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        shard_io.load_shard(copy_dir / "device.json", j.sha256)
    o = next(f for f in res.shards if f.role == "device" and f.format == "onnx")
    with pytest.raises(IntegrityError):
        shard_io.load_onnx_shard(exp / o.path, o.sha256, "f" * 64)


def test_device_scope_prunes_only_device_blocks(folders, tmp_path):
    rep_path = tmp_path / "d.json"
    args = ["prune", "--model", str(folders["llama"]), "--ratios", "0.5", "--split", "1", "--scope", "device",
            "--importance", "activation", "--no-speed", "-o", str(rep_path), *QUICK]
    assert main(args) == 0
    rep = load_document(rep_path, PruneReport)
    r = rep.results[0]
    assert rep.scope == "device" and rep.split == 1 and rep.importance == "activation"
    assert [b.heads_after for b in r.blocks] == [2, 4, 4, 4]
    assert [b.param_distortion > 0 for b in r.blocks] == [True, False, False, False]
    assert r.params_before == r.blocks[0].params_before  # scope totals cover block 0 only


def _bad(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ratios", "1.0"], "outside [0, 1)"),
        (["--ratios", "-0.2"], "outside [0, 1)"),
        (["--ratios", "0.1,x"], "not a number"),
        (["--split", "9"], "outside 0..4"),
        (["--scope", "device"], "needs --split"),
        (["--importance", "random"], "--importance"),
        (["--calib", "EMPTY"], "empty file"),
        (["--calib", "BINARY"], "binary file"),
        (["--split", "2", "--export", "NONEMPTY"], "not empty"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(folders, tmp_path, capsys, extra, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02" * 10)
    nonempty = tmp_path / "shards"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("mine")
    subst = {"EMPTY": str(tmp_path / "empty.txt"), "BINARY": str(tmp_path / "bin.txt"), "NONEMPTY": str(nonempty)}
    extra = [subst.get(a, a) for a in extra]
    out = tmp_path / "r.json"
    code, err = _bad(["prune", "--model", str(folders["bert"]), "-o", str(out), "--no-speed", *QUICK, *extra], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin.txt", "empty.txt", "shards"]
    assert [p.name for p in nonempty.iterdir()] == ["keep.txt"]


def test_force_replaces_a_non_empty_export_dir(folders, tmp_path):
    exp = tmp_path / "shards"
    exp.mkdir()
    (exp / "old.txt").write_text("old")
    args = ["prune", "--model", str(folders["bert"]), "--ratios", "0.5", "--split", "4", "--export", str(exp),
            "--force", "--no-onnx", "--no-speed", "-o", str(tmp_path / "r.json"), *QUICK]
    assert main(args) == 0
    assert sorted(p.name for p in exp.iterdir()) == ["ratio-0.500"]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert {f["format"] for f in rep["results"][0]["shards"]} == {"json", "safetensors"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "shards"]


def test_contended_speed_is_flagged_and_strict_keeps_the_previous_report(folders, tmp_path, capsys, monkeypatch,
                                                                         contended_watch):
    from coinfer.pruner import measure

    rep, exp = tmp_path / "r.json", tmp_path / "shards"
    args = ["prune", "--model", str(folders["gpt2"]), "--ratios", "0.5", "--split", "2", "--no-onnx", *QUICK, "-o", str(rep)]
    assert main([*args, "--export", str(exp)]) == 0
    before = (rep.read_bytes(), sorted(p.name for p in exp.rglob("*")))
    capsys.readouterr()
    monkeypatch.setattr(measure, "QuietWatch", contended_watch)
    # flagged: the record in the report, one loud line on stderr, a mark in the table
    assert main([*args, "-o", str(tmp_path / "flagged.json")]) == 0
    out = capsys.readouterr()
    r = load_document(tmp_path / "flagged.json", PruneReport).results[0]
    assert r.speedup.contention.verdict == "contended" and r.speedup.contention.kernel_slowdown == 4.0
    warnings = [ln for ln in out.err.splitlines() if "CONTENDED" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: the speed-up at ratio 0.5 was CONTENDED")
    assert "4.00x" in warnings[0] and "1.50 cores with 0 spare" in warnings[0] and "CONTENDED" not in out.out
    assert "!" in out.out
    # --strict: one line, exit 2, the previous report and export untouched
    assert main([*args, "--export", str(exp), "--force", "--strict"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --strict: the speed-up at ratio 0.5 was contended, nothing written") and "\n" not in err
    assert (rep.read_bytes(), sorted(p.name for p in exp.rglob("*"))) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
