"""The plan: the best way to run a model across device and server for a link (`coinfer plan`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coinfer.reports.common import Document, ModelIdentity, Schema
from coinfer.vocab import WireDtype


class InputFile(Schema):
    """A document the plan was computed from."""

    role: str = Field(description="'device', 'server', 'prune' or a chain member's name")
    path: str = Field(description="the path as given; for a derived profile, what it was derived from")
    sha256: str = Field(description="sha256 of the file's bytes (of the source file when derived)")
    derived: bool = False
    derivation: str | None = Field(default=None, description="how a derived input was made, e.g. 'device / 8'")


class LinkModel(Schema):
    """The link between device and server, as the plan used it."""

    kind: Literal["fixed", "wireless"] = "fixed"
    uplink_rate_bps: float = Field(gt=0, description="fixed rate, or the Shannon rate at the chosen power")
    downlink_rate_bps: float = Field(gt=0)
    rtt_ms: float = Field(ge=0)
    wire_dtype: WireDtype = "fp32"
    tx_power_w: float | None = Field(default=None, ge=0, description="chosen (or fixed) transmit power")
    tx_power_min_w: float | None = Field(default=None, ge=0)
    tx_power_max_w: float | None = Field(default=None, ge=0)
    tx_power_steps: int = Field(default=1, ge=1)
    bandwidth_hz: float | None = Field(default=None, gt=0)
    channel_gain: float | None = Field(default=None, gt=0)
    noise_w_per_hz: float | None = Field(default=None, gt=0)
    distance_m: float | None = Field(default=None, gt=0)
    path_loss_exponent: float | None = Field(default=None, gt=0)
    reference_gain: float | None = Field(default=None, gt=0, description="channel gain at 1 m")


class PhaseBreakdown(Schema):
    """Latency of one phase (prefill, or one decode token), split into its terms.

    Link terms include half the RTT each way whenever that phase waits on the link.
    """

    device_ms: float = Field(ge=0)
    uplink_ms: float = Field(ge=0)
    server_ms: float = Field(ge=0)
    downlink_ms: float = Field(ge=0)
    total_ms: float = Field(ge=0)


class EnergyBreakdown(Schema):
    """Device energy for the whole request (prefill plus every decode step)."""

    compute_j: float = Field(ge=0)
    transmit_j: float = Field(ge=0)
    total_j: float = Field(ge=0)


class Candidate(Schema):
    """One evaluated configuration: cut, pruning ratio and resources, with its predicted costs."""

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
    uplink_rate_bps: float | None = Field(default=None, description="the uplink rate this candidate sees")
    uplink_prefill_bytes: int = Field(default=0, ge=0)
    uplink_per_token_bytes: int = Field(default=0, ge=0)
    prefill: PhaseBreakdown
    per_token: PhaseBreakdown | None = Field(
        default=None, description="one decode step: mean over the decode steps (or at the prompt length if none)"
    )
    total_latency_ms: float = Field(ge=0, description="prefill + new_tokens (decode steps) x per token")
    energy: EnergyBreakdown
    device_memory_bytes: int = Field(ge=0, description="weights of the device stages plus their KV cache")
    distortion: float = Field(default=0.0, ge=0, description="output relative MSE from the pruning report")
    objective: float
    feasible: bool = True
    violations: list[str] = Field(default_factory=list)


class RatePoint(Schema):
    """A range of link rates over which one configuration is best."""

    rate_from_bps: float
    rate_to_bps: float
    cut: int | None = Field(ge=0, description="stages on the device, as in Candidate.cut; None: infeasible")
    cut_name: str
    ratio: float = 0.0
    freq_scale: float = 1.0
    objective_from: float | None = None
    objective_to: float | None = None


class ChainSegment(Schema):
    """The stages one member of a chain runs."""

    member: str
    first_stage: int = Field(ge=0, description="index into embed, block.0.., head")
    num_stages: int = Field(ge=0)
    stage_names: list[str]
    compute_ms: float = Field(ge=0, description="prefill plus all decode steps")
    memory_bytes: int = Field(ge=0)


class ChainHop(Schema):
    """Traffic on one link of the chain (activation forward plus the result back)."""

    link: str
    rate_bps: float = Field(gt=0)
    rtt_ms: float = Field(ge=0)
    payload_bytes: int = Field(ge=0, description="prefill activation crossing this hop")
    transfer_ms: float = Field(ge=0, description="prefill plus all decode steps, both directions")


class ChainPlan(Schema):
    """A contiguous partition of the model over several members (EdgeShard-style DP)."""

    members: list[str]
    objective: Literal["latency", "throughput"]
    segments: list[ChainSegment]
    hops: list[ChainHop]
    total_latency_ms: float = Field(ge=0)
    bottleneck_ms: float = Field(ge=0, description="slowest member or hop: time per request when pipelined")
    throughput_rps: float = Field(ge=0, description="requests per second when pipelined (1000 / bottleneck)")


class Plan(Document):
    """A versioned plan."""

    kind: Literal["plan"] = "plan"
    schema_version: Literal[1] = 1
    model: ModelIdentity
    inputs: list[InputFile]
    link: LinkModel
    objective: Literal["latency", "energy", "weighted", "throughput"]
    energy_weight_ms_per_j: float | None = Field(default=None, description="weighted: ms + w x J")
    prompt_tokens: int = Field(ge=1)
    new_tokens: int = Field(
        ge=0, description="decode steps m after the prefill (--decode-steps); m + 1 tokens are generated"
    )
    budgets: dict[str, float] = Field(default_factory=dict, description="latency_ms, energy_j, memory_bytes, distortion")
    freq_scales: list[float] = Field(default_factory=lambda: [1.0], description="the DVFS grid searched")
    ratios: list[float] = Field(default_factory=lambda: [0.0], description="the pruning ratios searched")
    best: Candidate | None = Field(description="None only for a chain plan")
    all_device: Candidate | None = None
    all_server: Candidate | None = None
    gain_over_all_device: float | None = Field(default=None, description="objective of all-on-device over best")
    gain_over_all_server: float | None = Field(default=None, description="objective of all-on-server over best")
    candidates: list[Candidate] = Field(default_factory=list, description="the best configuration at every cut")
    nominal: list[Candidate] = Field(
        default_factory=list,
        description="every cut unpruned at frequency scale 1 and the highest transmit power: predictions for runs",
    )
    rate_sweep: list[RatePoint] = Field(default_factory=list)
    chain: ChainPlan | None = None
    notes: list[str] = Field(default_factory=list)
