"""`coinfer run` through an emulated channel: the server impairs what it receives exactly as
`coinfer channel` models it, the output is judged by the clean model, and bad input is refused.

One tiny Llama server runs as a child process for the module; the device runs in the test process.
"""

from __future__ import annotations

import pytest
import torch

from coinfer.cli.main import main
from coinfer.models import channel
from coinfer.models.payload import activation_bytes
from coinfer.models.shards import generate_greedy, shard_range
from coinfer.reports.robustness import ChannelCondition, Estimate, RobustnessPoint, RobustnessProfile
from coinfer.runner.channel_run import predicted


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_config):
    from coinfer.models.loading import build_from_config, load_model
    from coinfer.runner import local

    root = tmp_path_factory.mktemp("chrun")
    folders = {}
    for fam in ("llama", "gpt2"):
        folders[fam] = str(root / fam)
        build_from_config(tiny_config(fam), name=fam).model.save_pretrained(folders[fam])
    server = local.start_server(folders["llama"], 0, 1, 30.0)
    try:
        yield {"folders": folders, "model": load_model(folders["llama"]), "server": server, "root": root}
    finally:
        local.stop_server(server)


def _run(env, ids, cut, new_tokens, wire_dtype="fp32", spec=None):
    from coinfer.runner.api import device_outcome

    return device_outcome(model=env["folders"]["llama"], seed=0, loaded=env["model"], bounds=[0, cut, 6],
                          members=[[env["server"].host, env["server"].port]], input_ids=ids.tolist(),
                          attention_mask=None, new_tokens=new_tokens, wire_dtype=wire_dtype, runs=2, rtt_ms=0.0,
                          timeout_s=30.0, threads=1, check=False, channel=spec, quality=True)


def _teacher_forced_tokens(m, ids, tokens, cut, cond, seed):
    """Replay the run: the window the server saw, corrupted with the documented stream, in one pass."""
    seq = torch.cat([ids, tokens[:, :-1]], dim=1)
    with torch.no_grad():
        act = shard_range(m, 0, cut)(seq)
        gen = torch.Generator().manual_seed(seed) if not cond.deterministic else None
        logits = shard_range(m, cut, 6, logits_to_keep=0)(channel.transmit(act, cond, gen)).logits
    return logits[:, ids.shape[1] - 1 :].argmax(-1)


@pytest.mark.parametrize("cut, cond", [
    (2, ChannelCondition(wire_dtype="fp32", impairment="erasure", erasure_p=0.4)),
    (3, ChannelCondition(wire_dtype="int4", impairment="awgn", snr_db=3.0)),
    (4, ChannelCondition(wire_dtype="int4")),
])
def test_server_impairs_what_arrives_as_the_channel_model_says(env, cut, cond):
    m = env["model"]
    ids = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(cut))
    spec = None if cond.deterministic else dict(impairment=cond.impairment, erasure_p=cond.erasure_p,
                                                snr_db=cond.snr_db, seed=11)
    out = _run(env, ids, cut, 6, cond.wire_dtype, spec)
    tokens = torch.tensor(out["tokens"])
    assert out["records"][0]["sent_bytes"] == [activation_bytes(1, 9, 64, cond.wire_dtype)] + \
        [activation_bytes(1, 1, 64, cond.wire_dtype)] * 6
    # each step's token is the argmax of a teacher-forced pass over what the server received
    assert torch.equal(tokens, _teacher_forced_tokens(m, ids, tokens, cut, cond, 11))
    clean = generate_greedy([shard_range(m, 0, 6)], ids, 7)
    if not cond.deterministic:
        assert not torch.equal(tokens, clean)  # the channel changed the answer
    q = out["quality"]
    assert q["tokens"] == 7 and q["clean_run_agreement"] == pytest.approx(float((tokens == clean).float().mean()))
    # judged independently: the clean model's choices after the run's own tokens
    seq = torch.cat([ids, tokens[:, :-1]], dim=1)
    with torch.no_grad():
        lp = shard_range(m, 0, 6, logits_to_keep=0)(seq).logits[:, 8:].log_softmax(-1)
    assert q["top1_agreement"] == pytest.approx(float((lp.argmax(-1) == tokens).float().mean()))
    assert q["nll_nats"] == pytest.approx(-float(lp.gather(-1, tokens[..., None]).mean()), rel=1e-5)
    assert q["clean_run_nll_nats"] <= q["nll_nats"] + 1e-6


def _profile(model_identity, points):
    from coinfer.reports.common import MachineInfo

    return RobustnessProfile(model=model_identity, machine=MachineInfo.here(), metric="perplexity_ratio", seed=0,
                             cuts=sorted({p.cut for p in points}), points=points, model_evaluations=1)


def _pt(cut, cond, ratio):
    e = Estimate(mean=ratio, ci_low=ratio - 0.1, ci_high=ratio + 0.1, draws=3)
    return RobustnessPoint(cut=cut, cut_name=f"block.{cut - 2}", condition=cond, payload_bytes_per_token=256,
                           perplexity_ratio=e, output_rel_mse=e)


def test_prediction_measured_interpolated_or_said_missing(env):
    er = lambda p: ChannelCondition(impairment="erasure", erasure_p=p)  # noqa: E731
    prof = _profile(env["model"].identity, [_pt(3, er(0.1), 1.2), _pt(3, er(0.3), 1.6), _pt(3, ChannelCondition(), 1.0)])
    point, how = predicted(prof, 3, er(0.3))
    assert point.perplexity_ratio.mean == 1.6 and how == "measured point at cut 3"
    point, how = predicted(prof, 3, er(0.25))
    assert point.perplexity_ratio.mean == pytest.approx(1.5) and point.perplexity_ratio.ci_low == pytest.approx(1.4)
    assert point.condition == er(0.25) and "interpolated" in how
    assert predicted(prof, 3, er(0.5)) == (None, "no prediction: at cut 3 the profile has fp32, fp32 erasure p=0.1, "
                                                 "fp32 erasure p=0.3, not fp32 erasure p=0.5")
    assert predicted(prof, 2, er(0.1))[0] is None and "cuts [3]" in predicted(prof, 2, er(0.1))[1]


def test_cli_run_reports_measured_beside_predicted(env, tmp_path, capsys):
    from coinfer.reports.io import load_document, write_json
    from coinfer.reports.run import RunResult

    er = ChannelCondition(impairment="erasure", erasure_p=0.3)
    write_json(_profile(env["model"].identity, [_pt(3, er, 1.7)]), tmp_path / "rob.json")
    out = tmp_path / "run.json"
    assert main(["run", "--model", env["folders"]["llama"], "--cut", "3", "--erasure", "0.3", "--seed", "4",
                 "--prompt-tokens", "8", "--decode-steps", "4", "--threads", "1", "--robustness",
                 str(tmp_path / "rob.json"), "-o", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    r = load_document(out, RunResult)
    assert r.channel.condition == er and r.channel.seed == 4 and r.channel.measured.tokens == 5
    assert r.channel.predicted.perplexity_ratio.mean == 1.7 and r.channel.robustness.role == "robustness"
    assert "channel: fp32 erasure p=0.3, seed 4" in printed and "predicted by the robustness profile" in printed
    assert f"top-1 agreement with the clean model after the same tokens {r.channel.measured.top1_agreement:.3f}" in printed


@pytest.mark.parametrize("extra, message", [
    (["--erasure", "1.5"], "--erasure 1.5: must lie in [0, 1]"),
    (["--erasure", "-0.2"], "--erasure -0.2: must lie in [0, 1]"),
    (["--snr-db", "loud"], "--snr-db 'loud': 'loud' is not a number"),
    (["--snr-db", "inf"], "not a finite number"),
    (["--erasure", "0.1,0.2"], "a run takes one value"),
    (["--erasure", "0.1", "--snr-db", "10"], "not both"),
    (["--erasure", "0.1", "--cut", "0"], "at cut 0 token ids cross"),
    (["--snr-db", "10", "--cut", "6"], "at cut 6 nothing crosses"),
    (["--robustness", "OTHER"], "was measured on"),
    (["--robustness", "MISSING"], "MISSING"),
])
def test_cli_run_bad_channel_input_is_one_line_exit_2(env, tmp_path, capsys, extra, message):
    from coinfer.reports.io import write_json

    gpt2 = env["folders"]["gpt2"]
    from coinfer.models.loading import load_model

    write_json(_profile(load_model(gpt2).identity, [_pt(3, ChannelCondition(), 1.0)]), tmp_path / "other.json")
    extra = [str(tmp_path / "other.json") if a == "OTHER" else str(tmp_path / "missing.json") if a == "MISSING" else a
             for a in extra]
    if "--cut" not in extra:
        extra += ["--cut", "3"]
    out = tmp_path / "run.json"
    args = ["run", "--model", env["folders"]["llama"], "--prompt-tokens", "4", "--decode-steps", "1", "-o", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.replace("MISSING", "missing.json") in err[0], err
    assert not out.exists()
