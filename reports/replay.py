"""Step-by-step replay of a plan's policy and its baselines over a channel trace (``coinfer plan --trace``).

The plan holds the summary per method (:class:`coinfer.reports.plan.MethodResult`); this file, written
with ``--replay-out``, holds every step. No torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coinfer.reports.common import Document, ModelIdentity, Schema
from coinfer.reports.plan import InputFile, MethodResult

# History: 1 - first version.
REPLAY_SCHEMA_VERSION = 1


class MethodSteps(Schema):
    """One method's choice and outcome at every step (columns, one entry per step)."""

    method: str
    cut: list[int]
    wire_dtype: list[str | None]
    latency_ms: list[float] = Field(description="switching delay included on the steps that switched")
    energy_j: list[float]
    quality: list[float | None] = Field(description="mean figure; None: unknown")
    reward: list[float | None] = Field(description="the paper's R; None: quality unknown")
    switched: list[bool]
    violation: list[bool]


class ReplayReport(Document):
    """A versioned replay: the trace's states and each method's steps."""

    kind: Literal["replay"] = "replay"
    schema_version: Literal[1] = REPLAY_SCHEMA_VERSION
    model: ModelIdentity
    trace: InputFile
    metric: Literal["perplexity_ratio", "pooled_cosine"]
    impairment: Literal["none", "erasure", "awgn"]
    switch_delay_ms: float = Field(ge=0)
    t_s: list[float]
    uplink_rate_bps: list[float]
    level: list[float | None] = Field(description="erasure probability or SNR [dB] per step")
    summary: list[MethodResult]
    methods: list[MethodSteps]
