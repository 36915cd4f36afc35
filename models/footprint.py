"""How much memory a model and a request need, by estimate, and whether this machine has it.

Asked before anything large is allocated: a ``--batch 1000000000`` or a config declaring a billion
hidden units is refused in one line instead of being killed by the kernel (or swapping the machine
to a halt). The estimate counts what must exist at once — weights, the KV cache of the longest
context, one block's prefill activations and the attention scores of one block — and leaves out
what varies by kernel (workspaces, allocator slack): it errs low, so a refusal is never a false alarm.

Torch-free: it reads a transformers config object (or anything with the same attributes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from coinfer.errors import UserInputError
from coinfer.units import fmt_size

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _size(config: Any, *names: str, default: int = 0) -> int:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


def dims(config: Any) -> dict[str, int]:
    """The sizes the estimate uses: layers, hidden, heads, kv_heads, mlp, vocab, positions."""
    hidden = _size(config, "hidden_size", "n_embd")
    heads = _size(config, "num_attention_heads", "n_head", default=1)
    return dict(
        layers=_size(config, "num_hidden_layers", "n_layer"),
        hidden=hidden,
        heads=heads,
        kv_heads=_size(config, "num_key_value_heads", default=heads),
        mlp=_size(config, "intermediate_size", "n_inner", default=4 * hidden),
        vocab=_size(config, "vocab_size"),
        positions=_size(config, "max_position_embeddings", "n_positions"),
    )


def parameters(config: Any) -> int:
    """About how many parameters the config describes (embeddings, attention and MLP of every block)."""
    d = dims(config)
    h, head_dim = d["hidden"], d["hidden"] // max(1, d["heads"])
    attention = 2 * h * h + 2 * h * d["kv_heads"] * head_dim
    mlp = 2 * h * d["mlp"]
    return d["vocab"] * h + d["positions"] * h + d["layers"] * (attention + mlp)


def request_bytes(config: Any, *, batch: int, tokens: int, context: int, dtype: str = "fp32") -> int:
    """Memory beyond the weights for one request: KV cache at ``context`` plus one block's prefill.

    Args:
        config: The model's config.
        batch: Sequences per request.
        tokens: Prompt tokens (the prefill).
        context: The longest KV-cache context (prompt plus generated tokens).
        dtype: fp32, fp16 or bf16.
    """
    d, e = dims(config), _BYTES.get(dtype, 4)
    head_dim = d["hidden"] // max(1, d["heads"])
    kv = 2 * d["layers"] * d["kv_heads"] * head_dim * batch * max(context, tokens) * e
    activations = batch * tokens * (4 * d["hidden"] + d["mlp"]) * e
    scores = batch * d["heads"] * tokens * tokens * e
    return kv + activations + scores


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, bounded by a cgroup limit; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 1 << 60:
                found.append(int(limit) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return max(0, min(found)) if found else None


def check_fits(need_bytes: int, what: str, available: int | None = None) -> None:
    """Refuse work that cannot fit in memory, before allocating it.

    Args:
        need_bytes: The estimate.
        what: What needs it, e.g. '--batch 1000000000 x 128 tokens'.
        available: Bytes available (None: this machine's, from :func:`available_bytes`).

    Raises:
        UserInputError: ``need_bytes`` exceeds what is available.
    """
    available = available_bytes() if available is None else available
    if available is not None and need_bytes > available:
        raise UserInputError(f"{what} needs about {fmt_size(need_bytes, digits=3)} of memory; "
                             f"{fmt_size(available, digits=3)} is available here")


def check_request(config: Any, *, batch: int, tokens: int, context: int, dtype: str = "fp32",
                  weights_bytes: int = 0, available: int | None = None) -> None:
    """Refuse a request whose KV cache and activations (plus ``weights_bytes`` not yet in memory)
    cannot fit; see :func:`request_bytes` and :func:`check_fits`.

    Raises:
        UserInputError: It cannot fit, naming the batch and prompt.
    """
    need = request_bytes(config, batch=batch, tokens=tokens, context=context, dtype=dtype) + weights_bytes
    check_fits(need, f"--batch {batch} x --prompt-tokens {tokens} (KV cache to {max(context, tokens)} tokens)",
               available)
