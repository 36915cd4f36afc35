"""Concurrent sessions on one server: several gloo groups side by side in one process.

One server process (``--max-sessions N``) on loopback; N devices run in threads of this process,
each its own session, generating greedily with an emulated RTT; the same N sessions are then run
one after another. Reports the wall time of both ways (interleaved rounds, minima) and whether every
session's tokens equal the unsplit model's (each session keeps its own KV cache).

    .venv/bin/python benchmarks/bench_sessions.py --sessions 4 --rtt-ms 20 --new-tokens 16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--rtt-ms", type=float, default=20.0)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    import torch

    from coinfer.models.loading import build_from_config, load_model
    from coinfer.models.shards import generate_greedy, shard_range
    from coinfer.runner import local
    from coinfer.runner.device import run_device_session

    torch.set_num_threads(1)
    cfg = dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_positions=128, vocab_size=101)
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(Path(tmp) / "gpt2")
        build_from_config(cfg, name="bench-sessions").model.save_pretrained(folder)
        model = load_model(folder)  # the server loads the same folder: the identities match
        srv = local.start_server(folder, 0, 1, 60.0, extra_args=["--max-sessions", str(args.sessions)])
        try:
            prompts = [torch.randint(0, 101, (1, 8), generator=torch.Generator().manual_seed(i))
                       for i in range(args.sessions)]
            refs = [generate_greedy([shard_range(model, 0, 6)], ids, args.new_tokens + 1).tolist() for ids in prompts]
            outputs: list[bool] = []

            def one(i: int) -> None:
                run = run_device_session(model, [0, 3, 6], [(srv.host, srv.port)], prompts[i], None,
                                         args.new_tokens, "fp32", 1, rtt_ms=args.rtt_ms, timeout_s=60.0)
                outputs.append(run.records[0].output.tolist() == refs[i])

            times: dict[str, list[float]] = {"concurrent": [], "sequential": []}
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                threads = [threading.Thread(target=one, args=(i,)) for i in range(args.sessions)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                times["concurrent"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(args.sessions):
                    one(i)
                times["sequential"].append(time.perf_counter() - t0)
        finally:
            local.stop_server(srv)
    result = {"sessions": args.sessions, "rtt_ms": args.rtt_ms, "new_tokens": args.new_tokens,
              "sessions_run": len(outputs), "tokens_identical_to_unsplit": all(outputs),
              "concurrent_min_s": round(min(times["concurrent"]), 3),
              "sequential_min_s": round(min(times["sequential"]), 3),
              "speedup": round(min(times["sequential"]) / min(times["concurrent"]), 2)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
