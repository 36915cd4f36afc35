"""The pruning report: what each pruning ratio removed, cost and gained (`coinfer prune`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from coinfer.reports.common import MachineInfo, ModelIdentity, Schema, coinfer_version


class BlockPruning(Schema):
    """What pruning did to one block."""

    name: str = Field(description="stage name, e.g. 'block.3'")
    params_before: int = Field(ge=0)
    params_after: int = Field(ge=0)
    heads_before: int = Field(ge=0)
    heads_after: int = Field(ge=0)
    mlp_channels_before: int = Field(ge=0)
    mlp_channels_after: int = Field(ge=0)
    prefill_flops_before: float = Field(ge=0)
    prefill_flops_after: float = Field(ge=0)
    param_distortion: float = Field(ge=0, description="||W - W_hat||^2 / ||W||^2, pruned entries as 0")


class Speedup(Schema):
    """Measured speed-up, original and pruned interleaved in one run."""

    prefill_measured: float = Field(gt=0)
    decode_measured: float | None = Field(default=None, gt=0)
    prefill_flops_ratio: float = Field(gt=0, description="ideal speed-up: FLOPs before over after")
    realised_over_ideal: float = Field(gt=0)
    original_prefill_ms: float = Field(ge=0)
    pruned_prefill_ms: float = Field(ge=0)


class Distortion(Schema):
    """Output and parameter distortion of one ratio."""

    output_rel_mse: float = Field(ge=0, description="E||y - y_hat||^2 / E||y||^2 of final hidden states")
    param_distortion: float = Field(ge=0, description="over the pruned scope")
    kl_next_token: float | None = Field(default=None, ge=0, description="decoders, nats")
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    pooled_cosine: float | None = Field(default=None, description="encoders: mean cosine of pooled embeddings")
    bound_ratio: float | None = Field(default=None, description="output over parameter distortion")


class ShardFile(Schema):
    """An exported shard file, verified by its sha256 before loading."""

    role: Literal["device", "server"]
    format: Literal["safetensors", "onnx", "onnx-data", "json"]
    path: str = Field(description="relative to the export folder")
    sha256: str
    size_bytes: int = Field(ge=0)


class RatioResult(Schema):
    """Everything measured at one requested pruning ratio."""

    requested_ratio: float = Field(ge=0, lt=1)
    achieved_param_ratio: float = Field(ge=0, le=1, description="fraction of scope parameters removed")
    pruned_anything: bool
    blocks: list[BlockPruning]
    params_before: int = Field(ge=0)
    params_after: int = Field(ge=0)
    prefill_flops_before: float = Field(ge=0)
    prefill_flops_after: float = Field(ge=0)
    speedup: Speedup | None = None
    distortion: Distortion
    shards: list[ShardFile] = Field(default_factory=list)
    onnx_max_abs_diff: dict[str, float] = Field(default_factory=dict, description="per seq len, vs torch")
    notes: list[str] = Field(default_factory=list)


class CurvePoint(Schema):
    """A point of a reference curve."""

    x: float
    distortion: float


class LaplaceFit(Schema):
    """Laplace fit of the scope's weights and the SCIENCE.md reference curves."""

    lam: float = Field(gt=0, description="lambda = 1 / mean|w|")
    variance: float = Field(ge=0, description="2 / lambda^2")
    empirical_variance: float = Field(ge=0)
    magnitude_pruning_curve: list[CurvePoint] = Field(description="x = pruning fraction rho")
    shannon_lower_bound: list[CurvePoint] = Field(description="x = bits per weight R")


class CalibrationInfo(Schema):
    """The text used for importance, distortion and perplexity."""

    source: str = Field(description="'builtin' or the user's file path")
    sha256: str
    num_sequences: int = Field(ge=1)
    tokens: int = Field(ge=1)


class PruneReport(Schema):
    """A versioned pruning report."""

    kind: Literal["prune_report"] = "prune_report"
    schema_version: Literal[1] = 1
    coinfer_version: str = Field(default_factory=coinfer_version)
    created_utc: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: ModelIdentity
    machine: MachineInfo
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(ge=1)
    importance: Literal["magnitude", "activation", "taylor"]
    scope: Literal["all", "device"]
    split: int | None = Field(default=None, ge=0, description="device blocks when scope is 'device'")
    calibration: CalibrationInfo
    results: list[RatioResult]
    empirical_c: float | None = Field(default=None, description="max over ratios of D_y / D_w")
    bound_holds: bool | None = None
    laplace: LaplaceFit | None = None
    export_dir: str | None = None
    notes: list[str] = Field(default_factory=list)
