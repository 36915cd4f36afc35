"""The precision report: per weight precision (x pruning ratio), per-stage device latency and quality.

Written by ``coinfer quantize``. The planner will read it to choose the device's weight precision
with the cut: every result carries the per-stage prefill and decode latency of the stages in
scope, measured interleaved with the fp32 unpruned model in the same run, so speed-ups are ratios
taken under the same machine load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coinfer.reports.common import Document, MachineInfo, ModelIdentity, Schema
from coinfer.reports.prune import CalibrationInfo, ShardFile
from coinfer.vocab import Engine, WeightPrecision


class EvalProtocol(Schema):
    """How the quality figures were computed; printed with every figure."""

    text: str = Field(description="'shakespeare-eval' (Hamlet) or the user's file")
    text_source: str
    text_sha256: str = Field(description="of the text as used (Gutenberg header stripped)")
    tokenizer: Literal["model", "bytes"]
    tokens: int = Field(ge=1, description="text tokens evaluated")
    window_tokens: int = Field(ge=2)
    stride_tokens: int = Field(ge=1, description="text tokens between window starts (non-overlapping)")
    windows: int = Field(ge=1)
    special_tokens: Literal["none", "cls_sep"] = Field(description="decoders: no BOS; encoders: [CLS] ... [SEP]")
    first_token_scored: bool = Field(default=False, description="decoders: each window's first token is not scored")
    reference: str = Field(default="fp32, unpruned", description="what KL, agreement and ratios compare with")
    calibration_disjoint: bool | None = Field(
        default=None, description="pruning's calibration text shares no text with the evaluation text (None: no pruning)"
    )

    def describe(self) -> str:
        """One line for the terminal."""
        bos = "no BOS" if self.special_tokens == "none" else "[CLS]/[SEP] per window"
        return (f"{self.text} ({self.text_source}, sha256 {self.text_sha256[:12]}), {self.tokens} {self.tokenizer} tokens "
                f"in {self.windows} windows of {self.window_tokens} (stride {self.stride_tokens}), {bos}; "
                f"against {self.reference}")


class Quality(Schema):
    """Quality of one variant against the fp32 unpruned model on the protocol's windows."""

    output_rel_mse: float = Field(ge=0, description="E||y - y_fp32||^2 / E||y_fp32||^2 of the final hidden states")
    perplexity: float | None = Field(default=None, gt=0, description="decoders")
    perplexity_ratio: float | None = Field(default=None, gt=0, description="over the fp32 unpruned perplexity")
    kl_next_token_nats: float | None = Field(default=None, ge=0, description="mean KL(p_fp32 || p), decoders")
    top1_agreement: float | None = Field(default=None, ge=0, le=1, description="next-token argmax equal to fp32's")
    pooled_cosine: float | None = Field(default=None, description="encoders: mean cosine of mean-pooled embeddings")


class StageLatency(Schema):
    """One stage at one precision (x ratio): medians over interleaved repeats."""

    stage: str = Field(description="'embed', 'block.i' or 'head'")
    weight_bytes: int | None = Field(default=None, ge=0, description="the stage's weights at this precision")
    prefill_ms: float = Field(ge=0)
    decode_ms: float | None = Field(default=None, ge=0, description="decoders: one token over the KV cache")
    prefill_speedup: float | None = Field(default=None, gt=0, description="fp32 unpruned median over this one")
    decode_speedup: float | None = Field(default=None, gt=0)


class PrecisionResult(Schema):
    """One weight precision at one pruning ratio, on one engine."""

    precision: WeightPrecision
    pruning_ratio: float = Field(ge=0, lt=1, description="0: unpruned")
    engine: Engine = "torch"
    supported: bool
    unsupported_reason: str | None = None
    kernel: str | None = Field(default=None, description="what runs the matrices, in words")
    quantized_modules: int = Field(default=0, ge=0, description="matrices replaced in the scope")
    weight_bytes: int | None = Field(default=None, ge=0, description="the scope's weights at this precision")
    stages: list[StageLatency] = Field(default_factory=list, description="the timed stages, in order")
    prefill_ms: float | None = Field(default=None, ge=0, description="sum of the stages' medians")
    decode_ms: float | None = Field(default=None, ge=0)
    prefill_speedup: float | None = Field(default=None, gt=0, description="fp32 unpruned sum over this sum")
    decode_speedup: float | None = Field(default=None, gt=0)
    max_cv: float | None = Field(default=None, ge=0, description="largest coefficient of variation of the stage samples")
    quality: Quality | None = None
    shards: list[ShardFile] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class LoadSample(Schema):
    """The machine's load when a measurement started and ended (1-minute load average)."""

    load_average_start: float | None = None
    load_average_end: float | None = None
    cpu_count: int | None = None


class PrecisionReport(Document):
    """A versioned precision report (``coinfer quantize``)."""

    kind: Literal["precision_report"] = "precision_report"
    schema_version: Literal[1] = 1
    model: ModelIdentity
    machine: MachineInfo
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(ge=1)
    scope: Literal["all", "device"]
    split: int | None = Field(default=None, ge=0, description="device blocks when scope is 'device'")
    group_size: int = Field(description="int4 group width (input columns per scale/zero)")
    timed_stages: list[str] = Field(description="the stages timed (the scope's shard: embed .. last block, head if in scope)")
    prefill_tokens: int = Field(ge=1)
    decode_context_tokens: int | None = Field(default=None, ge=1, description="KV cache length of a timed decode step")
    repeats: int = Field(ge=1)
    protocol: EvalProtocol | None = Field(default=None, description="None: quality not measured")
    reference_perplexity: float | None = Field(default=None, description="fp32 unpruned, under the protocol")
    importance: str | None = Field(default=None, description="pruning importance when ratios > 0 were asked")
    calibration: CalibrationInfo | None = None
    load: LoadSample = Field(default_factory=LoadSample)
    export_dir: str | None = None
    results: list[PrecisionResult]
    notes: list[str] = Field(default_factory=list)
