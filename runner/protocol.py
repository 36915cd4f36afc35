"""The JSON control channel: how a device asks a server (or relay) for a session.

Frames are a 4-byte big-endian length then that many bytes of UTF-8 JSON. Nothing on this
channel is ever unpickled. A frame larger than :data:`MAX_FRAME_BYTES` is refused before its body
is read, the whole frame must arrive before a deadline, and the JSON is decoded with caps on
nesting depth and number length (the standard decoder recurses and converts digits without
bounds). Messages are validated by pydantic models that forbid unknown fields.

A connection runs: ``Hello`` (device) -> ``Challenge`` (server) -> ``OpenSession`` (device) ->
``OpenReply`` (server) -> the session's tensors over gloo -> ``MemberReport`` (server). The server
may answer any frame with a refusing ``OpenReply`` and close.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coinfer.reports.robustness import ChannelCondition
from coinfer.vocab import WireDtype

# 2: hello/challenge handshake (optional shared-secret authentication), retry hint on busy.
# 3: OpenSession carries weights_source: members whose real weights came from different files refuse.
PROTOCOL_VERSION = 3
MAX_FRAME_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8  # our messages nest 4 deep at most (MemberReport: object, list, list, number)
MAX_NUMBER_CHARS = 40  # a float64 never needs more than ~25 characters
# What one session may ask for; `coinfer run` checks its options against the same numbers before
# anything starts (runner.api.check_limits).
MAX_BATCH = 256
MAX_TOKENS = 65536  # prompt tokens; decode steps likewise
MAX_RUNS = 1000  # warm-up plus measured requests
MAX_RTT_MS = 10_000.0
MAX_TIMEOUT_S = 3600.0
_HEADER = struct.Struct(">I")
_HEX64 = r"^[0-9a-f]{64}$"
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class ProtocolError(Exception):
    """A frame or request on the control channel is malformed, oversized, late or cut short."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Hello(_Msg):
    """A device's first frame: the protocol it speaks and its half of the challenge."""

    op: Literal["hello"] = "hello"
    protocol: Literal[3] = PROTOCOL_VERSION
    client_nonce: str = Field(pattern=_HEX64)


class Challenge(_Msg):
    """The server's answer to :class:`Hello`: its nonce, and whether the device must prove it holds
    the shared secret. Nothing about the server or its model is said before that proof."""

    op: Literal["challenge"] = "challenge"
    protocol: Literal[3] = PROTOCOL_VERSION
    server_nonce: str = Field(pattern=_HEX64)
    auth: Literal["none", "hmac-sha256"]


class StoreAddress(_Msg):
    """Where the session's rendezvous store listens."""

    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)


class ChannelImpairment(_Msg):
    """A channel the first member applies to each activation it receives from the device
    (``coinfer run --erasure/--snr-db``; see :mod:`coinfer.models.channel`), drawn from
    ``torch.Generator().manual_seed(seed)``, fresh for every request."""

    impairment: Literal["erasure", "awgn"]
    erasure_p: float | None = Field(default=None, ge=0, le=1)
    snr_db: float | None = Field(default=None, ge=-200, le=200)
    seed: int = Field(ge=0, le=2**63 - 1)

    def condition(self, wire_dtype: WireDtype) -> ChannelCondition:
        """The condition this impairment makes with the session's wire precision."""
        return ChannelCondition(wire_dtype=wire_dtype, impairment=self.impairment, erasure_p=self.erasure_p,
                                snr_db=self.snr_db)


class OpenSession(_Msg):
    """A device's request to take part in one session (one gloo group of ``world_size``)."""

    op: Literal["open"] = "open"
    protocol: Literal[3] = PROTOCOL_VERSION
    session_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    config_sha256: str = Field(pattern=_HEX64)
    weights: Literal["real", "random"]
    weights_seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    weights_source: str | None = Field(default=None, max_length=1000,
                                       description="the file the weights came from (ModelIdentity.weights_source)")
    bounds: list[int] = Field(min_length=3, max_length=17, description="stage positions where ranks change hands")
    rank: int = Field(ge=1, le=15)
    wire_dtype: WireDtype
    batch: int = Field(ge=1, le=MAX_BATCH)
    prompt_tokens: int = Field(ge=1, le=MAX_TOKENS)
    new_tokens: int = Field(ge=0, le=MAX_TOKENS)
    has_mask: bool = False
    runs: int = Field(ge=1, le=MAX_RUNS, description="warm-up plus measured requests")
    rtt_ms: float = Field(ge=0, le=MAX_RTT_MS)
    timeout_s: float = Field(gt=0, le=MAX_TIMEOUT_S)
    store: StoreAddress | None = Field(
        default=None, description="None: this member hosts the store; else it must be the requesting peer's own address")
    shard_sha256: str | None = Field(default=None, pattern=_HEX64,
                                     description="the exported (pruned) shard config the member must run")
    client_proof: str | None = Field(default=None, pattern=_HEX64,
                                     description="HMAC over both nonces and this request (see runner.auth)")
    channel: ChannelImpairment | None = Field(
        default=None, description="impair what rank 1 receives from the device (emulated channel); None: clean")


class OpenReply(_Msg):
    """The server's answer to :class:`OpenSession` (or its refusal of any earlier frame)."""

    ok: bool
    error: str | None = Field(default=None, max_length=1000)
    store_port: int | None = Field(default=None, ge=1, le=65535)
    retry_after_s: float | None = Field(default=None, ge=0, le=3600, description="busy: when to try again")
    server_proof: str | None = Field(default=None, pattern=_HEX64,
                                     description="accepted with authentication: the server's HMAC over both nonces")


class MemberReport(_Msg):
    """What a member measured, sent back when its part of the session is done."""

    op: Literal["report"] = "report"
    compute_ms: list[list[float]] = Field(description="per run, per step")
    sent_bytes: list[list[int]] = Field(description="per run, per step")


# -- frames -----------------------------------------------------------------------------------------
def send_frame(sock: socket.socket, obj: BaseModel | dict[str, Any]) -> None:
    """Send one JSON frame."""
    data = (obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)).encode()
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("frame not received in time")
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(buf), 65536))
        except TimeoutError:
            raise ProtocolError("frame not received in time") from None
        if not chunk:
            raise ProtocolError("connection closed mid-frame" if buf else "connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, deadline_s: float | None = None) -> Any:
    """Receive and decode one JSON frame.

    Args:
        sock: A connected socket.
        deadline_s: Seconds for the whole frame, header and body together (a client trickling
            bytes cannot stretch it). None: the socket's own timeout per ``recv``.

    Raises:
        ProtocolError: Anything but a well-formed frame in time.
    """
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size, deadline))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"request of {size} bytes refused (limit {MAX_FRAME_BYTES})")
    return decode_json(_recv_exact(sock, size, deadline))


# -- bounded JSON ------------------------------------------------------------------------------------
def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(f"a number of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ProtocolError(f"a number of {len(text)} characters (limit {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text} is out of range")
    return value


def _constant(text: str) -> Any:
    raise ProtocolError(f"{text} is not a number this protocol accepts")


def _check_depth(text: str) -> None:
    # Strings may hold brackets; blank them before counting (an unterminated string fails later).
    depth = 0
    for ch in _STRING.sub('""', text):
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ProtocolError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
        elif ch in "]}":
            depth -= 1


def decode_json(data: bytes) -> Any:
    """Decode one frame body: UTF-8 JSON with bounded nesting and numbers.

    Raises:
        ProtocolError: Not UTF-8, not JSON, nested deeper than :data:`MAX_JSON_DEPTH`, a number
            longer than :data:`MAX_NUMBER_CHARS` or not finite (``NaN``, ``Infinity``, ``1e400``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("request is not UTF-8") from None
    _check_depth(text)
    try:
        return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (RecursionError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"request is not JSON: {str(exc)[:200]}") from None


def parse(cls: type[_Msg], data: Any) -> Any:
    """Validate a decoded frame as ``cls``; one-line ProtocolError otherwise."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])[:100] or "(root)"
        raise ProtocolError(f"invalid {cls.__name__}: {where}: {first['msg'][:200]}") from None


def signing_bytes(msg: OpenSession | OpenReply) -> bytes:
    """The bytes of a request or reply that its proof covers: the message without the proof."""
    return msg.model_dump_json(exclude={"client_proof", "server_proof"}).encode()
