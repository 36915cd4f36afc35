"""Child-process entry for local runs: ``python -m coinfer.runner.worker serve|device ...``.

Not a user command: ``coinfer run`` starts these. ``serve`` prints one JSON event per line on
stdout; ``device`` reads a JSON request file and writes a JSON outcome file.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading


def _serve(args: argparse.Namespace) -> int:
    from coinfer.errors import CoinferError
    from coinfer.runner.api import serve

    lock = threading.Lock()  # sessions run in threads: one whole line per event

    def emit(ev: dict) -> None:
        with lock:
            print(json.dumps(ev), flush=True)

    shard = (args.shard, args.shard_sha256) if args.shard else None
    try:
        serve(args.listen, args.model, seed=args.seed, threads=args.threads, timeout_s=args.timeout_s, on_event=emit,
              shard=shard, token_file=args.token_file, max_sessions=args.max_sessions, limits=_limits(args))
    except CoinferError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def _limits(args: argparse.Namespace):
    from dataclasses import replace

    from coinfer.runner.server import Limits

    given = {k: getattr(args, k) for k in ("handshake_deadline_s", "join_timeout_s", "max_connections")}
    return replace(Limits(), **{k: v for k, v in given.items() if v is not None})


def _device(args: argparse.Namespace) -> int:
    from coinfer.errors import CoinferError
    from coinfer.reports.io import atomic_write_bytes
    from coinfer.runner.api import device_outcome

    with open(args.request, encoding="utf-8") as fh:
        request = json.load(fh)
    try:
        outcome = device_outcome(**request)
    except CoinferError as exc:
        outcome = {"error": str(exc), "error_class": type(exc).__name__}
    atomic_write_bytes(args.out, json.dumps(outcome).encode())
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coinfer.runner.worker")
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--timeout-s", type=float, default=60.0)
    s.add_argument("--shard", default=None)
    s.add_argument("--shard-sha256", default=None)
    s.add_argument("--token-file", default=None)
    s.add_argument("--max-sessions", type=int, default=1)
    s.add_argument("--handshake-deadline-s", type=float, default=None)
    s.add_argument("--join-timeout-s", type=float, default=None)
    s.add_argument("--max-connections", type=int, default=None)
    d = sub.add_parser("device")
    d.add_argument("request")
    d.add_argument("out")
    args = p.parse_args(argv)
    return _serve(args) if args.what == "serve" else _device(args)


if __name__ == "__main__":
    sys.exit(main())
