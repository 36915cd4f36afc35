"""What `coinfer models` and `coinfer inspect` print with ``--json``: the model list and a model's cuts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coinfer.reports.common import Document, ModelIdentity, Schema


class ModelEntry(Schema):
    """One name ``--model`` accepts."""

    name: str
    weights: Literal["real", "random"]
    description: str


class ModelList(Document):
    """Every model name ``--model`` accepts besides a local Hugging Face folder (`coinfer models`)."""

    kind: Literal["model_list"] = "model_list"
    schema_version: Literal[1] = 1
    models: list[ModelEntry]


class StageCut(Schema):
    """One stage's weights and what a cut right after it sends."""

    name: str = Field(description="stage name: embed, block.0 .. block.N-1, head")
    param_bytes: int = Field(ge=0, description="the stage's floating-point weights")
    cut_shape: list[int] = Field(description="shape of the activation crossing a cut after it; [] after head")
    prefill_payload_bytes: int = Field(ge=0, description="at the wire dtype, for the whole prompt")
    per_token_payload_bytes: int | None = Field(default=None, ge=0, description="one decode step; None for encoders")


class SplitCheck(Schema):
    """The result of ``--verify K``."""

    blocks: int = Field(ge=0, description="device blocks K of the split checked")
    max_abs_diff: float = Field(ge=0, description="max |split - unsplit| over outputs (and logits of decode steps)")


class Inspection(Document):
    """A model's stages, their weights and the bytes crossing each possible cut (`coinfer inspect`)."""

    kind: Literal["inspection"] = "inspection"
    schema_version: Literal[1] = 1
    model: ModelIdentity
    batch: int = Field(ge=1)
    prompt_tokens: int = Field(ge=1)
    wire_dtype: Literal["fp32", "fp16", "int8"]
    input_payload_bytes: int = Field(ge=0, description="token ids sent when everything runs on the server")
    stages: list[StageCut]
    verify: SplitCheck | None = None
