"""The robustness profile: what a corrupted or compressed link does to the answer at each cut.

Written by ``coinfer channel``, read by ``coinfer plan --robustness`` (wire precision with the
cut, channel-state policies) and ``coinfer report``. No torch.

A *condition* is the wire precision the activation is sent in plus at most one channel
impairment applied to what arrives: element erasure with probability ``erasure_p`` (erased
elements arrive as zero, the adaptive-splitting paper's model) or additive white Gaussian noise at
``snr_db`` (signal power measured per transmitted tensor). Each (cut, condition) point is the mean
of ``draws`` seeded random draws with a confidence interval; deterministic conditions (clean,
wire precision alone) need one draw.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from coinfer.reports.common import Document, MachineInfo, ModelIdentity, Schema
from coinfer.reports.quality import PerplexityProtocol, TextRef
from coinfer.vocab import WireDtype

# History: 1 - first version.
ROBUSTNESS_SCHEMA_VERSION = 1

Impairment = Literal["none", "erasure", "awgn"]


class ChannelCondition(Schema):
    """How the activation crossing the cut is sent and what the channel does to it."""

    wire_dtype: WireDtype = Field(default="fp32", description="the wire precision (coinfer.vocab.WIRE_DTYPES)")
    impairment: Impairment = "none"
    erasure_p: float | None = Field(default=None, ge=0, le=1, description="erasure: probability an element arrives as 0")
    snr_db: float | None = Field(default=None, description="awgn: signal-to-noise ratio of the received tensor, dB")

    @model_validator(mode="after")
    def _one_parameter(self) -> ChannelCondition:
        if (self.impairment == "erasure") != (self.erasure_p is not None):
            raise ValueError("erasure_p is given exactly when the impairment is erasure")
        if (self.impairment == "awgn") != (self.snr_db is not None):
            raise ValueError("snr_db is given exactly when the impairment is awgn")
        return self

    @property
    def deterministic(self) -> bool:
        """No random draw changes the outcome (clean channel; wire quantization alone)."""
        return self.impairment == "none"

    def label(self) -> str:
        """Short human label, e.g. 'int8', 'fp32 erasure p=0.1', 'fp16 awgn 10 dB'."""
        if self.impairment == "erasure":
            return f"{self.wire_dtype} erasure p={self.erasure_p:g}"
        if self.impairment == "awgn":
            return f"{self.wire_dtype} awgn {self.snr_db:g} dB"
        return self.wire_dtype


class Estimate(Schema):
    """A mean over random draws with its confidence interval (equal to the mean for one draw)."""

    mean: float
    ci_low: float
    ci_high: float
    draws: int = Field(ge=1)


class RobustnessPoint(Schema):
    """The measured quality of one (cut, condition)."""

    cut: int = Field(ge=0, description="stages on the device, as in a plan (0 = all on server)")
    cut_name: str = Field(description="the last device stage, or 'server-only'")
    condition: ChannelCondition
    payload_bytes_per_token: int = Field(ge=0, description="bytes one token's activation costs on the wire")
    perplexity_ratio: Estimate | None = Field(default=None, description="decoders: perplexity over the clean model's")
    kl_nats: Estimate | None = Field(default=None, description="decoders: KL(clean || corrupted), nats per position")
    top1_agreement: Estimate | None = Field(default=None, description="decoders: share of positions whose top token is kept")
    pooled_cosine: Estimate | None = Field(default=None, description="encoders: cosine of pooled embeddings to the clean ones")
    output_rel_mse: Estimate = Field(description="E||y - y_hat||^2 / E||y||^2 of the final hidden states")


class RobustnessProfile(Document):
    """A versioned robustness profile (``coinfer channel``)."""

    kind: Literal["robustness_profile"] = "robustness_profile"
    schema_version: Literal[1] = ROBUSTNESS_SCHEMA_VERSION
    model: ModelIdentity
    machine: MachineInfo
    metric: Literal["perplexity_ratio", "pooled_cosine"] = Field(description="the quality figure budgets refer to")
    protocol: PerplexityProtocol | None = Field(default=None, description="decoders: how perplexity was measured")
    text: TextRef | None = Field(default=None, description="encoders: the evaluation text")
    clean_perplexity: float | None = Field(default=None, gt=0, description="decoders: the unsplit, clean model's")
    seed: int
    confidence: float = Field(default=0.95, gt=0, lt=1)
    cuts: list[int]
    points: list[RobustnessPoint]
    model_evaluations: int = Field(ge=0, description="forward passes of the model's server part that were run")
    notes: list[str] = Field(default_factory=list)
