"""The server role: accept sessions on the JSON control channel and serve them one at a time.

Each accepted session gets its own rendezvous store and gloo group (see ``transport``). Whatever
happens inside a session — the device dies mid-generation, a step times out, a request is
malformed or oversized — is reported as an event and the server goes back to listening.
"""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

from coinfer.runner import protocol
from coinfer.runner.engine import Steps, member_request
from coinfer.runner.protocol import MemberReport, OpenReply, OpenSession, ProtocolError
from coinfer.runner.transport import LinkBroken, host_store, join_store, open_group
from coinfer.vocab import max_positions

EventSink = Callable[[dict[str, Any]], None]
REQUEST_READ_TIMEOUT_S = 5.0
BUSY_WAIT_S = 2.0  # a device's next session may arrive while the last one is being torn down


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) to a tuple; UserInputError otherwise."""
    from coinfer.errors import UserInputError

    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserInputError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:29600")
    return host, int(port)


class Server:
    """A loaded model's server side. Use :meth:`bind` then :meth:`serve_forever`.

    Args:
        loaded: The model (a ``LoadedModel``); requests must name the same architecture and weights.
        host: Address to listen on (loopback unless told otherwise).
        port: Port (0 = any free one).
        max_timeout_s: Upper bound on a session's per-operation timeout.
        on_event: Called with one dict per event (listening, session_open, session_done, ...).
    """

    def __init__(self, loaded: Any, host: str, port: int, max_timeout_s: float = 60.0, on_event: EventSink | None = None,
                 shard: Any = None, shard_sha256: str | None = None):
        self.loaded = loaded
        # An exported (pruned) shard, verified by sha256 when loaded: then the server runs only it.
        self.fixed_shard, self.fixed_sha256 = shard, shard_sha256
        self.host, self.port = host, port
        self.max_timeout_s = max_timeout_s
        self.on_event = on_event or (lambda e: None)
        self.sock: socket.socket | None = None
        self._busy = threading.Lock()
        self._held = False
        self._stop = threading.Event()
        self.sessions_done = 0
        self.sessions_failed = 0
        self._shards: dict[tuple[int, int], Any] = {}

    def bind(self) -> tuple[str, int]:
        """Open the listening socket; returns the actual (host, port)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        sock.settimeout(0.5)  # so stop() is noticed
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.on_event({"event": "listening", "host": self.host, "port": self.port})
        return self.host, self.port

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    def serve_forever(self, max_sessions: int | None = None) -> None:
        """Accept connections until stopped (or ``max_sessions`` sessions have ended)."""
        assert self.sock is not None, "bind() first"
        try:
            while not self._stop.is_set():
                if max_sessions is not None and self.sessions_done + self.sessions_failed >= max_sessions:
                    break
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._accept(conn, peer)
        finally:
            # let a running session finish its cleanup before the socket goes
            with self._busy:
                pass
            self.sock.close()

    # -- one connection ------------------------------------------------------------------
    def _refuse(self, conn: socket.socket, peer: Any, why: str) -> None:
        self.on_event({"event": "refused", "peer": str(peer[0]), "error": why})
        try:
            protocol.send_frame(conn, OpenReply(ok=False, error=why))
        except OSError:
            pass
        conn.close()

    def _accept(self, conn: socket.socket, peer: Any) -> None:
        conn.settimeout(REQUEST_READ_TIMEOUT_S)
        try:
            req = protocol.parse(OpenSession, protocol.recv_frame(conn))
            self._check(req)
        except (ProtocolError, OSError) as exc:
            self._refuse(conn, peer, str(exc) or type(exc).__name__)
            return
        if not self._busy.acquire(timeout=BUSY_WAIT_S):
            self._refuse(conn, peer, "busy: another session is running")
            return
        self._held = True
        threading.Thread(target=self._session, args=(conn, peer, req), daemon=True).start()

    def _check(self, req: OpenSession) -> None:
        ident = self.loaded.identity
        if (req.config_sha256, req.weights, req.weights_seed) != (ident.config_sha256, ident.weights, ident.weights_seed):
            raise ProtocolError(f"model mismatch: this server runs {ident.name} ({ident.config_sha256[:12]}, {ident.weights} weights)")
        b, total = req.bounds, ident.num_blocks + 2
        if b[0] != 0 or b[-1] != total or any(x >= y for x, y in zip(b[1:], b[2:], strict=False)) or b[1] < 0:
            raise ProtocolError(f"bounds {b}: expected 0 <= c1 < c2 < ... < {total}")
        if req.rank >= len(b) - 1:
            raise ProtocolError(f"rank {req.rank} outside the chain of {len(b) - 1}")
        if b[req.rank] >= b[req.rank + 1]:
            raise ProtocolError(f"rank {req.rank} would run no stage")
        if self.fixed_shard is not None:
            if req.shard_sha256 != self.fixed_sha256:
                raise ProtocolError(f"this server runs the exported shard {self.fixed_sha256[:12]}, not the one asked for")
            if (b[req.rank], b[req.rank + 1]) != (self.fixed_shard.start, self.fixed_shard.end):
                raise ProtocolError(f"this server's shard runs stages [{self.fixed_shard.start}, {self.fixed_shard.end})")
        elif req.shard_sha256 is not None:
            raise ProtocolError("this server runs the unpruned model, not an exported shard")
        if not ident.is_decoder and req.new_tokens > 0:
            raise ProtocolError("encoders generate no tokens")
        limit = max_positions(self.loaded.model.config)
        if limit is not None and req.prompt_tokens + req.new_tokens > limit:
            raise ProtocolError(f"prompt plus new tokens exceed the model's {limit} positions")

    def _shard(self, start: int, end: int) -> Any:
        from coinfer.models.shards import shard_range

        if self.fixed_shard is not None:
            return self.fixed_shard
        if (start, end) not in self._shards:
            self._shards = {(start, end): shard_range(self.loaded, start, end)}  # keep one
        return self._shards[(start, end)]

    def _session(self, conn: socket.socket, peer: Any, req: OpenSession) -> None:
        sid = req.session_id
        group = None
        timeout = min(req.timeout_s, self.max_timeout_s)
        local_host = conn.getsockname()[0]  # the address the device reached us on
        sock = None
        try:
            if req.store is None:
                store, sock, port = host_store(local_host, len(req.bounds) - 1, timeout)
            else:
                store, port = join_store(req.store.host, req.store.port, len(req.bounds) - 1, timeout), None
            protocol.send_frame(conn, OpenReply(ok=True, store_port=port))
            self.on_event({"event": "session_open", "session": sid, "peer": str(peer[0]), "rank": req.rank,
                           "bounds": req.bounds, "wire_dtype": req.wire_dtype})
            group = open_group(store, sid, req.rank, len(req.bounds) - 1, local_host, timeout, req.rtt_ms)
            group.listen_sock, sock = sock, None
            ad = self.loaded.adapter
            steps = Steps(ad.is_decoder, ad.hidden_size, req.batch, req.prompt_tokens, req.new_tokens,
                          req.wire_dtype, req.has_mask, tuple(req.bounds))
            shard = self._shard(req.bounds[req.rank], req.bounds[req.rank + 1])
            records = [member_request(group, shard, steps) for _ in range(req.runs)]
            # Free the group and the server before reporting, so the device's next session is
            # never refused as busy.
            group.close()
            group = None
            self._release()
            conn.settimeout(timeout)
            protocol.send_frame(conn, MemberReport(compute_ms=[r.compute_ms for r in records],
                                                   sent_bytes=[r.sent_bytes for r in records]))
            self.sessions_done += 1
            self.on_event({"event": "session_done", "session": sid})
        except (LinkBroken, ProtocolError, OSError) as exc:
            self.sessions_failed += 1
            self.on_event({"event": "session_failed", "session": sid, "error": str(exc) or type(exc).__name__})
        except Exception as exc:  # a server must outlive any one session; keep the trace in the event
            self.sessions_failed += 1
            self.on_event({"event": "session_failed", "session": sid, "error": f"internal: {exc!r}",
                           "trace": traceback.format_exc(limit=5)})
        finally:
            if group is not None:
                group.close()
            if sock is not None:
                sock.close()
            conn.close()
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._busy.release()

