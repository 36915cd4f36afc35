"""The control channel's shared secret: where it comes from, and the challenge-response.

Both sides hold the same token (``--token-file`` or the ``COINFER_TOKEN`` environment variable);
it never crosses the wire. The device sends a random nonce, the server answers with its own, the
device's request carries an HMAC-SHA256 proof over both nonces and the request itself, and only
then, if the proof holds, does the server answer with its own proof over both nonces and its reply,
which the device checks before any tensor crosses. Each proof is labelled with its direction, so neither
side can be used to compute the other's answer; fresh nonces make a recorded exchange useless for
a replay; and the exposed side (the server) gives nothing computed from the token to anyone who
has not proved first, so an anonymous client cannot collect material to guess the token offline.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from coinfer.errors import UserInputError

TOKEN_ENV = "COINFER_TOKEN"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_FILE_BYTES = 4096  # a secret, not a file to read whole (/dev/zero never ends)
_SERVER_LABEL = b"coinfer-v2 server proof\x00"
_CLIENT_LABEL = b"coinfer-v2 client proof\x00"


def load_token(token_file: str | None = None) -> bytes | None:
    """The shared secret: the file's content (stripped), else ``$COINFER_TOKEN``, else None.

    Raises:
        UserInputError: The file cannot be read, or the token is shorter than
            :data:`MIN_TOKEN_CHARS` characters.
    """
    if token_file is not None:
        path = Path(token_file)
        if path.exists() and (not path.is_file() or path.stat().st_size > MAX_TOKEN_FILE_BYTES):
            raise UserInputError(f"--token-file {token_file}: not a small text file (a secret of at most "
                                 f"{MAX_TOKEN_FILE_BYTES} bytes)")
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"--token-file {token_file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
        where = f"--token-file {token_file}"
    else:
        text = os.environ.get(TOKEN_ENV, "").strip()
        if not text:
            return None
        where = f"${TOKEN_ENV}"
    if len(text) < MIN_TOKEN_CHARS:
        raise UserInputError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} characters "
                             "(e.g. from: python -c 'import secrets; print(secrets.token_hex(32))')")
    return text.encode("utf-8")


def new_nonce() -> str:
    """32 random bytes as hex."""
    return secrets.token_hex(32)


def server_proof(token: bytes, client_nonce: str, server_nonce: str, reply: bytes) -> str:
    """What the server sends, once the device has proved itself, to prove it holds the token too;
    it also covers the reply's bytes (the store port the device is about to join)."""
    msg = _SERVER_LABEL + client_nonce.encode() + b"|" + server_nonce.encode() + b"|" + reply
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def client_proof(token: bytes, client_nonce: str, server_nonce: str, request: bytes) -> str:
    """What the device sends to prove it holds the token; it also covers the request's bytes."""
    msg = _CLIENT_LABEL + client_nonce.encode() + b"|" + server_nonce.encode() + b"|" + request
    return hmac.new(token, msg, hashlib.sha256).hexdigest()


def same(a: str | None, b: str) -> bool:
    """Constant-time comparison of a received proof with the expected one."""
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def same_address(a: str, b: str) -> bool:
    """True when two IP literals name the same address (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        ia, ib = ipaddress.ip_address(a.split("%")[0]), ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return False
    ia = getattr(ia, "ipv4_mapped", None) or ia
    ib = getattr(ib, "ipv4_mapped", None) or ib
    return ia == ib
