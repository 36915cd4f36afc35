"""The profile: what each stage of a model costs on one machine (written by `coinfer profile`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from coinfer.reports.common import Contention, Document, MachineInfo, ModelIdentity, Schema
from coinfer.vocab import StageKind, WireDtype, stage_names

EnergySource = Literal["rapl", "nvml", "estimate", "none"]


class Timing(Schema):
    """A timed quantity: median and interquartile range over the timed repeats."""

    median_ms: float = Field(ge=0)
    iqr_ms: float = Field(ge=0)
    repeats: int = Field(ge=1)

    @property
    def noisy(self) -> bool:
        """True when the spread (IQR over median) exceeds 10%."""
        return self.median_ms > 0 and self.iqr_ms / self.median_ms > 0.10


class PayloadBytes(Schema):
    """Bytes that cross a cut, for the prefill and for each decoded token."""

    prefill_bytes: int = Field(ge=0)
    per_token_bytes: int = Field(ge=0)


class DecodeCost(Schema):
    """Cost of one decode step (one new token) with ``context_tokens`` already cached."""

    context_tokens: int = Field(ge=0)
    timing: Timing
    flops: float = Field(ge=0)
    energy_j: float | None = Field(default=None, ge=0)
    read_bytes: int | None = Field(
        default=None, ge=0,
        description="bytes the step must read: weights at their dtype (the embedding only the rows looked up) "
        "plus the KV cache at this context",
    )
    bandwidth_bound_ms: float | None = Field(
        default=None, ge=0, description="read_bytes over the measured memory bandwidth: the least time the step can take"
    )
    bandwidth_fraction: float | None = Field(
        default=None, ge=0, description="bandwidth_bound_ms over the measured median: the share of the bandwidth reached"
    )


class StageProfile(Schema):
    """One stage: ``embed``, ``block.<i>`` or ``head``; names join profiles, prune reports, plans."""

    name: str
    stage_kind: StageKind
    prefill: Timing
    prefill_flops: float = Field(ge=0)
    prefill_energy_j: float | None = Field(default=None, ge=0)
    decode: list[DecodeCost] = Field(default_factory=list)
    param_bytes: int = Field(ge=0)
    kv_cache_bytes_per_token: int = Field(ge=0, description="per token of context, whole batch")
    peak_memory_bytes: int | None = Field(
        default=None, ge=0, description="prefill memory peak above what was allocated when the stage began (weights excluded)"
    )
    achieved_flops_fraction: float | None = Field(
        default=None, ge=0, description="prefill FLOP/s over the measured GEMM peak"
    )
    payload_after: dict[WireDtype, PayloadBytes] = Field(
        description="what crosses a cut placed right after this stage, per wire dtype"
    )
    noisy: bool = False


class MeasureContext(Schema):
    """How the measurement was taken (pyperf-style: enough to judge and reproduce it)."""

    machine: MachineInfo
    device: Literal["cpu", "cuda"]
    dtype: Literal["fp32", "fp16", "bf16"]
    threads: int = Field(ge=1)
    batch: int = Field(ge=1)
    seq_len: int = Field(ge=1)
    decode_context_tokens: list[int] = Field(default_factory=list)
    repeats: int = Field(ge=1, description="minimum timed repeats; each Timing records its own count")
    warmup: int = Field(ge=0)
    energy_source: EnergySource
    power_w: float | None = Field(default=None, ge=0, description="power model used for estimates")
    logits_to_keep: int | None = Field(
        default=None, ge=0, description="decoders: positions the timed head computed logits for (0 = all)"
    )
    context_charged_to: str | None = Field(
        default=None, description="stage charged with building positions, masks and rotary embeddings"
    )
    min_time_s: float | None = Field(
        default=None, ge=0, description="repeats grew past `repeats` until timed passes summed to this"
    )


class WholeModel(Schema):
    """The unsplit model timed in the same pass, to check the stages add up."""

    prefill: Timing
    decode: list[DecodeCost] = Field(default_factory=list)
    prefill_coverage: float = Field(description="sum of stage medians over the whole model's median")
    decode_coverage: list[float] = Field(default_factory=list)
    prefill_pass_coverage: float | None = Field(
        default=None,
        description="median of the staged passes' totals over the whole model's median: the same check, "
        "insensitive to which stage a noise spike lands in",
    )
    decode_pass_coverage: list[float] = Field(default_factory=list)


class MemoryBandwidth(Schema):
    """The machine's memory bandwidth, STREAM-style (see :mod:`coinfer.profiler.bandwidth`)."""

    bytes_per_s: float = Field(ge=0, description="the best of copy and triad")
    method: Literal["copy", "triad"] = Field(description="which kernel gave bytes_per_s")
    copy_bytes_per_s: float = Field(ge=0, description="best copy pass: a = b, 2 x buffer bytes moved")
    triad_bytes_per_s: float = Field(ge=0, description="best triad pass: a = b + s * c, 3 x buffer bytes moved")
    buffer_bytes: int = Field(ge=0, description="bytes per buffer (three fp32 buffers)")
    last_level_cache_bytes: int | None = Field(default=None, ge=0, description="CPU L3 (all instances) or GPU L2")
    passes: int = Field(ge=1, description="timed passes of each kernel, alternated; the best is kept")
    threads: int | None = Field(default=None, ge=1, description="CPU threads that ran the passes")
    device: Literal["cpu", "cuda"] = "cpu"


class EmissionsSummary(Schema):
    """codecarbon's whole-run summary; an estimate unless it read hardware counters."""

    energy_kwh: float = Field(ge=0)
    emissions_kg_co2eq: float = Field(ge=0)
    duration_s: float = Field(ge=0)
    tool: str = "codecarbon"
    country_iso_code: str | None = Field(default=None, description="grid whose carbon intensity was used")


class Profile(Document):
    """A versioned profile of one model on one machine."""

    # Versions: 1 the first; 2 adds memory_bandwidth, the decode steps' read_bytes /
    # bandwidth_bound_ms / bandwidth_fraction, and contention (issue 14). Version 1 files load
    # as they are (every field added is optional).
    kind: Literal["profile"] = "profile"
    schema_version: Literal[1, 2] = 2
    READABLE_SCHEMA_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)
    model: ModelIdentity
    context: MeasureContext
    stages: list[StageProfile]
    whole_model: WholeModel | None = None
    input_payload: PayloadBytes = Field(description="token ids sent when everything runs on the server")
    result_payload: PayloadBytes = Field(description="what the server sends back: token ids or embeddings")
    gemm_peak_flops_per_s: float | None = Field(default=None, ge=0)
    memory_bandwidth: MemoryBandwidth | None = Field(default=None, description="measured once per profile")
    contention: Contention | None = Field(default=None, description="was the machine quiet while timing (coinfer.quiet)")
    emissions: EmissionsSummary | None = None
    derived_from: str | None = Field(default=None, description="set when derived, not measured")
    notes: list[str] = Field(default_factory=list, description="unsupported ops, noisy stages, caveats")
    shared_param_bytes: int = Field(
        default=0, ge=0, description="weights tied across stages (embedding = LM head), counted in the param_bytes "
                                     "of each stage using them: one copy when those stages share a machine")
    peak_memory_bytes: int | None = Field(default=None, ge=0, description="peak memory of the whole run")
    peak_memory_source: Literal["ru_maxrss", "cuda_max_allocated"] | None = Field(
        default=None, description="ru_maxrss: the process's resident peak; cuda_max_allocated: torch's allocator"
    )

    @model_validator(mode="after")
    def _stage_order(self) -> Profile:
        names = [s.name for s in self.stages]
        expected = stage_names(self.model.num_blocks)
        if names != expected:
            raise ValueError(f"stages must be {expected[0]}, block.0..block.{self.model.num_blocks - 1}, head")
        return self
