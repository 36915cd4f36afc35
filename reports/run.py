"""The result of `coinfer run`: what a split run measured, next to what the plan predicted."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from coinfer.reports.common import Contention, Document, MachineInfo, ModelIdentity, Schema
from coinfer.reports.plan import InputFile
from coinfer.reports.robustness import ChannelCondition, RobustnessPoint
from coinfer.vocab import Engine, WeightPrecision, WireDtype


class Measured(Schema):
    """One latency term: measured, predicted and the prediction's error."""

    measured_ms: float = Field(ge=0)
    predicted_ms: float | None = Field(default=None, ge=0)
    error_pct: float | None = Field(default=None, description="(measured - predicted) / predicted x 100")


class PhaseTiming(Schema):
    """Latency of one phase split into the terms of the cost model.

    ``transfer`` is what end to end leaves after the compute of every party: payload time,
    (emulated) propagation delay, encode/decode of the wire dtype and the transport's overhead.
    """

    device_compute: Measured
    transfer: Measured
    server_compute: Measured
    end_to_end: Measured


class ChainMember(Schema):
    """One process of the run and the stages it ran."""

    role: Literal["device", "server", "relay"]
    rank: int = Field(ge=0)
    start: int = Field(ge=0, description="first stage position (0 = embed)")
    end: int = Field(ge=0, description="one past the last stage position")
    stages: str = Field(description="e.g. 'embed..block.3', or '-' when it runs none")
    address: str | None = Field(default=None, description="control address of a server or relay")


class LinkEmulation(Schema):
    """How the link was emulated on one machine (absent fields: not emulated)."""

    rate_bps: float | None = Field(default=None, gt=0, description="tc tbf rate on the namespace's loopback")
    rtt_ms: float = Field(default=0.0, ge=0)
    rtt_emulated_at_transport: bool = Field(
        default=False, description="the RTT is a sleep of rtt/2 per message per direction, not a kernel delay"
    )
    qdisc: str | None = Field(default=None, description="the tc command applied")
    namespace: str | None = None


class Traffic(Schema):
    """Bytes actually handed to the transport."""

    prefill_uplink_bytes: int = Field(ge=0, description="device side to server side, prefill, all hops")
    per_token_uplink_bytes: int | None = Field(default=None, ge=0, description="one decode step, all hops")
    downlink_bytes: int = Field(ge=0, description="everything the last member sent, whole request (results to the device)")
    total_bytes: int = Field(ge=0, description="everything sent for one request")
    predicted_prefill_payload_bytes: int | None = Field(default=None, ge=0, description="activation_bytes at the cut")


class ExportedShards(Schema):
    """Exported (pruned) shards the run used instead of the model's own stages."""

    prune_report: InputFile
    ratio: float = Field(ge=0, lt=1)
    device_shard_sha256: str
    server_shard_sha256: str


class GeneratedQuality(Schema):
    """What a run produced, judged by the clean model (unsplit, nothing lost on the wire)."""

    tokens: int | None = Field(default=None, ge=0, description="decoders: generated tokens judged (batch x (decode steps + 1))")
    top1_agreement: float | None = Field(
        default=None, ge=0, le=1,
        description="decoders: share of generated tokens the clean model also picks after the same preceding tokens "
                    "(teacher-forced on the run's own output: comparable to a robustness profile's top1_agreement)")
    clean_run_agreement: float | None = Field(
        default=None, ge=0, le=1, description="decoders: share of positions equal to the clean model's own greedy tokens")
    first_divergence: int | None = Field(
        default=None, ge=0, description="decoders: first generated position that differs from the clean run (None: none)")
    nll_nats: float | None = Field(default=None, ge=0, description="decoders: mean NLL the clean model gives the generated tokens")
    clean_run_nll_nats: float | None = Field(
        default=None, ge=0, description="decoders: the same for the clean model's own greedy tokens (the floor)")
    pooled_cosine: float | None = Field(default=None, description="encoders: cosine of the output embedding to the clean one")


class ChannelRun(Schema):
    """The link condition a run went through, what came out, and what a robustness profile predicted."""

    condition: ChannelCondition
    seed: int = Field(description="the channel's draws: torch.Generator().manual_seed(seed), fresh per request")
    applied: str = Field(description="where the precision and the impairment act on the crossing tensor")
    measured: GeneratedQuality | None = None
    robustness: InputFile | None = Field(default=None, description="the robustness profile (coinfer channel) consulted")
    predicted: RobustnessPoint | None = Field(default=None, description="the profile's point for this cut and condition")
    prediction: str | None = Field(default=None, description="how the point was found (measured, interpolated) or why none")


class RunResult(Document):
    """A versioned record of one `coinfer run`."""

    # Versions: 1 the first; 2 adds contention (issue 14). Version 1 files load as they are.
    kind: Literal["run_result"] = "run_result"
    schema_version: Literal[1, 2] = 2
    READABLE_SCHEMA_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)
    model: ModelIdentity
    machine: MachineInfo
    torch_threads: int = Field(ge=1, description="intra-op threads of each process")
    mode: Literal["local", "two-machine"]
    transport: str = Field(description="the engine the tensors travelled on")
    cut: int = Field(ge=0, description="stages on the device, as in a plan's Candidate.cut")
    cut_name: str
    chain: list[ChainMember]
    wire_dtype: WireDtype
    batch: int = Field(ge=1)
    prompt_tokens: int = Field(ge=1)
    new_tokens: int = Field(ge=0, description="decode steps asked for (the plan's new_tokens, m)")
    decode_steps: int = Field(
        ge=0, description="decode steps run after the prefill; new_tokens + 1 tokens come out (one from the prefill)"
    )
    warmup_runs: int = Field(ge=0)
    repeats: int = Field(ge=1, description="measured requests; phase figures are medians over them")
    link: LinkEmulation
    plan: InputFile | None = None
    shards: ExportedShards | None = Field(default=None, description="set when exported shards ran (sha256-checked)")
    prediction_source: str | None = Field(default=None, description="where predicted_ms come from")
    prefill: PhaseTiming
    per_token: PhaseTiming | None = Field(default=None, description="one decode step (median over steps)")
    total: PhaseTiming = Field(description="the whole request: prefill plus every decode step")
    per_generated_token: Measured | None = Field(default=None, description="total end to end / tokens out (decode steps + 1)")
    traffic: Traffic
    generated_tokens: list[list[int]] | None = None
    prompt_text: str | None = Field(
        default=None, description="decoders with a tokenizer: the prompt as text (real text, ending with the "
                                  "asked prompt)")
    generated_text: str | None = Field(default=None, description="decoders with a tokenizer: the first sequence's "
                                                                 "generated tokens as text")
    matches_unsplit: bool | None = Field(
        default=None,
        description="output identical to the unsplit model (exported shards: to the same shards in one process)",
    )
    max_abs_diff: float | None = Field(default=None, ge=0, description="encoders: max |split - unsplit|")
    device_precision: WeightPrecision = Field(default="fp32", description="weight precision of the device shard's matrices")
    device_engine: Engine = Field(default="torch", description="what ran the device shard")
    # Added without a version bump: optional, so every file written before still loads.
    channel: ChannelRun | None = Field(
        default=None, description="a lossy wire or an emulated channel (--erasure/--snr-db): its quality cost")
    contention: Contention | None = Field(
        default=None, description="was this machine quiet while the device side measured (coinfer.quiet)"
    )
    notes: list[str] = Field(default_factory=list)
