"""The pruning report: what each pruning ratio removed, cost and gained (`coinfer prune`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from coinfer.reports.common import Contention, Document, MachineInfo, ModelIdentity, Schema
from coinfer.reports.quality import QualityFigures
from coinfer.vocab import WeightPrecision


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
    param_distortion: float = Field(
        ge=0, description="||W - W_hat||^2 / ||W||^2 over all the block's parameters, pruned entries as 0"
    )


class Speedup(Schema):
    """Measured speed-up, original and pruned interleaved in one run (medians)."""

    measured_stages: list[str] = Field(description="the stages timed: the pruned scope's shard")
    prefill_tokens: int = Field(ge=1)
    repeats: int = Field(ge=1)
    prefill_measured: float = Field(gt=0, description="original over pruned median prefill time")
    decode_measured: float | None = Field(default=None, gt=0, description="decoders: one token over the prompt's KV cache")
    prefill_flops_ratio: float = Field(gt=0, description="ideal speed-up: FLOPs before over after")
    decode_flops_ratio: float | None = Field(default=None, gt=0)
    realised_over_ideal: float = Field(gt=0, description="prefill_measured / prefill_flops_ratio")
    decode_realised_over_ideal: float | None = Field(default=None, gt=0)
    original_prefill_ms: float = Field(ge=0)
    pruned_prefill_ms: float = Field(ge=0)
    original_decode_ms: float | None = Field(default=None, ge=0)
    pruned_decode_ms: float | None = Field(default=None, ge=0)
    max_cv: float = Field(ge=0, description="largest coefficient of variation of the timed samples")
    contention: Contention | None = Field(default=None, description="was the machine quiet while timing (coinfer.quiet)")


class Distortion(Schema):
    """Output and parameter distortion of one ratio."""

    output_rel_mse: float = Field(ge=0, description="E||y - y_hat||^2 / E||y||^2 of final hidden states")
    param_distortion: float = Field(ge=0, description="over the pruned scope")
    kl_next_token: float | None = Field(default=None, ge=0, description="decoders, nats")
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    pooled_cosine: float | None = Field(default=None, description="encoders: mean cosine of pooled embeddings")
    bound_ratio: float | None = Field(default=None, description="output over parameter distortion")
    output_rel_mse_heldout: float | None = Field(
        default=None, ge=0, description="D_y on the held-out half of the calibration windows"
    )


class ShardFile(Schema):
    """An exported shard file, verified by its sha256 before loading."""

    role: Literal["device", "server"]
    format: Literal["safetensors", "onnx", "onnx-data", "json"] = Field(
        description="json: the shard config to load with coinfer.models.shard_io.load_shard"
    )
    path: str = Field(description="relative to the export folder")
    sha256: str
    size_bytes: int = Field(ge=0)


class RatioResult(Schema):
    """Everything measured at one requested pruning ratio."""

    requested_ratio: float = Field(ge=0, lt=1)
    achieved_param_ratio: float = Field(ge=0, le=1, description="fraction of scope parameters removed")
    achieved_prunable_ratio: float | None = Field(
        default=None, ge=0, le=1,
        description="fraction of the scope's prunable parameters (query heads, MLP channels) removed: what the ratio asks for",
    )
    achieved_head_ratio: float = Field(default=0.0, ge=0, le=1, description="fraction of scope query heads removed")
    achieved_channel_ratio: float = Field(default=0.0, ge=0, le=1, description="fraction of scope MLP channels removed")
    pruned_anything: bool
    blocks: list[BlockPruning]
    params_before: int = Field(ge=0, description="parameters of the blocks in scope")
    params_after: int = Field(ge=0)
    model_params_before: int = Field(default=0, ge=0, description="whole model")
    model_params_after: int = Field(default=0, ge=0)
    prefill_flops_before: float = Field(ge=0, description="blocks in scope, one calibration window (seq_len tokens)")
    prefill_flops_after: float = Field(ge=0)
    speedup: Speedup | None = Field(default=None, description="None when nothing was removed or speed not measured")
    distortion: Distortion
    shards: list[ShardFile] = Field(default_factory=list)
    onnx_max_abs_diff: dict[str, float] = Field(default_factory=dict, description="per seq len, vs torch")
    quality: QualityFigures | None = Field(
        default=None, description="decoders: perplexity on the evaluation text (disjoint from the calibration text), "
                                  "KL to and top-1 agreement with the dense model, under the report's protocol")
    fit_output_rel_mse: float | None = Field(default=None, ge=0, description="D_y on the first half (fits C)")
    notes: list[str] = Field(default_factory=list)


class CurvePoint(Schema):
    """A point of a reference curve."""

    x: float
    distortion: float


class LaplaceFit(Schema):
    """Laplace fit of the scope's weights and the SCIENCE.md reference curves."""

    lam: float = Field(gt=0, description="lambda = 1 / mean|w| over the scope's matrix weights")
    variance: float = Field(ge=0, description="2 / lambda^2")
    empirical_variance: float = Field(ge=0)
    magnitude_pruning_curve: list[CurvePoint] = Field(
        description="x = pruning fraction rho; distortion relative to sigma^2 (comparable to D_w)"
    )
    shannon_lower_bound: list[CurvePoint] = Field(description="x = bits per weight R; relative to sigma^2")


class CalibrationInfo(Schema):
    """The text used for importance, distortion and perplexity."""

    source: str = Field(description="a named text (e.g. 'shakespeare-calib', 'builtin') or the user's file path")
    sha256: str
    num_sequences: int = Field(ge=1)
    tokens: int = Field(ge=1)
    tokenizer: Literal["model", "bytes"] = Field(
        default="model", description="bytes: UTF-8 bytes modulo the vocabulary (model ships no tokenizer)"
    )


class PruneReport(Document):
    """A versioned pruning report."""

    # Versions: 1 the first; 2 adds each speed-up's contention record (issue 14); 3 adds the recipe
    # (allocation, compensation, block sensitivities), the achieved fraction of prunable parameters
    # and the quality on an evaluation text (dense_quality, results[].quality) (issue 9). Older files
    # load as they are (every added field is optional).
    kind: Literal["prune_report"] = "prune_report"
    schema_version: Literal[1, 2, 3] = 3
    READABLE_SCHEMA_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2, 3)
    model: ModelIdentity
    machine: MachineInfo
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(ge=1)
    importance: Literal["magnitude", "activation", "fluctuation", "taylor"]
    allocation: Literal["uniform", "sensitivity", "global", "standardized"] | None = Field(
        default=None, description="how the ratio was spread over blocks and heads/channels (None: reports from before allocations)"
    )
    compensation: Literal["none", "bias", "lstsq"] | None = Field(
        default=None, description="how removed units were compensated (None: none, before it existed)"
    )
    block_sensitivity: dict[str, float] | None = Field(
        default=None, description="allocation 'sensitivity': measured damage of pruning each block alone"
    )
    scope: Literal["all", "device"]
    split: int | None = Field(default=None, ge=0, description="device blocks when scope is 'device'")
    calibration: CalibrationInfo
    dense_quality: QualityFigures | None = Field(
        default=None, description="decoders: the unpruned model under the same protocol as results[].quality")
    results: list[RatioResult]
    empirical_c: float | None = Field(default=None, description="max over ratios of D_y / D_w")
    empirical_c_fit: float | None = Field(
        default=None, description="C from the first half of the calibration windows only"
    )
    bound_holds: bool | None = Field(
        default=None,
        description="D_y <= C_fit * D_w on the held-out half at every ratio (and D_y ~ 0 where D_w = 0)",
    )
    laplace: LaplaceFit | None = None
    export_dir: str | None = None
    torch_pruning_version: str | None = None
    seq_len: int | None = Field(default=None, ge=1, description="tokens per calibration window and timed prompt")
    notes: list[str] = Field(default_factory=list)


class ShardBlockShape(Schema):
    """The (pruned) shape of one block, enough to rebuild it before loading its weights."""

    q_heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    mlp_channels: int = Field(ge=1)


class QuantizedModule(Schema):
    """A matrix stored at a weight-only precision (see :mod:`coinfer.precision.quant` for the formats)."""

    precision: WeightPrecision
    in_features: int = Field(ge=1)
    out_features: int = Field(ge=1)
    bias: bool
    group_size: int | None = Field(default=None, description="int4: input columns per (scale, zero)")


class ShardQuantization(Schema):
    """The weight precision of a shard's matrices; embeddings and norms stay fp32."""

    precision: WeightPrecision
    group_size: int | None = None
    activation_dtype: str = Field(default="bf16", description="what the matmuls read; inputs are cast to it and outputs back")
    modules: dict[str, QuantizedModule] = Field(description="module path in the model -> its stored shape")


class ShardConfig(Document):
    """Everything needed to rebuild an exported shard exactly (no pickles: weights are safetensors)."""

    kind: Literal["shard_config"] = "shard_config"
    # History: 1 - fp32 (possibly pruned) shards; 2 - adds ``quantization`` (weight-only
    # precisions). Version 1 files are still read (they have no quantization).
    schema_version: Literal[1, 2] = 2
    role: Literal["device", "server"]
    model: ModelIdentity
    hf_config: dict = Field(description="the transformers config (unpruned architecture)")
    module_layout: str = Field(description="family module layout, e.g. gpt2 'split_qkv_linear'")
    start: int = Field(ge=0, description="first stage position (0 = embed)")
    end: int = Field(ge=0, description="one past the last stage position")
    logits_to_keep: int = Field(ge=0)
    stages: list[str]
    blocks: dict[str, ShardBlockShape] = Field(description="block index -> pruned shape")
    requested_ratio: float = Field(ge=0, lt=1)
    scope: Literal["all", "device"]
    dtype: str = Field(description="floating dtype of the tensors, or the precision of the quantized matrices")
    quantization: ShardQuantization | None = Field(default=None, description="set when the matrices are quantized")
    weights_file: str
    weights_sha256: str
    weights_size_bytes: int = Field(ge=0)
    tensor_shapes: dict[str, list[int]]
