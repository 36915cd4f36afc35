"""The robustness profile: what a corrupted or compressed link does to the answer at each cut.

Written by ``coinfer channel``, read by ``coinfer plan --robustness`` (wire precision with the
cut, channel-state policies) and ``coinfer report``. No torch.

A *condition* is the wire precision the activation is sent in plus at most one channel
impairment applied to what arrives: element erasure with probability ``erasure_p`` (erased
elements arrive as zero, the adaptive-splitting paper's model) or additive white Gaussian noise at
``snr_db`` (signal power measured per token row of the transmitted tensor, i.e. per decode-step
message; :mod:`coinfer.models.channel` defines both exactly). Each (cut, condition) point is the
mean of ``draws`` seeded random draws with a Student-t confidence interval; deterministic
conditions (clean, wire precision alone) need one draw.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
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

    @classmethod
    def of(cls, values: Sequence[float], confidence: float = 0.95) -> Estimate:
        """The mean of ``values`` with its two-sided Student-t interval at ``confidence``.

        ``mean ± t_{(1 + confidence) / 2, n - 1} · s / sqrt(n)`` with ``s`` the sample standard
        deviation; one value gives a zero-width interval.
        """
        n = len(values)
        if n == 0:
            raise ValueError("an estimate needs at least one value")
        mean = math.fsum(values) / n
        if n == 1:
            return cls(mean=mean, ci_low=mean, ci_high=mean, draws=1)
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = student_t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
        return cls(mean=mean, ci_low=mean - half, ci_high=mean + half, draws=n)


@functools.lru_cache(maxsize=64)
def student_t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom.

    Bisection on the CDF, which is ``1/2`` plus the integral of the density from 0 (Simpson's rule
    after the substitution ``x = tan(u)``, whose integrand is smooth and bounded): accurate to
    about 1e-9, no scipy.
    """
    if not 0.5 < q < 1 or df < 1:
        raise ValueError("need 0.5 < q < 1 and df >= 1")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:
        # density(tan u) * sec^2(u) du over u in [0, atan t]
        steps, top = 2000, math.atan(t)
        h = top / steps

        def f(u: float) -> float:
            x = math.tan(u)
            return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df)) / math.cos(u) ** 2

        total = f(0.0) + f(top) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
        return 0.5 + total * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < q:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
    return (lo + hi) / 2


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
