"""The plan: the best way to run a model across device and server for a link (`coinfer plan`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from coinfer.reports.common import ModelIdentity, Schema, coinfer_version


class InputFile(Schema):
    """A document the plan was computed from."""

    role: str = Field(description="'device', 'server', 'prune' or a chain member's name")
    path: str
    sha256: str
    derived: bool = False


class LinkModel(Schema):
    """The link between two parties."""

    uplink_rate_bps: float = Field(gt=0)
    downlink_rate_bps: float = Field(gt=0)
    rtt_ms: float = Field(ge=0)
    wire_dtype: Literal["fp32", "fp16", "int8"] = "fp32"
    tx_power_w: float | None = Field(default=None, ge=0)
    bandwidth_hz: float | None = Field(default=None, gt=0)
    channel_gain: float | None = Field(default=None, gt=0)
    noise_w_per_hz: float | None = Field(default=None, gt=0)


class PhaseBreakdown(Schema):
    """Latency of one phase (prefill, or one decode token), split into its terms."""

    device_ms: float = Field(ge=0)
    uplink_ms: float = Field(ge=0)
    server_ms: float = Field(ge=0)
    downlink_ms: float = Field(ge=0)
    total_ms: float = Field(ge=0)


class EnergyBreakdown(Schema):
    """Device energy for the whole request."""

    compute_j: float = Field(ge=0)
    transmit_j: float = Field(ge=0)
    total_j: float = Field(ge=0)


class Candidate(Schema):
    """One evaluated configuration."""

    cut: int = Field(
        ge=0,
        description=(
            "stages on the device: 0 = all on server (token ids cross), 1 = embed only, "
            "k+1 = embed + blocks 1..k (split(model, k)), L+2 = all on device (head included)"
        ),
    )
    cut_name: str = Field(description="'server-only' or the last device stage: 'embed', 'block.i', 'head'")
    ratio: float = Field(default=0.0, ge=0, lt=1)
    freq_scale: float = Field(default=1.0, gt=0)
    tx_power_w: float | None = None
    prefill: PhaseBreakdown
    per_token: PhaseBreakdown | None = None
    total_latency_ms: float = Field(ge=0)
    energy: EnergyBreakdown
    device_memory_bytes: int = Field(ge=0)
    distortion: float = Field(default=0.0, ge=0)
    objective: float
    feasible: bool = True
    violations: list[str] = Field(default_factory=list)


class RatePoint(Schema):
    """A range of link rates over which one cut is best."""

    rate_from_bps: float
    rate_to_bps: float
    cut: int = Field(ge=0, description="stages on the device, as in Candidate.cut")
    cut_name: str
    ratio: float = 0.0


class Plan(Schema):
    """A versioned plan."""

    kind: Literal["plan"] = "plan"
    schema_version: Literal[1] = 1
    coinfer_version: str = Field(default_factory=coinfer_version)
    created_utc: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: ModelIdentity
    inputs: list[InputFile]
    link: LinkModel
    objective: Literal["latency", "energy", "weighted"]
    prompt_tokens: int = Field(ge=1)
    new_tokens: int = Field(ge=0)
    budgets: dict[str, float] = Field(default_factory=dict)
    best: Candidate | None
    all_device: Candidate
    all_server: Candidate
    candidates: list[Candidate]
    binding_budget: str | None = Field(default=None, description="when infeasible: what binds, by how much")
    rate_sweep: list[RatePoint] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
