"""The server role: accept sessions on the JSON control channel and serve several at once.

Every connection is handled in its own thread, at most ``Limits.max_connections`` at a time; the
whole handshake (hello in, challenge out, request in) must finish within
``Limits.handshake_deadline_s``, however the bytes trickle, so slow or idle clients are dropped fast
and never hold anyone else up. A request that passes the checks takes one of ``max_sessions``
session slots, or is refused as busy with a retry hint.

Each session gets its own rendezvous store and gloo group (see ``transport``; several groups live
side by side in one process, each with its own KV cache). A member promised by the request must
join within ``Limits.join_timeout_s``, or the session expires and its slot is freed. Whatever
happens inside a connection or a session — a malformed frame, the device dying mid-generation, a
step timing out — is reported as an event and the server keeps serving.
"""

from __future__ import annotations

import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coinfer.runner import auth, protocol
from coinfer.runner.engine import Steps, member_request
from coinfer.runner.protocol import Challenge, Hello, MemberReport, OpenReply, OpenSession, ProtocolError
from coinfer.runner.transport import LinkBroken, await_members, host_store, join_store, open_group
from coinfer.vocab import max_positions

EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Limits:
    """How long and how many: the server's defences against slow, idle and absent clients."""

    handshake_deadline_s: float = 5.0  # hello in, challenge out, request in: all within this
    join_timeout_s: float = 5.0  # every member of an accepted session joins its group within this
    max_connections: int = 64  # handshakes in progress at once; more are refused at once
    busy_wait_s: float = 1.0  # a request waits this long for a session slot before "busy"
    retry_after_s: float = 5.0  # the hint a busy reply carries


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) to a tuple; UserInputError otherwise."""
    from coinfer.errors import UserInputError

    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserInputError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:29600")
    return host, int(port)


def check_exposure(host: str, token: bytes | None) -> None:
    """Refuse to listen beyond loopback without a shared secret.

    Raises:
        UserInputError: ``host`` is not loopback and no token was given.
    """
    from coinfer.errors import UserInputError

    if token is None and not auth.is_loopback(host):
        raise UserInputError(f"--listen {host}: listening beyond loopback needs a shared secret: give --token-file "
                             f"or set ${auth.TOKEN_ENV} (the same on the device)")


class Server:
    """A loaded model's server side. Use :meth:`bind` then :meth:`serve_forever`.

    Args:
        loaded: The model (a ``LoadedModel``); requests must name the same architecture and weights.
        host: Address to listen on (loopback unless told otherwise).
        port: Port (0 = any free one).
        max_timeout_s: Upper bound on a session's per-operation timeout.
        on_event: Called with one dict per event (listening, session_open, session_done, ...).
        shard: An exported (pruned) shard to run instead of the model's own stages.
        shard_sha256: That shard config's sha256, which requests must name.
        token: The shared secret devices must prove they hold (None: no authentication).
        max_sessions: Sessions served at the same time.
        limits: Deadlines and bounds (defaults suit a real network).
    """

    def __init__(self, loaded: Any, host: str, port: int, max_timeout_s: float = 60.0, on_event: EventSink | None = None,
                 shard: Any = None, shard_sha256: str | None = None, token: bytes | None = None,
                 max_sessions: int = 1, limits: Limits | None = None):
        self.loaded = loaded
        # An exported (pruned) shard, verified by sha256 when loaded: then the server runs only it.
        self.fixed_shard, self.fixed_sha256 = shard, shard_sha256
        self.host, self.port = host, port
        self.max_timeout_s = max_timeout_s
        self.on_event = on_event or (lambda e: None)
        self.token = token
        self.max_sessions = max(1, max_sessions)
        self.limits = limits or Limits()
        self.sock: socket.socket | None = None
        self._conn_slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._session_slots = threading.BoundedSemaphore(self.max_sessions)
        self._lock = threading.Lock()
        self._running = 0
        self._threads: set[threading.Thread] = set()
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
        sock.listen(128)
        sock.settimeout(0.2)  # so stop() is noticed
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.on_event({"event": "listening", "host": self.host, "port": self.port,
                       "auth": "hmac-sha256" if self.token else "none", "max_sessions": self.max_sessions})
        return self.host, self.port

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    def serve_forever(self, stop_after: int | None = None) -> None:
        """Accept connections until stopped (or ``stop_after`` sessions have ended)."""
        assert self.sock is not None, "bind() first"
        try:
            while not self._stop.is_set():
                if stop_after is not None and self.sessions_done + self.sessions_failed >= stop_after:
                    break
                try:
                    conn, peer = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self.sock.fileno() < 0:
                        break
                    # e.g. out of file descriptors: keep serving the connections we have
                    self.on_event({"event": "accept_failed", "error": exc.strerror or str(exc)})
                    time.sleep(0.1)
                    continue
                if not self._conn_slots.acquire(blocking=False):
                    self._refuse(conn, peer, "busy: too many connections", self.limits.retry_after_s)
                    continue
                self._spawn(self._connection, conn, peer)
        finally:
            with self._lock:
                threads = list(self._threads)
            for t in threads:  # let running sessions finish their cleanup before the socket goes
                t.join(timeout=self.limits.handshake_deadline_s)
            self.sock.close()

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, daemon=True)
        with self._lock:
            self._threads.add(t)
        t.start()

    # -- one connection ------------------------------------------------------------------
    def _refuse(self, conn: socket.socket, peer: Any, why: str, retry_after_s: float | None = None) -> None:
        self.on_event({"event": "refused", "peer": str(peer[0]), "error": why})
        try:
            conn.settimeout(1.0)
            protocol.send_frame(conn, OpenReply(ok=False, error=why, retry_after_s=retry_after_s))
        except OSError:
            pass
        conn.close()

    def _connection(self, conn: socket.socket, peer: Any) -> None:
        try:
            try:
                req, sign = self._handshake(conn, peer)
            except (ProtocolError, OSError) as exc:
                self._refuse(conn, peer, str(exc) or type(exc).__name__)
                return
            except Exception as exc:  # noqa: BLE001 - no frame, however malformed, may end the server
                self.on_event({"event": "refused", "peer": str(peer[0]), "error": f"internal: {exc!r}",
                               "trace": traceback.format_exc(limit=5)})
                self._refuse(conn, peer, "malformed request")
                return
        finally:
            self._conn_slots.release()
        if not self._session_slots.acquire(timeout=self.limits.busy_wait_s):
            retry = self.limits.retry_after_s
            self._refuse(conn, peer, f"busy: {self.max_sessions} of {self.max_sessions} sessions running; "
                                     f"retry in {retry:g} s", retry)
            return
        with self._lock:
            self._running += 1
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                with self._lock:
                    self._running -= 1
                self._session_slots.release()

        try:
            self._session(conn, peer, req, sign, release)
        finally:
            release()

    def _handshake(self, conn: socket.socket, peer: Any) -> tuple[OpenSession, Callable[[OpenReply], OpenReply] | None]:
        """Hello, challenge, request; authenticated (when a token is set) before anything is checked.

        Returns:
            The request, and what signs the accepting reply (None without a token).
        """
        end = time.monotonic() + self.limits.handshake_deadline_s
        conn.settimeout(self.limits.handshake_deadline_s)
        first = protocol.recv_frame(conn, self.limits.handshake_deadline_s)
        if isinstance(first, dict) and first.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
            raise ProtocolError(f"this server speaks coinfer protocol {protocol.PROTOCOL_VERSION}: "
                                "run the same coinfer version on both sides")
        hello = protocol.parse(Hello, first)
        nonce = auth.new_nonce()
        protocol.send_frame(conn, Challenge(server_nonce=nonce, auth="hmac-sha256" if self.token else "none"))
        req = protocol.parse(OpenSession, protocol.recv_frame(conn, max(0.0, end - time.monotonic())))
        if self.token is not None:
            expected = auth.client_proof(self.token, hello.client_nonce, nonce, protocol.signing_bytes(req))
            if not auth.same(req.client_proof, expected):
                raise ProtocolError("authentication failed")
        self._check(req)
        if req.store is not None and not auth.same_address(req.store.host, str(peer[0])):
            raise ProtocolError("the session store must be at your own address (or hosted by this server)")
        token = self.token
        if token is None:
            return req, None
        return req, lambda r: r.model_copy(update={"server_proof": auth.server_proof(
            token, hello.client_nonce, nonce, protocol.signing_bytes(r))})

    def _check(self, req: OpenSession) -> None:
        ident = self.loaded.identity
        if (req.config_sha256, req.weights, req.weights_seed) != (ident.config_sha256, ident.weights, ident.weights_seed):
            raise ProtocolError(f"model mismatch: this server runs {ident.name} ({ident.config_sha256[:12]}, {ident.weights} weights)")
        if req.weights_source != ident.weights_source:
            raise ProtocolError(f"weights mismatch: this server's {ident.name} weights come from "
                                f"{ident.weights_source or 'an unrecorded source'}, the device's from "
                                f"{req.weights_source or 'an unrecorded source'}")
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
        with self._lock:  # shards are views on the one model: cheap, stateless, shareable
            if (start, end) not in self._shards:
                if len(self._shards) >= 2 * self.max_sessions:
                    self._shards.clear()
                self._shards[(start, end)] = shard_range(self.loaded, start, end)
            return self._shards[(start, end)]

    def _session(self, conn: socket.socket, peer: Any, req: OpenSession, sign: Callable[[OpenReply], OpenReply] | None,
                 release: Callable[[], None]) -> None:
        sid = req.session_id
        group = None
        timeout = min(req.timeout_s, self.max_timeout_s)
        join_s = min(timeout, self.limits.join_timeout_s)
        world = len(req.bounds) - 1
        local_host = conn.getsockname()[0]  # the address the device reached us on
        sock = None
        try:
            if req.store is None:
                store, sock, port = host_store(local_host, world, timeout)
            else:  # the requesting peer's own address (checked in the handshake)
                store, port = join_store(req.store.host, req.store.port, world, timeout, join_s), None
            reply = OpenReply(ok=True, store_port=port)
            protocol.send_frame(conn, sign(reply) if sign else reply)
            self.on_event({"event": "session_open", "session": sid, "peer": str(peer[0]), "rank": req.rank,
                           "bounds": req.bounds, "wire_dtype": req.wire_dtype})
            await_members(store, sid, req.rank, world, join_s)
            group = open_group(store, sid, req.rank, world, local_host, timeout, req.rtt_ms)
            group.listen_sock, sock = sock, None
            ad = self.loaded.adapter
            steps = Steps(ad.is_decoder, ad.hidden_size, req.batch, req.prompt_tokens, req.new_tokens,
                          req.wire_dtype, req.has_mask, tuple(req.bounds),
                          channel=req.channel.condition(req.wire_dtype) if req.channel else None,
                          channel_seed=req.channel.seed if req.channel else 0)
            shard = self._shard(req.bounds[req.rank], req.bounds[req.rank + 1])
            records = [member_request(group, shard, steps) for _ in range(req.runs)]
            # Free the group and the slot before reporting, so the device's next session is
            # never refused as busy.
            group.close()
            group = None
            release()
            conn.settimeout(timeout)
            protocol.send_frame(conn, MemberReport(compute_ms=[r.compute_ms for r in records],
                                                   sent_bytes=[r.sent_bytes for r in records]))
            self._count(done=True)
            self.on_event({"event": "session_done", "session": sid})
        except (LinkBroken, ProtocolError, OSError) as exc:
            self._count(done=False)
            self.on_event({"event": "session_failed", "session": sid, "error": str(exc) or type(exc).__name__})
        except Exception as exc:  # noqa: BLE001 - a server must outlive any one session; keep the trace in the event
            self._count(done=False)
            self.on_event({"event": "session_failed", "session": sid, "error": f"internal: {exc!r}",
                           "trace": traceback.format_exc(limit=5)})
        finally:
            if group is not None:
                group.close()
            if sock is not None:
                sock.close()
            conn.close()

    def _count(self, done: bool) -> None:
        with self._lock:
            if done:
                self.sessions_done += 1
            else:
                self.sessions_failed += 1

