"""`coinfer channel` on tiny models: figures against independent computations, seeds, intervals,
encoders, and the command's file and refusals."""

from __future__ import annotations

import pytest
import torch

from coinfer.cli.main import main
from coinfer.models import channel
from coinfer.models.corpora import corpus
from coinfer.models.payload import activation_bytes
from coinfer.models.perplexity import evaluate, logits_fn, prepare_for
from coinfer.models.robustness import ChannelOptions, measure_robustness
from coinfer.models.shards import shard_range
from coinfer.reports.io import load_document
from coinfer.reports.robustness import RobustnessProfile


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_config):
    from coinfer.models.loading import build_from_config, load_model

    root = tmp_path_factory.mktemp("channel")
    out = {}
    for fam in ("llama", "bert"):
        path = str(root / fam)
        build_from_config(tiny_config(fam), name=fam).model.save_pretrained(path)
        out[fam] = (path, load_model(path))
    return out


def _opts(path, **kw):
    base = dict(model=path, cuts="2,4", wires="fp32,int8", erasure="0.2", snr_db="none", draws=3,
                eval_text="builtin", eval_tokens=192, window=64)
    return ChannelOptions(**{**base, **kw})


def _point(profile, cut, label):
    return next(p for p in profile.points if p.cut == cut and p.condition.label() == label)


def test_decoder_figures_match_an_independent_evaluation(folders):
    path, m = folders["llama"]
    prof = measure_robustness(_opts(path, wires="fp32,int4"))
    ev = prepare_for(m, corpus("builtin"), tokens=192, window=64)
    assert prof.protocol == ev.protocol and prof.metric == "perplexity_ratio" and prof.cuts == [2, 4]
    clean = evaluate(logits_fn(m), ev)
    assert prof.clean_perplexity == pytest.approx(clean.perplexity, rel=1e-6)
    L = m.adapter.num_blocks
    dev, srv = shard_range(m, 0, 2), shard_range(m, 2, L + 2, logits_to_keep=0)
    got = evaluate(lambda ids: srv(channel.roundtrip(dev(ids), "int4")).logits, ev, reference=logits_fn(m))
    p = _point(prof, 2, "int4")
    assert p.perplexity_ratio.mean == pytest.approx(got.perplexity / clean.perplexity, rel=1e-6)
    assert p.kl_nats.mean == pytest.approx(got.kl_nats, rel=1e-4, abs=1e-9)
    assert p.top1_agreement.mean == pytest.approx(got.top1_agreement)
    assert p.perplexity_ratio.draws == 1 and p.payload_bytes_per_token == activation_bytes(1, 1, 64, "int4") == 36
    assert got.kl_nats > 1e-5 and got.top1_agreement < 1  # int4 does change this model's answer
    exact = _point(prof, 4, "fp32")
    assert (exact.perplexity_ratio.mean, exact.kl_nats.mean, exact.output_rel_mse.mean) == (1.0, 0.0, 0.0)
    er = _point(prof, 2, "fp32 erasure p=0.2")
    assert er.perplexity_ratio.draws == 3 and er.kl_nats.mean > 0 and er.output_rel_mse.mean > 0
    for est in (er.perplexity_ratio, er.kl_nats, er.top1_agreement, er.output_rel_mse):
        assert est.ci_low < est.mean < est.ci_high
    # 3 windows x 2 cuts x (int4 once + 3 erasure draws); fp32 alone is the clean model, not run
    assert prof.model_evaluations == 3 * 2 * (1 + 3)
    assert len(prof.points) == 2 * 3 and all(p.pooled_cosine is None for p in prof.points)


def test_same_seed_same_numbers_and_conditions_do_not_disturb_each_other(folders):
    path, _ = folders["llama"]
    a = measure_robustness(_opts(path, cuts="3", draws=2))
    b = measure_robustness(_opts(path, cuts="3", draws=2))
    assert [p.model_dump() for p in a.points] == [p.model_dump() for p in b.points]
    wider = measure_robustness(_opts(path, cuts="3", draws=2, erasure="0.05,0.2", wires="fp32"))
    assert _point(wider, 3, "fp32 erasure p=0.2") == _point(a, 3, "fp32 erasure p=0.2")
    other = measure_robustness(_opts(path, cuts="3", draws=2, seed=1))
    assert _point(other, 3, "int8") == _point(a, 3, "int8")  # deterministic: no seed involved
    assert _point(other, 3, "fp32 erasure p=0.2") != _point(a, 3, "fp32 erasure p=0.2")


def test_interval_shrinks_with_more_draws(folders):
    path, _ = folders["llama"]
    opts = dict(cuts="2", wires="", impair_wires="fp32", erasure="none", snr_db="3", eval_tokens=128)
    few = _point(measure_robustness(_opts(path, draws=2, **opts)), 2, "fp32 awgn 3 dB")
    many = _point(measure_robustness(_opts(path, draws=8, **opts)), 2, "fp32 awgn 3 dB")
    for f, m in ((few.kl_nats, many.kl_nats), (few.output_rel_mse, many.output_rel_mse)):
        assert (f.draws, m.draws) == (2, 8)
        assert m.ci_high - m.ci_low < (f.ci_high - f.ci_low) / 2


def test_encoder_pooled_cosine_against_an_independent_computation(folders):
    path, m = folders["bert"]
    prof = measure_robustness(_opts(path, cuts="3", wires="fp32,int4", eval_tokens=200, window=50))
    assert prof.metric == "pooled_cosine" and prof.protocol is None and prof.clean_perplexity is None
    assert prof.text.name == "builtin" and "4 windows of 50 positions" in prof.notes[0]
    ids = [b % m.adapter.vocab_size for b in corpus("builtin").text.encode("utf-8")][:200]
    x = torch.tensor([ids[i * 50:(i + 1) * 50] for i in range(4)])
    L = m.adapter.num_blocks
    with torch.no_grad():
        ref = shard_range(m, 0, L + 2)(x).last_hidden_state.mean(1)
        got = shard_range(m, 3, L + 2)(channel.roundtrip(shard_range(m, 0, 3)(x), "int4")).last_hidden_state.mean(1)
    want = float(torch.nn.functional.cosine_similarity(ref, got).mean())
    p = _point(prof, 3, "int4")
    assert p.pooled_cosine.mean == pytest.approx(want, abs=1e-6) and 0.5 < want < 1
    assert p.perplexity_ratio is None and p.kl_nats is None
    er = _point(prof, 3, "fp32 erasure p=0.2")
    assert er.pooled_cosine.draws == 3 and er.pooled_cosine.mean < 1 and prof.model_evaluations == 1 + 3


def test_cli_writes_a_valid_profile_and_prints_the_protocol(folders, tmp_path, capsys):
    path, _ = folders["llama"]
    out = tmp_path / "r.json"
    args = ["channel", "--model", path, "--cuts", "2,5", "--erasure", "0.01:0.3:3", "--snr-db", "5,20",
            "--wire", "fp32,fp16,int4", "--draws", "2", "--eval-text", "builtin", "--eval-tokens", "128",
            "--window", "64", "-o", str(out)]
    assert main(args) == 0
    printed = " ".join(capsys.readouterr().out.split())
    prof = load_document(out, RobustnessProfile)
    assert prof.protocol.describe() in printed and "server-part evaluations in" in printed
    labels = [p.condition.label() for p in prof.points if p.cut == 5]
    assert labels == ["fp32", "fp16", "int4", "fp32 erasure p=0.01", "fp32 erasure p=0.155",
                      "fp32 erasure p=0.3", "fp32 awgn 5 dB", "fp32 awgn 20 dB"]
    assert prof.model_evaluations == 2 * 2 * (2 + 5 * 2)  # windows x cuts x (fp16, int4 + 5 conditions x 2 draws)
    assert f"clean perplexity {prof.clean_perplexity:.4g}" in printed


@pytest.mark.parametrize("extra, message", [
    (["--erasure", "1.5"], "--erasure 1.5: must lie in [0, 1]"),
    (["--erasure", "-0.1,0.2"], "--erasure -0.1: must lie in [0, 1]"),
    (["--erasure", "0.3:0.1"], "a range needs A < B"),
    (["--snr-db", "loud"], "--snr-db 'loud': 'loud' is not a number"),
    (["--snr-db", "nan"], "not a finite number"),
    (["--cuts", "0"], "token ids cross"),
    (["--cuts", "2,9"], "--cuts 9: outside 1..5 for a 4-block model"),
    (["--wire", "int3"], "--wire 'int3': expected fp32, fp16, int8 or int4"),
    (["--draws", "0"], "--draws must be at least 1"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(folders, tmp_path, capsys, extra, message):
    out = tmp_path / "r.json"
    out.write_text("previous")
    args = ["channel", "--model", folders["llama"][0], "--eval-text", "builtin", "--eval-tokens", "64", "--window", "32",
            "-o", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert out.read_text() == "previous"
