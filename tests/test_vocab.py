"""The shared words: stage names, cut names, wire dtypes and a model's positions, from one module."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coinfer.errors import UserInputError
from coinfer.vocab import (
    block_index,
    block_name,
    check_wire_dtype,
    cut_name,
    max_positions,
    stage_kind,
    stage_names,
)


def test_stage_and_cut_names():
    assert stage_names(2) == ["embed", "block.0", "block.1", "head"]
    assert stage_names(0) == ["embed", "head"]
    assert [cut_name(c, 2) for c in range(5)] == ["server-only", "embed", "block.0", "block.1", "head"]
    assert block_name(7) == "block.7" and block_index("block.12") == 12
    assert block_index("embed") is None and block_index("head") is None
    assert [stage_kind(n) for n in stage_names(1)] == ["embed", "block", "head"]


def test_wire_dtype_check():
    assert check_wire_dtype("int8") == "int8" and check_wire_dtype("int4") == "int4"
    for bad in ("bf16", "FP16", "int2", ""):
        with pytest.raises(UserInputError, match=r"--wire-dtype .*: expected fp32, fp16, int8 or int4"):
            check_wire_dtype(bad)
    with pytest.raises(UserInputError, match=r"^--wire 'int3': expected"):
        check_wire_dtype("int3", "--wire")


def test_max_positions_reads_either_key_and_never_invents_one():
    from transformers import GPT2Config, LlamaConfig

    assert max_positions(GPT2Config(n_positions=77)) == 77
    assert max_positions(LlamaConfig(max_position_embeddings=300)) == 300
    assert max_positions(SimpleNamespace(n_positions=64)) == 64
    assert max_positions(SimpleNamespace()) is None
    assert max_positions(SimpleNamespace(max_position_embeddings=None, n_positions=0)) is None
