"""The plan: the best way to run a model across device and server for a link (`coinfer plan`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coinfer.reports.common import Document, ModelIdentity, Schema
from coinfer.vocab import Engine, WeightPrecision, WireDtype


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
    ppl_ratio: float | None = Field(
        default=None, ge=0, description="pruning's perplexity over dense on the prune report's evaluation text "
                                        "(None: not measured)")
    # Added without a version bump (optional; files written before still load): set by plans
    # made with a robustness profile, which choose the wire precision with the cut.
    wire_dtype: WireDtype | None = Field(default=None, description="the activation's wire precision; None: the link's")
    device_precision: WeightPrecision = Field(default="fp32", description="weight precision of the device's stages")
    device_engine: Engine = Field(default="torch", description="what runs the device's stages")
    quality: float | None = Field(
        default=None, description="the robustness profile's figure (policy.metric) at the plan's channel state(s)")
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


class QualityBudget(Schema):
    """The quality a plan must keep, in the robustness profile's metric."""

    metric: Literal["perplexity_ratio", "pooled_cosine"]
    limit: float = Field(description="perplexity ratio at most / pooled cosine at least this")
    checked_against: Literal["ci_bound"] = Field(
        default="ci_bound", description="the pessimistic end of the confidence interval (ci_high for a perplexity "
        "ratio, ci_low for a cosine), interpolated as the policy notes say")


class StateSpec(Schema):
    """One channel state as given (None = not given)."""

    rate_bps: float | None = None
    snr_db: float | None = None
    erasure_p: float | None = None
    probability: float | None = None


class PolicyRow(Schema):
    """A range of channel states over which one (cut, wire precision) is best.

    Severity ranges run from the better channel to the worse: erasure probability upwards, SNR
    downwards; ``None`` = unbounded (e.g. an SNR without upper end). The row's choice holds on
    ``(level_from, level_to]`` (the first row of a severity range includes ``level_from``) and on
    uplink rates ``[rate_from_bps, rate_to_bps]``.
    """

    impairment: Literal["none", "erasure", "awgn"]
    level_from: float | None
    level_to: float | None
    rate_from_bps: float = Field(gt=0)
    rate_to_bps: float = Field(gt=0)
    cut: int | None = Field(ge=0, description="None: nothing meets the budgets here")
    cut_name: str
    wire_dtype: WireDtype | None = Field(description="None at cut 0 (token ids) and all-on-device (nothing crosses)")
    objective_from: float | None = Field(default=None, description="at rate_from_bps")
    objective_to: float | None = Field(default=None, description="at rate_to_bps")
    quality_bound: float | None = Field(default=None, description="the budgeted figure at the row's worst channel")


class StateChoice(Schema):
    """The policy's choice at one given state (a fixed state, or each state of a distribution)."""

    state: StateSpec
    uplink_rate_bps: float = Field(gt=0)
    cut: int | None = Field(ge=0)
    cut_name: str
    wire_dtype: WireDtype | None
    latency_ms: float | None = None
    energy_j: float | None = None
    objective: float | None = None
    quality: float | None = Field(default=None, description="mean figure")
    quality_bound: float | None = Field(default=None, description="pessimistic end of the interval")


class MethodResult(Schema):
    """One method replayed over a trace: means per step (one request per step)."""

    method: str
    kind: Literal["policy", "oracle", "paper_reward", "fixed", "rl"]
    steps: int = Field(ge=0)
    mean_reward: float | None = Field(description="the paper's R over the steps whose quality is known")
    mean_latency_ms: float
    mean_energy_j: float
    mean_objective: float
    mean_quality: float | None = Field(description="mean figure over the steps whose quality is known")
    worst_quality: float | None
    budget_violations: int = Field(ge=0, description="steps whose choice breaks a budget or has unknown quality")
    unknown_quality_steps: int = Field(ge=0)
    switches: int = Field(ge=0, description="steps whose cut differs from the previous step's")
    model_evaluations: int = Field(ge=0, description="expensive model evaluations its decisions needed")
    evaluations_note: str = ""
    cuts_used: list[int]
    device_memory_bytes: int = Field(ge=0, description="the device shard holding every stage it may run")
    server_memory_bytes: int = Field(ge=0, description="the server shard holding every stage it may run")


class Policy(Schema):
    """A plan made with a robustness profile: the cut and wire precision per channel state."""

    metric: Literal["perplexity_ratio", "pooled_cosine"]
    quality_budget: QualityBudget | None
    impairment: Literal["none", "erasure", "awgn"]
    source: Literal["fixed", "distribution", "trace"]
    wires: list[WireDtype] = Field(description="the wire precisions the policy chooses from")
    rows: list[PolicyRow]
    states: list[StateChoice] = Field(default_factory=list, description="a fixed state or a distribution's states")
    expected_objective: float | None = Field(default=None, description="over the states' weights (trace: uniform)")
    static_expected_objective: float | None = Field(
        default=None, description="the best single choice (Plan.best) over the same weights")
    cuts_used: list[int] = Field(
        default_factory=list, description="a fixed state: the chosen cut; else every cut the table may pick over the "
        "states' range (what the shards must be ready to run)")
    device_memory_bytes: int = Field(default=0, ge=0, description="device shard for every cut in cuts_used")
    server_memory_bytes: int = Field(default=0, ge=0, description="server shard for every cut in cuts_used")
    switch_delay_ms: float | None = Field(default=None, ge=0)
    reward_a: float = 10.0
    reward_b: float = 1.0
    model_evaluations: int = Field(ge=0, description="the robustness profile's")
    exhaustive_evaluations: int | None = Field(
        default=None, description="estimate: evaluations an exact table over the trace's distinct states would need")
    replay: list[MethodResult] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


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
    # Added without a version bump (optional; files written before still load).
    policy: Policy | None = Field(default=None, description="plans made with a robustness profile: channel state -> choice")
    notes: list[str] = Field(default_factory=list)
