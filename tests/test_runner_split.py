"""`coinfer run` across real processes: exact outputs, wire dtypes, chains, and a server that survives.

Two tiny GPT-2 servers and one tiny BERT server run as child processes for the whole module (the
spawn and gloo set-up cost seconds each); the device runs in the test process.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from coinfer.models.payload import activation_bytes, token_ids_bytes
from coinfer.models.shards import generate_greedy, shard_range
from coinfer.runner.protocol import PROTOCOL_VERSION


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_config):
    """Tiny models saved as HF folders, their loaded copies, and three child servers."""
    from coinfer.models.loading import build_from_config, load_model
    from coinfer.runner import local

    root = tmp_path_factory.mktemp("runner")
    folders = {}
    for name, cfg in (("gpt2", tiny_config("gpt2")), ("bert", tiny_config("bert"))):
        folders[name] = str(root / name)
        build_from_config(cfg, name=name).model.save_pretrained(folders[name])
    with ThreadPoolExecutor(3) as pool:
        # the servers' own knobs: a promised member must join within 1 s (not 5)
        futs = [pool.submit(local.start_server, folders[n], 0, 1, 30.0, extra_args=["--join-timeout-s", "1"])
                for n in ("gpt2", "gpt2", "bert")]
        servers = [f.result() for f in futs]
    try:
        yield {
            "folders": folders,
            "models": {n: load_model(folders[n]) for n in folders},
            "gpt2": servers[0], "relay": servers[1], "bert": servers[2],
            "tmp": root,
        }
    finally:
        for s in servers:
            local.stop_server(s)


def _addr(child):
    return [child.host, child.port]


def _device(env, family, bounds, members, ids, *, mask=None, new_tokens=0, wire_dtype="fp32", runs=1, rtt_ms=0.0,
            timeout_s=30.0):
    from coinfer.runner.api import device_outcome

    try:
        return device_outcome(model=env["folders"][family], seed=0, loaded=env["models"][family], bounds=bounds,
                              members=members, input_ids=ids.tolist(),
                              attention_mask=None if mask is None else mask.tolist(), new_tokens=new_tokens,
                              wire_dtype=wire_dtype, runs=runs, rtt_ms=rtt_ms, timeout_s=timeout_s, threads=1,
                              check=False)
    except Exception as exc:
        # Say what the servers saw: a failure here is otherwise hard to read.
        seen = {k: (env[k].proc.poll(), env[k].events[-4:]) for k in ("gpt2", "relay", "bert")}
        exc.add_note(f"servers (exit code, last events): {seen}")
        raise


def _ids(batch, tokens, seed=0):
    return torch.randint(0, 101, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def _wait_event(child, kind, since, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for ev in child.events[since:]:
            if ev.get("event") == kind:
                return ev
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event; got {child.events[since:]}")


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 6])
def test_decoder_tokens_identical_to_unsplit(env, cut):
    m = env["models"]["gpt2"]
    ids = _ids(2, 7, seed=cut)
    ref = generate_greedy([shard_range(m, 0, 6)], ids, 6)
    bounds = [0, cut, 6] if cut < 6 else [0, 6]
    members = [_addr(env["gpt2"])] if cut < 6 else []
    out = _device(env, "gpt2", bounds, members, ids, new_tokens=5, runs=2)
    assert out["tokens"] == ref.tolist()  # the prefill's token, then one per decode step
    rec = out["records"][1]
    assert len(rec["end_to_end_ms"]) == 6  # prefill + 5 decode steps
    if cut == 0:
        # token ids cross once; the server feeds itself and streams each token back
        assert rec["sent_bytes"] == [token_ids_bytes(2, 7)] + [0] * 5
    elif cut < 6:
        # each decode step crosses the link with one token's hidden state
        assert rec["sent_bytes"] == [activation_bytes(2, 7, 64, "fp32")] + [activation_bytes(2, 1, 64, "fp32")] * 5
    if cut < 6:
        assert out["members"][0]["sent_bytes"][1] == [token_ids_bytes(2, 1)] * 6
    else:
        assert rec["sent_bytes"] == [0] * 6 and out["members"] == []


@pytest.mark.parametrize("wire_dtype", ["fp16", "int8"])
def test_wire_dtype_bytes_are_what_the_payload_model_counts(env, wire_dtype):
    ids = _ids(1, 9, seed=3)
    out = _device(env, "gpt2", [0, 3, 6], [_addr(env["gpt2"])], ids, new_tokens=3, wire_dtype=wire_dtype)
    sent = out["records"][0]["sent_bytes"]
    assert sent == [activation_bytes(1, 9, 64, wire_dtype)] + [activation_bytes(1, 1, 64, wire_dtype)] * 3
    assert sent[0] < activation_bytes(1, 9, 64, "fp32")
    assert len(out["tokens"][0]) == 4


@torch.no_grad()
def test_encoder_ragged_batch_identical_and_mask_crosses(env):
    from coinfer.runner.device import run_device_session
    from coinfer.runner.engine import sentence_embedding

    m = env["models"]["bert"]
    ids = _ids(3, 10, seed=5)
    mask = torch.ones(3, 10, dtype=torch.int64)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    for cut in (0, 2):
        out = _device(env, "bert", [0, cut, 6], [_addr(env["bert"])], ids, mask=mask)
        whole = shard_range(m, 0, 6)
        with torch.no_grad():
            ref = sentence_embedding(whole(ids, whole.new_state(), mask).last_hidden_state, mask)
        assert out["tokens"] is None
        mask_bytes = token_ids_bytes(3, 10)
        payload = token_ids_bytes(3, 10) if cut == 0 else activation_bytes(3, 10, 64, "fp32")
        assert out["records"][0]["sent_bytes"] == [mask_bytes + payload]
        assert out["members"][0]["sent_bytes"][0] == [3 * 64 * 4]  # the sentence embedding comes back
    # the embedding as received equals the unsplit model's, bit for bit
    run = run_device_session(m, [0, 2, 6], [tuple(_addr(env["bert"]))], ids, mask, 0, "fp32", 1)
    assert torch.equal(run.records[0].output, ref)
    # and padding matters: without the mask the embedding differs
    assert not torch.equal(sentence_embedding(whole(ids).last_hidden_state, None), ref)


def test_three_process_chain_generates_same_tokens(env):
    m = env["models"]["gpt2"]
    ids = _ids(1, 6, seed=9)
    ref = generate_greedy([shard_range(m, 0, 6)], ids, 7)
    out = _device(env, "gpt2", [0, 2, 4, 6], [_addr(env["relay"]), _addr(env["gpt2"])], ids, new_tokens=6)
    assert out["tokens"] == ref.tolist()
    relay, server = out["members"]
    # the relay passes a hidden state on; the server sends only token ids back
    assert relay["sent_bytes"][0] == [activation_bytes(1, 6, 64, "fp32")] + [activation_bytes(1, 1, 64, "fp32")] * 6
    assert server["sent_bytes"][0] == [token_ids_bytes(1, 1)] * 7
    # device runs nothing: the relay embeds, and gets each new token from the server
    out = _device(env, "gpt2", [0, 0, 3, 6], [_addr(env["relay"]), _addr(env["gpt2"])], ids, new_tokens=6)
    assert out["tokens"] == ref.tolist()
    assert out["records"][0]["sent_bytes"] == [token_ids_bytes(1, 6)] + [0] * 6


def _raw(child, payload: bytes) -> dict:
    with socket.create_connection((child.host, child.port), timeout=10) as s:
        s.sendall(payload)
        (n,) = struct.unpack(">I", s.recv(4))
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
    return json.loads(data)


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _body(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _open_request(env, family, **over):
    ident = env["models"][family].identity
    req = dict(op="open", protocol=PROTOCOL_VERSION, session_id="ab" * 8, config_sha256=ident.config_sha256, weights=ident.weights,
               weights_seed=ident.weights_seed, bounds=[0, 3, 6], rank=1, wire_dtype="fp32", batch=1, prompt_tokens=4,
               new_tokens=0, has_mask=False, runs=1, rtt_ms=0.0, timeout_s=1.0)
    req.update(over)
    return req


def _handshake_then(child, request: dict) -> dict:
    """Hello, challenge, then ``request`` as sent (no proof): the server's reply."""
    with socket.create_connection((child.host, child.port), timeout=10) as s:
        s.sendall(_frame({"op": "hello", "protocol": PROTOCOL_VERSION, "client_nonce": "0" * 64}))
        (n,) = struct.unpack(">I", s.recv(4))
        assert json.loads(s.recv(n))["op"] == "challenge"
        s.sendall(_frame(request))
        (n,) = struct.unpack(">I", s.recv(4))
        return json.loads(s.recv(n))


def test_bad_requests_are_refused_and_the_server_keeps_serving(env):
    srv = env["bert"]
    first = [  # refused as the first frame
        struct.pack(">I", 1 << 30) + b"x" * 16,  # oversized: refused before the body is read
        struct.pack(">I", 5) + b"{nope",  # not JSON
        struct.pack(">I", 2000) + b"[" * 1000 + b"]" * 1000,  # 1,000 deep: a RecursionError once
        _body(b'{"op": "hello", "protocol": %d, "client_nonce": ' % PROTOCOL_VERSION + b"7" * 5000 + b"}"),  # a ValueError once
        _frame({"op": "hello", "protocol": 1, "client_nonce": "0" * 64}),  # an old client
        _frame(_open_request(env, "bert")),  # a request without the hello
    ]
    for payload in first:
        reply = _raw(srv, payload)
        assert reply["ok"] is False and reply["error"]
    assert "refused" in _raw(srv, first[0])["error"]
    assert "deeper" in _raw(srv, first[2])["error"] and "5000 characters" in _raw(srv, first[3])["error"]
    assert f"protocol {PROTOCOL_VERSION}" in _raw(srv, first[4])["error"] and "invalid Hello" in _raw(srv, first[5])["error"]
    after_hello = [
        {"op": "open", "evil": True},  # unknown fields
        _open_request(env, "bert", config_sha256="0" * 64),  # another model
        _open_request(env, "bert", bounds=[0, 9, 6]),  # bounds out of order
        _open_request(env, "bert", new_tokens=3),  # encoders generate nothing
        _open_request(env, "bert", prompt_tokens=500),  # past the model's positions
    ]
    for request in after_hello:
        reply = _handshake_then(srv, request)
        assert reply["ok"] is False and reply["error"]
    assert srv.proc.poll() is None
    out = _device(env, "bert", [0, 3, 6], [_addr(srv)], _ids(1, 5))
    assert out["records"][0]["sent_bytes"] == [activation_bytes(1, 5, 64, "fp32")]


def test_session_never_joined_expires_then_next_run_works(env):
    srv = env["bert"]
    since = len(srv.events)
    # a valid request whose device never joins the group: the server gives up within seconds
    assert _handshake_then(srv, _open_request(env, "bert", session_id="cd" * 8, timeout_s=30.0))["ok"] is True
    failed = _wait_event(srv, "session_failed", since, timeout_s=30)
    assert failed["session"] == "cd" * 8 and "joined" in failed["error"]
    out = _device(env, "bert", [0, 1, 6], [_addr(srv)], _ids(1, 5))
    assert len(out["members"]) == 1


def test_device_killed_mid_generation_then_normal_run(env, tmp_path):
    srv = env["gpt2"]
    since = len(srv.events)
    request = dict(model=env["folders"]["gpt2"], seed=0, bounds=[0, 3, 6], members=[_addr(srv)],
                   input_ids=_ids(1, 5).tolist(), attention_mask=None, new_tokens=100, wire_dtype="fp32", runs=1,
                   rtt_ms=200.0, timeout_s=30.0, threads=1, check=False)
    (tmp_path / "req.json").write_text(json.dumps(request))
    dev = subprocess.Popen([sys.executable, "-m", "coinfer.runner.worker", "device", str(tmp_path / "req.json"),
                            str(tmp_path / "out.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        opened = _wait_event(srv, "session_open", since)
        time.sleep(1.0)  # a few 200 ms round trips into the 100-token generation
        assert dev.poll() is None
        dev.kill()
    finally:
        dev.kill()
        dev.wait()
    failed = _wait_event(srv, "session_failed", since)
    assert failed["session"] == opened["session"]
    assert not (tmp_path / "out.json").exists()
    assert srv.proc.poll() is None
    m = env["models"]["gpt2"]
    ids = _ids(1, 5, seed=1)
    out = _device(env, "gpt2", [0, 3, 6], [_addr(srv)], ids, new_tokens=4)
    assert out["tokens"] == generate_greedy([shard_range(m, 0, 6)], ids, 5).tolist()
    assert _wait_event(srv, "session_done", since)


def test_device_role_writes_result_with_predictions(env, tmp_path):
    """Two-machine mode against the running server, with a plan's predictions and errors."""
    from coinfer.reports.io import load_document, write_json
    from coinfer.reports.plan import Candidate, EnergyBreakdown, LinkModel, PhaseBreakdown, Plan
    from coinfer.reports.run import RunResult
    from coinfer.runner.api import RunOptions, run_command

    ident = env["models"]["gpt2"].identity

    def cand(cut, scale):
        pre = PhaseBreakdown(device_ms=2 * scale, uplink_ms=1 * scale, server_ms=3 * scale, downlink_ms=0.5, total_ms=6.5 * scale)
        tok = PhaseBreakdown(device_ms=1, uplink_ms=0.5, server_ms=1, downlink_ms=0.5, total_ms=3)
        return Candidate(cut=cut, cut_name="x", prefill=pre, per_token=tok, total_latency_ms=10, objective=1,
                         energy=EnergyBreakdown(compute_j=0, transmit_j=0, total_j=0), device_memory_bytes=0)

    plan = Plan(model=ident, inputs=[], link=LinkModel(uplink_rate_bps=1e7, downlink_rate_bps=1e7, rtt_ms=0,
                                                        wire_dtype="fp16"),
                objective="latency", prompt_tokens=6, new_tokens=4, best=cand(3, 1.0), all_device=cand(6, 1.0),
                all_server=cand(0, 1.0), candidates=[cand(0, 1.0), cand(3, 1.0), cand(6, 1.0)])
    write_json(plan, tmp_path / "plan.json")
    out = tmp_path / "run.json"
    res = run_command(RunOptions(role="device", server=f"{env['gpt2'].host}:{env['gpt2'].port}", plan=str(tmp_path / "plan.json"),
                                 model=env["folders"]["gpt2"], out=str(out), warmup=0, repeats=2))
    again = load_document(out, RunResult)
    assert again == res
    assert res.cut == 3 and res.cut_name == "block.1" and res.wire_dtype == "fp16"  # both from the plan
    assert res.mode == "two-machine" and res.prompt_tokens == 6 and res.new_tokens == 4 and res.decode_steps == 4
    assert res.matches_unsplit is not None and res.generated_tokens is not None and len(res.generated_tokens[0]) == 5
    assert res.prefill.end_to_end.predicted_ms == pytest.approx(6.5)
    e = res.prefill.end_to_end
    assert e.error_pct == pytest.approx((e.measured_ms - 6.5) / 6.5 * 100)
    assert res.prefill.transfer.predicted_ms == pytest.approx(1.5)
    assert res.total.end_to_end.predicted_ms == pytest.approx(6.5 + 4 * 3)  # = the plan's prefill + m x per token
    assert res.per_generated_token.predicted_ms == pytest.approx((6.5 + 12) / 5)
    t = res.prefill
    assert t.end_to_end.measured_ms >= t.device_compute.measured_ms + t.server_compute.measured_ms
    assert res.traffic.prefill_uplink_bytes == activation_bytes(1, 6, 64, "fp16") == res.traffic.predicted_prefill_payload_bytes
    assert [c.role for c in res.chain] == ["device", "server"] and res.chain[1].stages == "block.2..head"
    assert res.plan is not None and len(res.plan.sha256) == 64


@pytest.mark.skipif(os.geteuid() != 0, reason="link emulation needs root (ip netns, tc)")
def test_emulated_link_runs_in_a_namespace_and_removes_it(env, tmp_path):
    from coinfer.runner.api import RunOptions, run_command

    res = run_command(RunOptions(model=env["folders"]["gpt2"], cut=2, new_tokens=3, prompt_tokens=5, warmup=0,
                                 emulate_rate="50Mbps", emulate_rtt="4ms", out=str(tmp_path / "r.json")))
    assert res.matches_unsplit is True
    assert res.link.rate_bps == 50e6 and res.link.rtt_ms == 4 and res.link.rtt_emulated_at_transport
    assert "tbf" in res.link.qdisc and res.link.namespace.startswith("coinfer-")
    # each step crosses twice (activation up, token down), each with rtt/2 of emulated delay
    assert res.per_token.transfer.measured_ms >= 4.0
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert res.link.namespace not in listed


def test_two_namespaces_over_a_veth_pair_run_and_are_removed(env, tmp_path):
    from coinfer.models.payload import activation_bytes
    from coinfer.runner.api import RunOptions, run_command

    res = run_command(RunOptions(model=env["folders"]["gpt2"], cut=2, new_tokens=2, prompt_tokens=40, warmup=0,
                                 emulate_rate="5Mbps", emulate_link="veth", out=str(tmp_path / "r.json")))
    assert res.matches_unsplit is True
    dev, srv = res.link.namespace.split(" <-veth-> ")
    assert dev.endswith("-dev") and srv.endswith("-srv") and res.link.qdisc.count("tbf rate 5000000bit") == 2
    # the server listened on the server namespace's veth address, not loopback
    assert all(not m.address or m.address.startswith("10.") for m in res.chain if m.role == "server")
    # what crossed the veth is the prefill's activation, 40 tokens x the hidden size in fp32
    hidden = env["models"]["gpt2"].adapter.hidden_size
    assert res.traffic.prefill_uplink_bytes == activation_bytes(1, 40, hidden, "fp32")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert dev not in listed and srv not in listed


def test_exported_shards_run_verified_and_server_refuses_others(env, tmp_path, tiny_config):
    """Shards exported as safetensors + JSON (as `coinfer prune` does) run on both sides, sha256-checked."""
    from coinfer.errors import IntegrityError, UserInputError
    from coinfer.models.loading import build_from_config
    from coinfer.models.shard_io import export_safetensors, load_shard
    from coinfer.models.shards import split
    from coinfer.reports.io import file_sha256
    from coinfer.runner import local

    ident = env["models"]["gpt2"].identity
    other = build_from_config(tiny_config("gpt2"), name="other", seed=7)  # other weights: proves the shards are what runs
    s = split(other, 2)
    refs = {}
    for role, shard in (("device", s.device), ("server", s.server)):
        path = export_safetensors(shard, tmp_path, role, ident, requested_ratio=0.0, scope="all")["json"]
        refs[role] = [str(path), file_sha256(path)]
    ids = _ids(1, 6, seed=4)
    srv = local.start_server(env["folders"]["gpt2"], 0, 1, 30.0, shard=refs["server"])
    try:
        out = _device(env, "gpt2", [0, 3, 6], [_addr(srv)], ids, new_tokens=4)  # no shard named: refused
    except UserInputError as exc:
        assert "exported shard" in str(exc)
    else:
        raise AssertionError("a server running exported shards accepted a plain session")
    try:
        from coinfer.runner.api import device_outcome

        out = device_outcome(model=env["folders"]["gpt2"], seed=0, loaded=env["models"]["gpt2"], bounds=[0, 3, 6],
                             members=[_addr(srv)], input_ids=ids.tolist(), attention_mask=None, new_tokens=4,
                             wire_dtype="fp32", runs=1, rtt_ms=0.0, timeout_s=30.0, threads=1, check=True, shards=refs)
    finally:
        local.stop_server(srv)
    expected = generate_greedy([load_shard(*refs["device"]), load_shard(*refs["server"])], ids, 5)
    assert out["tokens"] == expected.tolist() and out["matches_unsplit"] is True
    assert out["tokens"] != generate_greedy([shard_range(env["models"]["gpt2"], 0, 6)], ids, 5).tolist()
    with pytest.raises(IntegrityError):
        device_outcome(model="", seed=0, loaded=env["models"]["gpt2"], bounds=[0, 3, 6], members=[["127.0.0.1", 1]],
                       input_ids=ids.tolist(), attention_mask=None, new_tokens=1, wire_dtype="fp32", runs=1,
                       rtt_ms=0.0, timeout_s=5.0, threads=1, check=False,
                       shards={"device": [refs["device"][0], "0" * 64], "server": refs["server"]})


def test_contended_run_is_flagged_and_strict_keeps_the_previous_result(env, tmp_path, capsys, monkeypatch,
                                                                       contended_watch):
    from coinfer.cli.main import main
    from coinfer.reports.io import load_document
    from coinfer.reports.run import RunResult
    from coinfer.runner import api

    out = tmp_path / "run.json"
    args = ["run", "--role", "device", "--server", f"{env['gpt2'].host}:{env['gpt2'].port}", "--model",
            env["folders"]["gpt2"], "--cut", "3", "--new-tokens", "2", "--prompt-tokens", "4", "--warmup", "0",
            "--threads", "1", "--no-check"]
    assert main([*args, "--out", str(out)]) == 0
    quiet_run = load_document(out, RunResult)
    assert quiet_run.contention is not None and quiet_run.contention.threads == 1
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(api, "QuietWatch", contended_watch)
    assert main([*args, "--out", str(tmp_path / "flagged.json")]) == 0
    std = capsys.readouterr()
    flagged = load_document(tmp_path / "flagged.json", RunResult)
    assert flagged.contention.verdict == "contended" and flagged.notes[-1].startswith("WARNING: this run was CONTENDED")
    assert [ln for ln in std.err.splitlines() if "CONTENDED" in ln] == [flagged.notes[-1]]
    assert "CONTENDED" not in std.out
    assert main([*args, "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the device role's events, then the one error line
    assert err[-1].startswith("error: --strict: this run was contended, nothing written: reference kernel 4.00x")
    assert not any(ln.startswith("error") for ln in err[:-1])
    assert out.read_bytes() == before
