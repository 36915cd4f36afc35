"""The device role: open a session with every other member, run the request, collect reports."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from coinfer.errors import DeviceUnavailableError, UserInputError
from coinfer.runner import protocol
from coinfer.runner.engine import RunRecord, Steps, device_request
from coinfer.runner.protocol import MemberReport, OpenReply, OpenSession, ProtocolError, StoreAddress
from coinfer.runner.transport import LinkBroken, join_store, open_group


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


def _open(conn: socket.socket, req: OpenSession, where: str) -> OpenReply:
    try:
        protocol.send_frame(conn, req)
        reply = protocol.parse(OpenReply, protocol.recv_frame(conn))
    except (ProtocolError, OSError) as exc:
        raise DeviceUnavailableError(f"server {where} did not accept the session: {exc}") from None
    if not reply.ok:
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
) -> DeviceRun:
    """Run ``runs`` requests as rank 0 of a chain.

    Args:
        loaded: The device's copy of the model (a ``LoadedModel``).
        bounds: Stage positions where ranks change hands: ``[0, c1, ..., L + 2]``.
        members: Control addresses of ranks 1..N-1, in chain order (the last is the server).
        input_ids: Prompt ids, (batch, tokens).
        attention_mask: Encoders: optional padding mask, (batch, tokens); it crosses too.
        new_tokens: Decode steps after the prefill (decoders); new_tokens + 1 tokens come back.
        wire_dtype: fp32, fp16 or int8 for activations.
        runs: Requests to run in the one session (warm-up and measured).
        rtt_ms: Emulated round-trip time added at the transport boundary.
        timeout_s: Per-operation timeout of the session.
        device_shard: An exported (pruned) device shard to run instead of the model's own.
        server_shard_sha256: The exported shard the server must run (its config's sha256).

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
                bounds=bounds, wire_dtype=wire_dtype, batch=steps.batch, prompt_tokens=steps.prompt_tokens,
                new_tokens=new_tokens, has_mask=steps.has_mask, runs=runs, rtt_ms=rtt_ms, timeout_s=timeout_s,
                shard_sha256=server_shard_sha256)
    conns: list[socket.socket] = []
    group = None
    store = None
    try:
        # The last member (the server) hosts the session's store; the others join it.
        s_host, s_port = members[-1]
        conn = _connect(s_host, s_port, timeout_s)
        conns.append(conn)
        reply = _open(conn, OpenSession(rank=len(members), **base), f"{s_host}:{s_port}")
        store_addr = StoreAddress(host=s_host, port=reply.store_port)
        for rank, (host, port) in enumerate(members[:-1], start=1):
            c = _connect(host, port, timeout_s)
            conns.insert(rank - 1, c)
            _open(c, OpenSession(rank=rank, store=store_addr, **base), f"{host}:{port}")
        try:
            store = join_store(s_host, store_addr.port, len(bounds) - 1, timeout_s)
            group = open_group(store, sid, 0, len(bounds) - 1, conn.getsockname()[0], timeout_s, rtt_ms)
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
        for c in conns:
            c.close()
