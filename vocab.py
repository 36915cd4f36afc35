"""The words every room shares, each defined once: stage names, the cut's name, wire dtypes, positions.

Torch-free and import-free (the schemas and the planner use it): a profile, a prune report, a plan
and a run join on these names, so they must come from one place.

* Stages of a model of ``L`` blocks, in order: ``embed``, ``block.0`` .. ``block.{L-1}``, ``head``.
* Cut ``c`` = stages on the device, 0..L+2; its name is the last device stage, or ``server-only``.
* The activation crosses a cut as ``fp32``, ``fp16``, ``int8`` (per-token absmax) or ``int4``
  (grouped absmax) (:data:`WIRE_DTYPES`; the codec is :mod:`coinfer.models.channel`).
* Device weights are stored in one of :data:`WEIGHT_PRECISIONS`; a device shard runs on one of
  :data:`ENGINES`.
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
# Weight precision of a (device) shard's matrices: floating point, or weight-only integers with
# floating-point activations (int8 per output channel, int4 group-wise).
WeightPrecision = Literal["fp32", "bf16", "fp16", "int8", "int4"]
WEIGHT_PRECISIONS: tuple[WeightPrecision, ...] = ("fp32", "bf16", "fp16", "int8", "int4")
Engine = Literal["torch", "onnxruntime"]
ENGINES: tuple[Engine, ...] = ("torch", "onnxruntime")


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


def check_precision(value: str, option: str = "--precision") -> WeightPrecision:
    """``value`` when it is a weight precision.

    Raises:
        UserInputError: Anything else, naming ``option`` and the choices.
    """
    if value not in WEIGHT_PRECISIONS:
        raise UserInputError(f"{option} {value!r}: expected one of {', '.join(WEIGHT_PRECISIONS)}")
    return value  # type: ignore[return-value]


def parse_precisions(text: str, option: str = "--precision") -> list[WeightPrecision]:
    """``fp32,int8`` as a list of weight precisions, order kept, duplicates dropped.

    Raises:
        UserInputError: An unknown name, or none at all.
    """
    out: list[WeightPrecision] = []
    for part in text.split(","):
        name = part.strip()
        if name and check_precision(name, option) not in out:
            out.append(name)  # type: ignore[arg-type]
    if not out:
        raise UserInputError(f"{option}: give at least one of {', '.join(WEIGHT_PRECISIONS)}")
    return out


def check_engine(value: str, option: str = "--engine") -> Engine:
    """``value`` when it is an engine name (torch or onnxruntime).

    Raises:
        UserInputError: Anything else.
    """
    if value not in ENGINES:
        raise UserInputError(f"{option} {value!r}: expected {' or '.join(ENGINES)}")
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


# -- defaults every command and library entry point shares ---------------------------------------
DEFAULT_MODEL = "gpt2"
DEFAULT_PROMPT_TOKENS = 128
DEFAULT_DECODE_STEPS = 32  # decoders; m steps after the prefill give m + 1 generated tokens
# Prompt plus decode steps, at most, where a model states no positions of its own: beyond any
# context window in use (2^20 tokens), and small enough that per-step tables fit in memory.
MAX_CONTEXT_TOKENS = 1 << 20
