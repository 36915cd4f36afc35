"""The device role: open a session with every other member, run the request, collect reports."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from coinfer.errors import DeviceUnavailableError, UserInputError
from coinfer.runner import auth, protocol
from coinfer.runner.engine import RunRecord, Steps, device_request
from coinfer.runner.protocol import (
    Challenge,
    ChannelImpairment,
    Hello,
    MemberReport,
    OpenReply,
    OpenSession,
    ProtocolError,
    StoreAddress,
)
from coinfer.runner.transport import LinkBroken, await_members, host_store, join_store, open_group


@dataclass
class DeviceRun:
    """Everything the device measured and gathered for one session."""

    steps: Steps
    records: list[RunRecord]
    member_reports: list[MemberReport] = field(default_factory=list)


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout_s)
    except OSError as exc:
        raise DeviceUnavailableError(f"cannot reach server {host}:{port}: {exc.strerror or exc}") from None


def open_session(conn: socket.socket, req: OpenSession, token: bytes | None, where: str) -> OpenReply:
    """Hello, challenge, request, reply: open one session on a connected control socket.

    With a token, the request carries this side's proof and the accepting reply must carry the
    server's; without one, a server that asks for a proof is refused (and with one, a server that
    asks for none).

    Raises:
        DeviceUnavailableError: The server cannot be talked to, is busy, or fails its proof.
        UserInputError: The server refused the request, or wants a token this side lacks.
    """
    nonce = auth.new_nonce()
    try:
        protocol.send_frame(conn, Hello(client_nonce=nonce))
        frame = protocol.recv_frame(conn)
        if isinstance(frame, dict) and "ok" in frame:  # refused before the challenge (e.g. busy)
            reply = protocol.parse(OpenReply, frame)
        else:
            ch = protocol.parse(Challenge, frame)
            if ch.auth == "hmac-sha256":
                if token is None:
                    raise UserInputError(f"server {where} requires a shared secret: give --token-file or set "
                                         f"${auth.TOKEN_ENV}")
                proof = auth.client_proof(token, nonce, ch.server_nonce, protocol.signing_bytes(req))
                req = req.model_copy(update={"client_proof": proof})
            elif token is not None:
                raise DeviceUnavailableError(f"server {where} asks for no token but we hold one: refusing an "
                                             "unauthenticated server")
            protocol.send_frame(conn, req)
            reply = protocol.parse(OpenReply, protocol.recv_frame(conn))
            if reply.ok and token is not None and not auth.same(
                    reply.server_proof, auth.server_proof(token, nonce, ch.server_nonce, protocol.signing_bytes(reply))):
                raise DeviceUnavailableError(f"server {where} accepted us without proving it holds our token: "
                                             "not the server you meant")
    except (ProtocolError, OSError) as exc:
        raise DeviceUnavailableError(f"server {where} did not accept the session: {exc}") from None
    if not reply.ok:
        if reply.retry_after_s is not None:
            raise DeviceUnavailableError(f"server {where} is {reply.error}")
        raise UserInputError(f"server {where} refused the session: {reply.error}")
    return reply


def run_device_session(
    loaded: Any,
    bounds: list[int],
    members: list[tuple[str, int]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    new_tokens: int,
    wire_dtype: str,
    runs: int,
    rtt_ms: float = 0.0,
    timeout_s: float = 60.0,
    device_shard: Any = None,
    server_shard_sha256: str | None = None,
    token: bytes | None = None,
    channel: dict[str, Any] | None = None,
) -> DeviceRun:
    """Run ``runs`` requests as rank 0 of a chain.

    Args:
        loaded: The device's copy of the model (a ``LoadedModel``).
        bounds: Stage positions where ranks change hands: ``[0, c1, ..., L + 2]``.
        members: Control addresses of ranks 1..N-1, in chain order (the last is the server).
        input_ids: Prompt ids, (batch, tokens).
        attention_mask: Encoders: optional padding mask, (batch, tokens); it crosses too.
        new_tokens: Decode steps after the prefill (decoders); new_tokens + 1 tokens come back.
        wire_dtype: fp32, fp16, int8 or int4 for activations.
        runs: Requests to run in the one session (warm-up and measured).
        rtt_ms: Emulated round-trip time added at the transport boundary.
        timeout_s: Per-operation timeout of the session.
        device_shard: An exported (pruned) device shard to run instead of the model's own.
        server_shard_sha256: The exported shard the server must run (its config's sha256).
        token: The shared secret the servers hold (see ``runner.auth``); None: no authentication.
        channel: A :class:`~coinfer.runner.protocol.ChannelImpairment` as a dict: the first member
            impairs every activation it receives from the device (None: a clean link).

    Raises:
        DeviceUnavailableError: A server cannot be reached, or the session broke.
        UserInputError: A server refused the request.
    """
    from coinfer.models.shards import shard_range

    ad = loaded.adapter
    ident = loaded.identity
    steps = Steps(ad.is_decoder, ad.hidden_size, int(input_ids.shape[0]), int(input_ids.shape[1]), new_tokens,
                  wire_dtype, attention_mask is not None, tuple(bounds))
    shard = device_shard if device_shard is not None else shard_range(loaded, 0, bounds[1])
    if len(bounds) == 2:  # all on the device: nothing crosses
        return DeviceRun(steps, [device_request(None, shard, steps, input_ids, attention_mask) for _ in range(runs)])
    if len(members) != len(bounds) - 2:
        raise UserInputError(f"a chain of {len(bounds) - 1} parts needs {len(bounds) - 2} server address(es), got {len(members)}")
    sid = uuid.uuid4().hex
    base = dict(session_id=sid, config_sha256=ident.config_sha256, weights=ident.weights, weights_seed=ident.weights_seed,
                weights_source=ident.weights_source,
                bounds=bounds, wire_dtype=wire_dtype, batch=steps.batch, prompt_tokens=steps.prompt_tokens,
                new_tokens=new_tokens, has_mask=steps.has_mask, runs=runs, rtt_ms=rtt_ms, timeout_s=timeout_s,
                shard_sha256=server_shard_sha256, channel=ChannelImpairment(**channel) if channel else None)
    conns: list[socket.socket] = []
    group = None
    store_sock = None
    world = len(bounds) - 1
    s_host, s_port = members[-1]
    try:
        conn = _connect(s_host, s_port, timeout_s)
        conns.append(conn)
        local_host = conn.getsockname()[0]
        if len(members) == 1:
            # One server: it hosts the session's store.
            reply = open_session(conn, OpenSession(rank=1, **base), token, f"{s_host}:{s_port}")
            try:
                store = join_store(s_host, reply.store_port, world, timeout_s)
            except LinkBroken as exc:
                raise DeviceUnavailableError(f"session with {s_host}:{s_port} broke: {exc}") from None
        else:
            # A chain: the device hosts the store, since a member joins no store but its peer's own.
            store, store_sock, port = host_store(local_host, world, timeout_s)
            store_addr = StoreAddress(host=local_host, port=port)
            for rank in [len(members), *range(1, len(members))]:  # the server first: its socket is open
                host, port_ = members[rank - 1]
                c = conn if rank == len(members) else _connect(host, port_, timeout_s)
                if c is not conn:
                    conns.insert(rank - 1, c)  # conns stay in chain order, the server's last
                open_session(c, OpenSession(rank=rank, store=store_addr, **base), token, f"{host}:{port_}")
        try:
            await_members(store, sid, 0, world, timeout_s)
            group = open_group(store, sid, 0, world, local_host, timeout_s, rtt_ms)
            group.listen_sock, store_sock = store_sock, None
            records = [device_request(group, shard, steps, input_ids, attention_mask) for _ in range(runs)]
            reports = []
            for c in conns:
                c.settimeout(timeout_s)
                reports.append(protocol.parse(MemberReport, protocol.recv_frame(c)))
        except (LinkBroken, ProtocolError, OSError) as exc:
            raise DeviceUnavailableError(f"session with {s_host}:{s_port} broke: {exc}") from None
        return DeviceRun(steps, records, reports)
    finally:
        if group is not None:
            group.close()
        if store_sock is not None:
            store_sock.close()
        for c in conns:
            c.close()
