"""Point-to-point tensor messages over torch.distributed's gloo backend, one group per session.

Gloo groups have a fixed size and break for good when a peer dies, so every session gets its own
rendezvous store and its own ``ProcessGroupGloo`` built directly (not the process-global default
group): a failed session is dropped and the server keeps listening. The store and gloo's pair
sockets bind to the address given, never to every interface.
"""

from __future__ import annotations

import datetime
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import torch

TRANSPORT_NAME = "torch.distributed gloo (TCP), point-to-point send/recv"


class LinkBroken(Exception):
    """The session's group failed: a peer died, closed or timed out."""


@dataclass
class Group:
    """One session's gloo group and what keeps it alive."""

    pg: Any
    rank: int
    world_size: int
    rtt_ms: float = 0.0
    store: Any = None
    listen_sock: socket.socket | None = None
    sent_bytes: int = field(default=0)

    def send(self, parts: list[torch.Tensor], dst: int, delay: bool = True) -> int:
        """Send one message (one or more tensors) to ``dst``; returns its bytes.

        An emulated RTT is added here, at the transport boundary: half of it per message and
        direction, slept by the sender before the bytes leave (``delay=False``: a message whose
        propagation overlaps later work, e.g. a streamed token).
        """
        if delay and self.rtt_ms > 0:
            time.sleep(self.rtt_ms / 2000.0)
        n = 0
        try:
            for t in parts:
                self.pg.send([t], dst, 0).wait()
                n += t.numel() * t.element_size()
        except RuntimeError as exc:
            raise LinkBroken(_short(exc)) from None
        self.sent_bytes += n
        return n

    def recv(self, parts: list[torch.Tensor], src: int) -> list[torch.Tensor]:
        """Receive one message into preallocated ``parts`` from ``src``."""
        try:
            for t in parts:
                self.pg.recv([t], src, 0).wait()
        except RuntimeError as exc:
            raise LinkBroken(_short(exc)) from None
        return parts

    def close(self) -> None:
        """Drop the group, the store and the store's socket."""
        pg, self.pg = self.pg, None
        if pg is not None:
            try:
                pg.abort()
            except (AttributeError, RuntimeError):
                pass
            del pg
        self.store = None
        if self.listen_sock is not None:
            self.listen_sock.close()
            self.listen_sock = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # gloo prefixes its source location; keep the human part.
    return text.split("] ", 1)[-1][:200]


def host_store(bind_host: str, world_size: int, timeout_s: float) -> tuple[Any, socket.socket, int]:
    """Start a rendezvous store on ``bind_host`` (port chosen by the OS).

    The socket is bound here and handed to TCPStore so the store listens on that address only.

    Returns:
        (store, its listening socket, port).
    """
    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind_host, 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    store = dist.TCPStore(
        bind_host, port, world_size, True, timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False, master_listen_fd=sock.fileno(),
    )
    return store, sock, port


def join_store(host: str, port: int, world_size: int, timeout_s: float, connect_timeout_s: float | None = None) -> Any:
    """Connect to a session's rendezvous store (within ``connect_timeout_s``, default ``timeout_s``)."""
    import torch.distributed as dist

    try:
        store = dist.TCPStore(host, port, world_size, False,
                              timeout=datetime.timedelta(seconds=connect_timeout_s or timeout_s))
    except (RuntimeError, TimeoutError) as exc:
        raise LinkBroken(f"cannot reach the session store at {host}:{port}: {_short(exc)}") from None
    store.set_timeout(datetime.timedelta(seconds=timeout_s))
    return store


def await_members(store: Any, session_id: str, rank: int, world_size: int, timeout_s: float) -> None:
    """Say this rank has joined the session's store, and wait until every rank has.

    A member that was promised and never comes is noticed here, after ``timeout_s``, rather than
    after the session's (longer) operation timeout.
    """
    prefix = f"coinfer/{session_id}/joined/"
    try:
        store.set(f"{prefix}{rank}", "1")
        store.wait([f"{prefix}{r}" for r in range(world_size) if r != rank], datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, TimeoutError) as exc:
        raise LinkBroken(f"not every member joined the session within {timeout_s:g} s ({_short(exc)})") from None


def open_group(
    store: Any, session_id: str, rank: int, world_size: int, bind_host: str, timeout_s: float, rtt_ms: float = 0.0
) -> Group:
    """Build the session's gloo group; blocks until every rank has joined or the timeout passes."""
    import torch.distributed as dist

    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=timeout_s)
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=bind_host)]
    try:
        pg = dist.ProcessGroupGloo(dist.PrefixStore(f"coinfer/{session_id}/", store), rank, world_size, opts)
    except (RuntimeError, TimeoutError) as exc:
        raise LinkBroken(f"session group did not form: {_short(exc)}") from None
    return Group(pg, rank, world_size, rtt_ms, store)
