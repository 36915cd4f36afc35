"""Sizes of what crosses a cut, computed from shapes (no torch: the planner uses it too).

The wire formats themselves (what these bytes hold) are defined in :mod:`coinfer.models.channel`.
"""

from __future__ import annotations

WIRE_ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
TOKEN_ID_BYTES = 8  # token ids travel as int64, as torch holds them
INT8_SCALE_BYTES = 4  # int8: one fp32 scale per token row
INT4_GROUP = 32  # int4: elements of a token row that share one scale
INT4_SCALE_BYTES = 2  # int4: one fp16 scale per group
_INT4_GROUP_BYTES = INT4_GROUP // 2 + INT4_SCALE_BYTES  # two 4-bit codes per byte, then the scale


def int4_groups(hidden: int) -> int:
    """Groups of :data:`INT4_GROUP` per token row (the last one zero-padded)."""
    return -(-hidden // INT4_GROUP)


def activation_bytes(batch: int, tokens: int, hidden: int, wire_dtype: str) -> int:
    """Bytes of a (batch, tokens, hidden) activation on the wire.

    int8 carries one fp32 scale per token row (symmetric per-token quantisation); int4 packs two
    codes per byte in groups of 32 along the hidden size (the last group zero-padded), each group
    with one fp16 scale: 18 bytes per group. That is what `coinfer run` sends; the other dtypes
    are plain element arrays.

    Args:
        batch: Sequences in the batch.
        tokens: Tokens per sequence crossing now (prompt length, or 1 when decoding).
        hidden: Hidden size.
        wire_dtype: One of fp32, fp16, bf16, int8, int4.

    Returns:
        The payload in bytes.
    """
    rows = batch * tokens
    if wire_dtype == "int4":
        return rows * int4_groups(hidden) * _INT4_GROUP_BYTES
    if wire_dtype not in WIRE_ELEMENT_BYTES:
        raise ValueError(f"unknown wire dtype {wire_dtype!r}")
    scales = rows * INT8_SCALE_BYTES if wire_dtype == "int8" else 0
    return rows * hidden * WIRE_ELEMENT_BYTES[wire_dtype] + scales


def token_ids_bytes(batch: int, tokens: int) -> int:
    """Bytes of token ids for ``tokens`` tokens of each of ``batch`` sequences."""
    return batch * tokens * TOKEN_ID_BYTES
