"""Sizes of what crosses a cut, computed from shapes (no torch: the planner uses it too)."""

from __future__ import annotations

WIRE_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
TOKEN_ID_BYTES = 8  # token ids travel as int64, as torch holds them


def activation_bytes(batch: int, tokens: int, hidden: int, wire_dtype: str) -> int:
    """Bytes of a (batch, tokens, hidden) activation on the wire.

    int8 carries one fp32 scale per token row (symmetric per-token quantisation), which is what
    `coinfer run` sends; the other dtypes are plain element arrays.

    Args:
        batch: Sequences in the batch.
        tokens: Tokens per sequence crossing now (prompt length, or 1 when decoding).
        hidden: Hidden size.
        wire_dtype: One of fp32, fp16, bf16, int8.

    Returns:
        The payload in bytes.
    """
    if wire_dtype not in WIRE_ELEMENT_BYTES:
        raise ValueError(f"unknown wire dtype {wire_dtype!r}")
    body = batch * tokens * hidden * WIRE_ELEMENT_BYTES[wire_dtype]
    scales = batch * tokens * 4 if wire_dtype == "int8" else 0
    return body + scales


def token_ids_bytes(batch: int, tokens: int) -> int:
    """Bytes of token ids for ``tokens`` tokens of each of ``batch`` sequences."""
    return batch * tokens * TOKEN_ID_BYTES
