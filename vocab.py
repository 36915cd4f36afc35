"""The words every room shares, each defined once: stage names, the cut's name, wire dtypes, positions.

Torch-free and import-free (the schemas and the planner use it): a profile, a prune report, a plan
and a run join on these names, so they must come from one place.

* Stages of a model of ``L`` blocks, in order: ``embed``, ``block.0`` .. ``block.{L-1}``, ``head``.
* Cut ``c`` = stages on the device, 0..L+2; its name is the last device stage, or ``server-only``.
* The activation crosses a cut as ``fp32``, ``fp16``, ``int8`` (per-token absmax) or ``int4``
  (grouped absmax) (:data:`WIRE_DTYPES`; the codec is :mod:`coinfer.models.channel`).
"""

from __future__ import annotations

from typing import Any, Literal

from coinfer.errors import UserInputError

EMBED = "embed"
HEAD = "head"
SERVER_ONLY = "server-only"
_BLOCK_PREFIX = "block."

StageKind = Literal["embed", "block", "head"]
WireDtype = Literal["fp32", "fp16", "int8", "int4"]
WIRE_DTYPES: tuple[WireDtype, ...] = ("fp32", "fp16", "int8", "int4")


def block_name(index: int) -> str:
    """The stage name of block ``index``: ``block.<index>``."""
    return f"{_BLOCK_PREFIX}{index}"


def block_index(name: str) -> int | None:
    """The block number in a stage name (``block.3`` -> 3); None for ``embed`` and ``head``."""
    return int(name[len(_BLOCK_PREFIX):]) if name.startswith(_BLOCK_PREFIX) else None


def stage_kind(name: str) -> StageKind:
    """``embed``, ``block`` or ``head`` for a stage name."""
    if name in (EMBED, HEAD):
        return name  # type: ignore[return-value]
    return "block"


def stage_names(num_blocks: int) -> list[str]:
    """embed, block.0 .. block.{L-1}, head."""
    return [EMBED, *[block_name(i) for i in range(num_blocks)], HEAD]


def cut_name(cut: int, num_blocks: int) -> str:
    """'server-only' for cut 0, else the name of the last stage on the device."""
    return SERVER_ONLY if cut == 0 else stage_names(num_blocks)[cut - 1]


def check_wire_dtype(value: str, option: str = "--wire-dtype") -> WireDtype:
    """``value`` when it is a wire dtype.

    Raises:
        UserInputError: Anything else, naming the option (``--wire-dtype`` unless told) and the choices.
    """
    if value not in WIRE_DTYPES:
        raise UserInputError(f"{option} {value!r}: expected {', '.join(WIRE_DTYPES[:-1])} or {WIRE_DTYPES[-1]}")
    return value  # type: ignore[return-value]


def max_positions(config: Any) -> int | None:
    """The longest sequence a model's config allows, or None when it states none.

    Hugging Face names it ``max_position_embeddings`` (GPT-2: ``n_positions``, which its config
    also answers to as ``max_position_embeddings``); a missing or non-positive value means unknown.
    """
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(config, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None
