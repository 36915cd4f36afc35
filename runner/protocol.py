"""The JSON control channel: how a device asks a server (or relay) for a session.

Frames are a 4-byte big-endian length then that many bytes of UTF-8 JSON. Nothing on this
channel is ever unpickled; requests are validated by pydantic models that forbid unknown fields,
and a frame larger than :data:`MAX_FRAME_BYTES` is refused before its body is read.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coinfer.vocab import WireDtype

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A frame or request on the control channel is malformed, oversized or cut short."""


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StoreAddress(_Msg):
    """Where the session's rendezvous store listens."""

    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)


class OpenSession(_Msg):
    """A device's request to take part in one session (one gloo group of ``world_size``)."""

    op: Literal["open"] = "open"
    protocol: Literal[1] = PROTOCOL_VERSION
    session_id: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    config_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    weights: Literal["real", "random"]
    weights_seed: int | None = None
    bounds: list[int] = Field(min_length=3, max_length=17, description="stage positions where ranks change hands")
    rank: int = Field(ge=1, le=15)
    wire_dtype: WireDtype
    batch: int = Field(ge=1, le=256)
    prompt_tokens: int = Field(ge=1, le=65536)
    new_tokens: int = Field(ge=0, le=65536)
    has_mask: bool = False
    runs: int = Field(ge=1, le=1000, description="warm-up plus measured requests")
    rtt_ms: float = Field(ge=0, le=10_000)
    timeout_s: float = Field(gt=0, le=3600)
    store: StoreAddress | None = Field(default=None, description="None: this member hosts the store")
    shard_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                     description="the exported (pruned) shard config the member must run")


class OpenReply(_Msg):
    """The server's answer to :class:`OpenSession`."""

    ok: bool
    error: str | None = None
    store_port: int | None = None


class MemberReport(_Msg):
    """What a member measured, sent back when its part of the session is done."""

    op: Literal["report"] = "report"
    compute_ms: list[list[float]] = Field(description="per run, per step")
    sent_bytes: list[list[int]] = Field(description="per run, per step")


def send_frame(sock: socket.socket, obj: BaseModel | dict[str, Any]) -> None:
    """Send one JSON frame."""
    data = (obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)).encode()
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("connection closed mid-frame" if buf else "connection closed")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> Any:
    """Receive one JSON frame; raises ProtocolError on anything but a well-formed frame."""
    (size,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"request of {size} bytes refused (limit {MAX_FRAME_BYTES})")
    try:
        return json.loads(_recv_exact(sock, size).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"request is not JSON: {exc}") from None


def parse(cls: type[_Msg], data: Any) -> Any:
    """Validate a decoded frame as ``cls``; one-line ProtocolError otherwise."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(root)"
        raise ProtocolError(f"invalid {cls.__name__}: {where}: {first['msg']}") from None
