"""The split server against hostile, slow, absent and unauthenticated clients.

Servers run in this process (a thread each, on loopback, with short deadlines) around one tiny
GPT-2; devices run here too. Several gloo groups coexist in one process, which is also how the
server runs concurrent sessions.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinfer.errors import CoinferError, DeviceUnavailableError, UserInputError
from coinfer.models.shards import generate_greedy, shard_range
from coinfer.runner import auth, protocol
from coinfer.runner.device import open_session, run_device_session
from coinfer.runner.protocol import (
    MAX_JSON_DEPTH,
    Challenge,
    Hello,
    MemberReport,
    OpenReply,
    OpenSession,
    ProtocolError,
    decode_json,
    parse,
    recv_frame,
)
from coinfer.runner.server import Limits, Server, check_exposure

TINY_GPT2 = dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=64, vocab_size=50)
TOKEN = b"correct horse battery staple 42"
FAST = Limits(handshake_deadline_s=1.0, join_timeout_s=1.0, max_connections=8, busy_wait_s=0.2, retry_after_s=3.0)


@pytest.fixture(scope="module")
def model():
    from coinfer.models.loading import build_from_config

    torch.set_num_threads(1)
    return build_from_config(TINY_GPT2, name="srv")


@dataclass
class Running:
    server: Server
    thread: threading.Thread
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.server.host, self.server.port)

    def wait(self, kind: str, count: int = 1, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = [e for e in list(self.events) if e["event"] == kind]
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{count} {kind} event(s) expected; got {self.events}")


@pytest.fixture
def start(model):
    """Start in-thread servers on loopback; all are stopped after the test."""
    started: list[Running] = []

    def go(token: bytes | None = None, max_sessions: int = 1, limits: Limits = FAST) -> Running:
        events: list[dict[str, Any]] = []
        srv = Server(model, "127.0.0.1", 0, max_timeout_s=30.0, on_event=events.append, token=token,
                     max_sessions=max_sessions, limits=limits)
        srv.bind()
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        run = Running(srv, t, events)
        started.append(run)
        return run

    yield go
    for run in started:
        run.server.stop()
    for run in started:
        run.thread.join(timeout=30)


def _ids(seed: int = 0, tokens: int = 5) -> torch.Tensor:
    return torch.randint(0, 50, (1, tokens), generator=torch.Generator().manual_seed(seed))


def _generate(model, srv: Running, seed: int = 0, new_tokens: int = 3, token: bytes | None = None,
              rtt_ms: float = 0.0) -> list[list[int]]:
    run = run_device_session(model, [0, 2, 4], [srv.addr], _ids(seed), None, new_tokens, "fp32", 1, rtt_ms=rtt_ms,
                             timeout_s=20.0, token=token)
    return run.records[0].output.tolist()


def _unsplit(model, seed: int = 0, new_tokens: int = 3) -> list[list[int]]:
    return generate_greedy([shard_range(model, 0, 4)], _ids(seed), new_tokens + 1).tolist()


def _frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return struct.pack(">I", len(data)) + data


def _read_reply(s: socket.socket) -> dict:
    s.settimeout(10)
    return recv_frame(s)


def _request(model, **over) -> OpenSession:
    ident = model.identity
    fields = dict(session_id="ab" * 8, config_sha256=ident.config_sha256, weights=ident.weights,
                  weights_seed=ident.weights_seed, bounds=[0, 2, 4], rank=1, wire_dtype="fp32", batch=1,
                  prompt_tokens=5, new_tokens=0, runs=1, rtt_ms=0.0, timeout_s=10.0)
    fields.update(over)
    return OpenSession(**fields)


def _hello_then(srv: Running, request: OpenSession, proof_token: bytes | None = None) -> tuple[dict, dict]:
    """A hand-rolled client: hello, then ``request`` with a proof made with ``proof_token`` (if any)."""
    with socket.create_connection(srv.addr, timeout=10) as s:
        nonce = auth.new_nonce()
        protocol.send_frame(s, Hello(client_nonce=nonce))
        challenge = _read_reply(s)
        if proof_token is not None:
            proof = auth.client_proof(proof_token, nonce, challenge["server_nonce"], protocol.signing_bytes(request))
            request = request.model_copy(update={"client_proof": proof})
        protocol.send_frame(s, request)
        return challenge, _read_reply(s)


# -- the frame decoder ------------------------------------------------------------------------------
def test_deep_frame_and_big_number_are_refused_and_the_server_keeps_serving(model, start):
    srv = start()
    hostile = [
        b"[" * 1000 + b"]" * 1000,  # a RecursionError in json once
        b'{"op": "hello", "protocol": 3, "client_nonce": ' + b"9" * 5000 + b"}",  # the int-digits ValueError once
        b'{"op": "hello", "protocol": 3, "client_nonce": 1e400}',  # infinity
        b'{"op": "hello", "protocol": NaN}',
        b"\xff\xfe{}",  # not UTF-8
        b'{"a": ' * 9 + b"1" + b"}" * 9,  # one level past the cap
    ]
    for body in hostile:
        with socket.create_connection(srv.addr, timeout=10) as s:
            s.sendall(_frame(body))
            reply = parse(OpenReply, _read_reply(s))
        assert reply.ok is False and reply.error
    errors = [e["error"] for e in srv.events if e["event"] == "refused"]
    assert "deeper than" in errors[0] and "5000 characters" in errors[1] and "out of range" in errors[2]
    assert "NaN" in errors[3] and "UTF-8" in errors[4] and "deeper than" in errors[5]
    assert srv.thread.is_alive()
    assert _generate(model, srv) == _unsplit(model)


def test_decoder_caps_depth_and_numbers_but_keeps_what_fits():
    ok = {"a": [[[[1.5, -2, "[[[[[[[[[[", "\\"]]]], "b": None}
    assert decode_json(json.dumps(ok).encode()) == ok
    assert decode_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    for bad in (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), b"1" * 41, b"-Infinity", b"1e309",
                b'"\\ud800', b"{", b""):
        with pytest.raises(ProtocolError):
            decode_json(bad)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=40,
)


def _depth(x: Any) -> int:
    if isinstance(x, list):
        return 1 + max((_depth(v) for v in x), default=0)
    if isinstance(x, dict):
        return 1 + max((_depth(v) for v in x.values()), default=0)
    return 0


def _numbers_fit(x: Any) -> bool:
    if isinstance(x, list):
        return all(_numbers_fit(v) for v in x)
    if isinstance(x, dict):
        return all(_numbers_fit(v) for v in x.values())
    if isinstance(x, int | float) and not isinstance(x, bool):
        return len(json.dumps(x)) <= protocol.MAX_NUMBER_CHARS
    return True


@settings(max_examples=150, deadline=None)
@given(_json)
def test_fuzz_decoder_round_trips_or_refuses(value):
    data = json.dumps(value).encode()
    if _depth(value) <= MAX_JSON_DEPTH and _numbers_fit(value):
        assert decode_json(data) == value
    else:
        with pytest.raises(ProtocolError):
            decode_json(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_on_arbitrary_bytes_only_ever_refuses(data):
    try:
        decode_json(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_fuzz_frames_over_a_socket(data):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            recv_frame(b, deadline_s=1.0)
        except ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([Hello, Challenge, OpenSession, OpenReply, MemberReport]),
       st.dictionaries(st.sampled_from(["op", "protocol", "client_nonce", "server_nonce", "auth", "bounds", "rank",
                                        "store", "ok", "error", "compute_ms", "session_id", "x"]), _json, max_size=6))
def test_fuzz_request_models_validate_or_refuse(cls, data):
    try:
        msg = parse(cls, data)
    except ProtocolError as exc:
        assert str(exc).startswith(f"invalid {cls.__name__}") and "\n" not in str(exc)
    else:
        assert isinstance(msg, cls)


# -- slow, idle and many clients ----------------------------------------------------------------------
def test_trickling_client_is_cut_at_the_frame_deadline(model, start):
    srv = start()
    body = json.dumps(Hello(client_nonce="1" * 64).model_dump()).encode()
    data = struct.pack(">I", len(body)) + body
    with socket.create_connection(srv.addr, timeout=10) as s:
        reply = None
        for i in range(len(data)):  # one byte every 0.1 s: each recv is quick, the frame never is
            try:
                s.sendall(data[i:i + 1])
            except OSError:
                break
            s.settimeout(0.1)
            try:
                reply = recv_frame(s)
                break
            except (ProtocolError, OSError):
                continue
        assert reply is not None and reply["ok"] is False
        assert reply["error"] == "frame not received in time"
    assert _generate(model, srv) == _unsplit(model)


def test_many_idle_connections_do_not_delay_a_real_client(model, start):
    srv = start(limits=Limits(handshake_deadline_s=60.0, join_timeout_s=5.0, max_connections=32))
    idle = [socket.create_connection(srv.addr, timeout=10) for _ in range(20)]
    try:
        assert _generate(model, srv) == _unsplit(model)
        for s in idle:  # served while every idle connection still waits (their deadline is a minute)
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in idle:
            s.close()


def test_connections_past_the_bound_are_refused_at_once_with_a_retry_hint(model, start):
    srv = start(limits=Limits(handshake_deadline_s=60.0, max_connections=3, retry_after_s=2.0))
    idle = [socket.create_connection(srv.addr, timeout=10) for _ in range(3)]
    try:
        srv.wait("listening")
        with socket.create_connection(srv.addr, timeout=10) as s:
            reply = parse(OpenReply, _read_reply(s))
        assert reply.ok is False and reply.error.startswith("busy") and reply.retry_after_s == 2.0
    finally:
        for s in idle:
            s.close()


def test_idle_connection_is_closed_fast(start):
    srv = start()
    with socket.create_connection(srv.addr, timeout=10) as s:
        reply = parse(OpenReply, _read_reply(s))  # sent nothing: refused after the 1 s handshake deadline
        assert reply.error == "frame not received in time"
        assert s.recv(1) == b""
    with socket.create_connection(srv.addr, timeout=10) as s:  # a hello, then nothing: the same deadline
        protocol.send_frame(s, Hello(client_nonce=auth.new_nonce()))
        assert parse(Challenge, _read_reply(s)).auth == "none"
        assert parse(OpenReply, _read_reply(s)).error == "frame not received in time"


# -- sessions ------------------------------------------------------------------------------------------
def test_unjoined_session_expires_and_the_next_device_is_served(model, start):
    srv = start()
    _, reply = _hello_then(srv, _request(model, session_id="cd" * 8))
    assert reply["ok"] is True and reply["store_port"]
    failed = srv.wait("session_failed")[0]  # within the 1 s join timeout, not the request's 10 s
    assert failed["session"] == "cd" * 8 and "joined" in failed["error"]
    assert _generate(model, srv, seed=2) == _unsplit(model, seed=2)


def test_two_devices_at_once_up_to_max_sessions_then_busy(model, start):
    srv = start(max_sessions=2)
    results: dict[int, Any] = {}

    def device(seed: int) -> None:
        try:  # each step pays 300 ms of emulated RTT: both sessions stay open for over a second
            results[seed] = _generate(model, srv, seed=seed, new_tokens=4, rtt_ms=300.0)
        except Exception as exc:  # noqa: BLE001 - handed to the main thread's assert
            results[seed] = exc

    threads = [threading.Thread(target=device, args=(seed,)) for seed in (3, 4)]
    for t in threads:
        t.start()
    srv.wait("session_open", 2)
    with pytest.raises(DeviceUnavailableError, match=r"busy: 2 of 2 sessions running; retry in 3 s"):
        _generate(model, srv, seed=5)
    for t in threads:
        t.join(timeout=60)
    assert results == {3: _unsplit(model, 3, 4), 4: _unsplit(model, 4, 4)}  # each its own KV cache
    assert _generate(model, srv, seed=5) == _unsplit(model, seed=5)


def test_store_address_other_than_the_peer_is_refused(model, start):
    srv = start()
    for host in ("10.9.8.7", "localhost", "::1"):
        store = protocol.StoreAddress(host=host, port=29500)
        _, reply = _hello_then(srv, _request(model, store=store))
        assert reply["ok"] is False and "your own address" in reply["error"]
    assert srv.events[-1]["event"] == "refused" and not [e for e in srv.events if e["event"] == "session_open"]


def test_chain_store_hosted_by_the_device_is_accepted(model, start):
    relay, server = start(), start()
    ids = _ids(6)
    run = run_device_session(model, [0, 1, 3, 4], [relay.addr, server.addr], ids, None, 3, "fp32", 1, timeout_s=20.0)
    assert run.records[0].output.tolist() == generate_greedy([shard_range(model, 0, 4)], ids, 4).tolist()


# -- authentication --------------------------------------------------------------------------------------
def _reveals(text: str, model) -> bool:
    ident = model.identity
    return any(x in text for x in (ident.name, ident.config_sha256[:8], "random", "weights", "positions"))


def test_unauthenticated_client_is_refused_and_learns_nothing(model, start):
    srv = start(token=TOKEN)
    with pytest.raises(UserInputError, match="requires a shared secret"):
        _generate(model, srv)
    for req in (_request(model), _request(model, config_sha256="0" * 64), _request(model, bounds=[0, 3, 2])):
        challenge, reply = _hello_then(srv, req)  # no proof
        # the challenge holds a nonce and nothing computed from the token or about the model
        assert set(challenge) == {"op", "protocol", "server_nonce", "auth"} and challenge["auth"] == "hmac-sha256"
        assert reply == {"ok": False, "error": "authentication failed", "store_port": None, "retry_after_s": None,
                         "server_proof": None}
    assert not any(_reveals(json.dumps(e), model) for e in srv.events if e["event"] == "refused")
    assert _generate(model, srv, token=TOKEN) == _unsplit(model)


def test_wrong_token_is_refused(model, start):
    srv = start(token=TOKEN)
    wrong = b"not the right token at all"
    with pytest.raises(UserInputError, match="refused the session: authentication failed"):
        _generate(model, srv, token=wrong)
    _, reply = _hello_then(srv, _request(model), proof_token=wrong)
    assert reply["error"] == "authentication failed" and reply["server_proof"] is None
    since = len(srv.events)
    _, reply = _hello_then(srv, _request(model), proof_token=TOKEN)
    assert reply["ok"] is True and reply["server_proof"]  # the right token: accepted, then expires unjoined
    srv.wait("session_failed")
    assert not [e for e in srv.events[since:] if e["event"] == "refused"]
    with pytest.raises(DeviceUnavailableError, match="refusing an unauthenticated server"):
        _generate(model, start(), token=TOKEN)


def test_device_refuses_a_server_that_cannot_prove_the_token(model):
    """A fake server that accepts any proof but cannot answer with its own: no tensor is sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[Any] = []

    def fake() -> None:
        conn, _ = listener.accept()
        with conn:
            recv_frame(conn, 5.0)
            protocol.send_frame(conn, Challenge(server_nonce=auth.new_nonce(), auth="hmac-sha256"))
            seen.append(recv_frame(conn, 5.0))
            protocol.send_frame(conn, OpenReply(ok=True, store_port=1, server_proof="0" * 64))
            seen.append(conn.recv(1))  # the device hangs up: b""

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    try:
        with pytest.raises(DeviceUnavailableError, match="without proving it holds our token"):
            _generate(model, Running(_Addr(*listener.getsockname()), t), token=TOKEN)
    finally:
        t.join(timeout=10)
        listener.close()
    assert seen[0]["client_proof"] and seen[1] == b""


@dataclass
class _Addr:
    host: str
    port: int


def test_proof_covers_the_request():
    nonce_c, nonce_s = auth.new_nonce(), auth.new_nonce()
    p = auth.client_proof(TOKEN, nonce_c, nonce_s, b"request A")
    assert auth.same(p, auth.client_proof(TOKEN, nonce_c, nonce_s, b"request A"))
    assert not auth.same(p, auth.client_proof(TOKEN, nonce_c, nonce_s, b"request B"))
    assert not auth.same(p, auth.client_proof(TOKEN, nonce_s, nonce_c, b"request A"))
    assert not auth.same(p, auth.server_proof(TOKEN, nonce_c, nonce_s, b"request A"))  # the directions differ
    assert not auth.same(None, p)
    s = auth.server_proof(TOKEN, nonce_c, nonce_s, b'{"store_port": 1}')
    assert not auth.same(s, auth.server_proof(TOKEN, nonce_c, nonce_s, b'{"store_port": 2}'))  # covers the reply


def test_token_sources_and_exposure(tmp_path, monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    assert auth.load_token(None) is None
    monkeypatch.setenv(auth.TOKEN_ENV, " from-the-environment-0123 \n")
    assert auth.load_token(None) == b"from-the-environment-0123"
    f = tmp_path / "token"
    f.write_text("from-the-file-0123456789\n")
    assert auth.load_token(str(f)) == b"from-the-file-0123456789"  # the file wins
    f.write_text("short")
    with pytest.raises(UserInputError, match="at least 16"):
        auth.load_token(str(f))
    with pytest.raises(UserInputError, match="cannot read"):
        auth.load_token(str(tmp_path / "missing"))
    check_exposure("127.0.0.1", None)
    check_exposure("::1", None)
    check_exposure("0.0.0.0", TOKEN)
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(UserInputError, match="needs a shared secret"):
            check_exposure(host, None)


def test_server_beyond_loopback_without_token_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    from coinfer.cli.main import main

    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)
    assert main(["run", "--role", "server", "--listen", "0.0.0.0:0", "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a shared secret" in err[0]


def test_open_session_reports_busy_as_unavailable_with_the_hint(model, start):
    srv = start(limits=Limits(handshake_deadline_s=60.0, max_connections=1, retry_after_s=7.0))
    hold = socket.create_connection(srv.addr, timeout=10)
    try:
        srv.wait("listening")
        with socket.create_connection(srv.addr, timeout=10) as c:
            with pytest.raises(DeviceUnavailableError, match=r"busy: too many connections"):
                open_session(c, _request(model), None, "here")
    finally:
        hold.close()


def test_weights_from_another_file_are_refused(model, start):
    srv = start()
    _, reply = _hello_then(srv, _request(model, weights_source="other.Q4_1.gguf sha256:" + "0" * 64))
    assert reply["ok"] is False and "weights mismatch" in reply["error"] and "other.Q4_1.gguf" in reply["error"]
    # The device sends its own identity's source: a device model from another file is refused too.
    other = dataclasses.replace(model, identity=model.identity.model_copy(update={"weights_source": "b.gguf sha256:1"}))
    with pytest.raises(CoinferError, match="weights mismatch"):
        run_device_session(other, [0, 2, 4], [srv.addr], _ids(), None, 1, "fp32", 1, timeout_s=20.0)
    assert _generate(model, srv) == _unsplit(model)  # the server keeps serving the right device
