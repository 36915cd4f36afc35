"""Measure what each stage of a model costs on this machine and write it as a :class:`Profile`.

Method. The model runs stage by stage through its family adapter, exactly as split shards run it
(embedding, then the context a shard builds -- positions, masks, rotary embeddings -- which is
charged to ``block.0``, the blocks, then the final norm and head). A timestamp is taken at each
stage boundary (the wall clock on CPU; CUDA events on a GPU, with the device synchronised before
and after the pass), so the stages of one pass tile the pass. In the
same loop, alternating with it, the unsplit model runs through the library's own forward; the
sum of stage medians over its median is the coverage. Decoders are also timed one token at a
time with ``context`` tokens in the KV cache; the cache is restored after each step so the
context stays fixed. Energy comes from hardware counters over windows of repeated stage calls
where they exist, otherwise from a power model times the latency, labelled ``estimate``.

Yardsticks, measured once per profile: the GEMM peak (prefill is bound by arithmetic) and the
memory bandwidth (batch-1 decode reads every weight once per token: the bytes a step reads over
the bandwidth is the least time it can take; :mod:`coinfer.profiler.bandwidth`). The whole
measurement is watched by :class:`coinfer.quiet.QuietWatch`: a reference kernel before, between
and after the phases and the CPU other processes took; a contended profile says so (and is
refused under ``strict``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coinfer.errors import UserInputError
from coinfer.models.flops import stage_flops
from coinfer.models.payload import activation_bytes, token_ids_bytes
from coinfer.profiler.bandwidth import (
    bound_and_fraction,
    decode_read_bytes,
    embedding_rows_saving,
    measure_bandwidth,
)
from coinfer.profiler.energy import (
    codecarbon_cpu_power_w,
    measure_window,
    open_hardware_reader,
    start_emissions,
)
from coinfer.profiler.hardware import (
    DTYPES,
    check_device,
    gemm_peak_flops_per_s,
    physical_cores,
    synchronizer,
    torch_dtype,
)
from coinfer.profiler.memory import run_peak, stage_peaks
from coinfer.profiler.stats import is_noisy
from coinfer.profiler.timing import (
    DecodeState,
    StagedRunner,
    interleaved,
    pass_coverage,
    stage_replays,
    timing_of,
)
from coinfer.quiet import QuietWatch, note_line, refuse_if_strict, warning_line
from coinfer.reports.common import MachineInfo
from coinfer.reports.profile import (
    DecodeCost,
    EmissionsSummary,
    MeasureContext,
    MemoryBandwidth,
    PayloadBytes,
    Profile,
    StageProfile,
    WholeModel,
)
from coinfer.vocab import EMBED, WIRE_DTYPES, block_index, block_name, max_positions, stage_kind

DEFAULT_DECODE_CONTEXT = (128, 512, 2048)
RESULT_ELEMENT_BYTES = 4  # encoders send their embedding back as fp32

Progress = Callable[[str, int, int], None]


@dataclass
class ProfileOptions:
    """What to measure and how.

    Attributes:
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``, ``fp16`` or ``bf16`` for weights and activations.
        seq_len: Prompt tokens per sequence for the prefill.
        batch: Sequences per batch.
        decode_context: Context lengths for per-token decode timing; None takes the defaults
            (128, 512, 2048), replacing those beyond the model's positions by the longest that
            fits (noted); an explicit list must fit as given.
        repeats: Timed repeats of every measurement.
        warmup: Untimed passes first.
        threads: CPU threads; None = the physical cores this process may use.
        power_w: Power model for energy estimates when no hardware counter exists.
        emissions: Run codecarbon for the whole run's energy and emissions (costs a few seconds).
        energy: Measure energy windows with hardware counters where present.
        energy_window_s: Minimum window per stage for hardware counters (None: the reader's default).
        logits_to_keep: Decoders: positions the head computes logits for (1, as in generation).
        min_time_s: Keep repeating (beyond ``repeats``, up to ``max_repeats``) until the timed
            passes of each measurement add up to this many seconds.
        max_repeats: Upper bound on the adaptive repeats.
        seed: Seed of the random prompt.
        gemm: Measure the matrix-multiply peak.
        bandwidth: Measure the memory bandwidth (and each decode step's share of it).
        bandwidth_buffer_bytes: Bytes per bandwidth buffer (None: 4x the last-level cache, 256 MiB
            at least).
        strict: Refuse (raise) a profile measured on a contended machine.
        country_iso_code: Country whose grid codecarbon uses for emissions.
    """

    device: str = "cpu"
    dtype: str = "fp32"
    seq_len: int = 128
    batch: int = 1
    decode_context: list[int] | None = None
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    power_w: float | None = None
    emissions: bool = True
    energy: bool = True
    energy_window_s: float | None = None
    logits_to_keep: int = 1
    min_time_s: float = 1.0
    max_repeats: int = 500
    seed: int = 0
    gemm: bool = True
    bandwidth: bool = True
    bandwidth_buffer_bytes: int | None = None
    strict: bool = False
    country_iso_code: str = "USA"
    notes: list[str] = field(default_factory=list)


def validate_options(opts: ProfileOptions) -> None:
    """Check the options that need no model; every problem is one line.

    Raises:
        UserInputError: A value is out of range.
    """
    if opts.device not in ("cpu", "cuda"):
        raise UserInputError(f"--device {opts.device!r}: expected cpu or cuda")
    if opts.dtype not in DTYPES:
        raise UserInputError(f"--dtype {opts.dtype!r}: expected fp32, fp16 or bf16")
    if opts.seq_len <= 0:
        raise UserInputError(f"--prompt-tokens must be positive, got {opts.seq_len}")
    if opts.batch <= 0:
        raise UserInputError(f"--batch must be positive, got {opts.batch}")
    if opts.repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, got {opts.repeats}")
    if opts.warmup < 0:
        raise UserInputError(f"--warmup must not be negative, got {opts.warmup}")
    if opts.threads is not None and opts.threads < 1:
        raise UserInputError(f"--threads must be at least 1, got {opts.threads}")
    if opts.power_w is not None and opts.power_w <= 0:
        raise UserInputError(f"--power must be positive, got {opts.power_w}")
    if opts.decode_context is not None and any(c < 1 for c in opts.decode_context):
        raise UserInputError(f"--decode-context values must be positive, got {opts.decode_context}")
    if opts.min_time_s < 0 or opts.max_repeats < opts.repeats:
        raise UserInputError("min_time_s must not be negative and max_repeats must be at least repeats")
    if opts.logits_to_keep < 0:
        raise UserInputError("logits_to_keep must not be negative")
    if opts.bandwidth_buffer_bytes is not None and opts.bandwidth_buffer_bytes < 2**20:
        raise UserInputError("bandwidth_buffer_bytes must be at least 1 MiB")


def parse_context_list(text: str) -> list[int]:
    """Parse ``"128,512,2048"``; an empty string means no decode timing.

    Raises:
        UserInputError: Not a comma-separated list of integers.
    """
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [int(t) for t in items]
    except ValueError:
        raise UserInputError(f"--decode-context {text!r}: expected integers separated by commas") from None


def run_profile(spec: str, opts: ProfileOptions, progress: Progress | None = None) -> Profile:
    """Load ``spec`` and profile it: the one call behind ``coinfer profile``.

    Validates everything that needs no model first, so bad input fails before any work.

    Args:
        spec: ``--model`` value: a preset, ``minilm`` or a local Hugging Face folder.
        opts: What to measure.
        progress: Optional callback ``(what, done, total)``.

    Raises:
        UserInputError, DeviceUnavailableError, ModelNotFoundError, UnsupportedModelError.
    """
    validate_options(opts)
    accelerator = check_device(opts.device, opts.dtype)
    from coinfer.models.loading import load_model

    loaded = load_model(spec)
    return profile_loaded(loaded, opts, progress, accelerator=accelerator)


def profile_loaded(
    loaded: Any, opts: ProfileOptions, progress: Progress | None = None, accelerator: str | None = None
) -> Profile:
    """Profile an already loaded model (see the module docstring for the method).

    The model is moved to ``opts.device`` and cast to ``opts.dtype`` in place.

    Raises:
        UserInputError: The prompt or a requested context does not fit the model's positions.
        ContendedMeasurementError: ``opts.strict`` and the machine was contended while timing.
    """
    import torch

    validate_options(opts)
    notes = list(opts.notes)
    contexts = _decode_contexts(loaded.adapter, opts, notes)
    _check_memory(loaded, opts, contexts)
    prev_threads = torch.get_num_threads()
    threads = opts.threads or physical_cores()
    torch.set_num_threads(threads)
    emissions_run = start_emissions(opts.country_iso_code) if opts.emissions else None
    try:
        with torch.inference_mode():
            profile = _measure(loaded, opts, contexts, threads, notes, progress, accelerator)
    finally:
        torch.set_num_threads(prev_threads)
        summary = emissions_run.stop() if emissions_run else None
    if summary is not None:
        profile.emissions = EmissionsSummary(**summary, country_iso_code=opts.country_iso_code)
        profile.notes.append("emissions: codecarbon's whole-run estimate (power model unless it read RAPL)")
    elif opts.emissions:
        profile.notes.append("emissions: codecarbon could not start; no whole-run summary")
    refuse_if_strict(profile.contention, opts.strict, "the profile")
    return profile


def _check_memory(loaded: Any, opts: ProfileOptions, contexts: list[int]) -> None:
    """Refuse a batch and prompt that cannot fit, before anything is allocated for them."""
    import torch

    from coinfer.models.footprint import check_request

    weights, available = 0, None
    if opts.device == "cuda" and torch.cuda.is_available():  # the model moves there: its weights count too
        available = torch.cuda.mem_get_info()[0]
        weights = sum(p.numel() for p in loaded.model.parameters()) * (4 if opts.dtype == "fp32" else 2)
    check_request(loaded.model.config, batch=opts.batch, tokens=opts.seq_len, context=max(contexts, default=0) + 1,
                  dtype=opts.dtype, weights_bytes=weights, available=available)


def _decode_contexts(ad: Any, opts: ProfileOptions, notes: list[str]) -> list[int]:
    """The decode contexts to time; checks that the prompt and every context fit the model's positions.

    Raises:
        UserInputError: The prompt or an explicitly requested context is too long.
    """
    max_pos = max_positions(ad.config)
    if max_pos is not None and opts.seq_len > max_pos:
        raise UserInputError(f"--prompt-tokens {opts.seq_len} exceeds the model's {max_pos} positions")
    if not ad.is_decoder:
        if opts.decode_context:
            notes.append("decode timing skipped: encoders have no decode step")
        return []
    if opts.decode_context is not None:
        too_long = [c for c in opts.decode_context if max_pos is not None and c + 1 > max_pos]
        if too_long:
            raise UserInputError(f"--decode-context {too_long} exceeds the model's {max_pos} positions")
        return sorted(set(opts.decode_context))
    fits = [c for c in DEFAULT_DECODE_CONTEXT if max_pos is None or c + 1 <= max_pos]
    skipped = [c for c in DEFAULT_DECODE_CONTEXT if c not in fits]
    if skipped and max_pos is not None:
        # the longest context the positions allow stands in, so the profile spans the model's range
        longest = max_pos - 1
        notes.append(
            f"decode contexts {skipped} do not fit the model's {max_pos} positions "
            f"(the new token needs one); {longest} measured instead"
        )
        fits = sorted({*fits, longest})
    return fits


class _Phases:
    """Progress through the profile's phases (GEMM peak, prefill, each decode context, energy)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def report(self, what: str, frac: float = 0.0) -> None:
        if self.progress:
            self.progress(what, int(100 * (self.done + frac)), 100 * self.total)

    def next(self, what: str) -> None:
        self.done += 1
        self.report(what)


@dataclass
class _Setup:
    """What every step of one profile shares: the model, the options and the random inputs."""

    loaded: Any
    opts: ProfileOptions
    contexts: list[int]
    dtype: Any  # the torch dtype of weights and activations
    runner: StagedRunner
    watch: QuietWatch
    ids: Any = None  # the prompt, (batch, seq_len)
    tok: Any = None  # one new token per sequence, (batch, 1)

    @property
    def ad(self) -> Any:
        return self.loaded.adapter

    def interleaved(self, staged: Callable[[], list[float]], whole: Callable[[], float],
                    reset: Callable[[], None] | None, report: Callable[[float], None]):
        o = self.opts
        return interleaved(staged, whole, reset, report, repeats=o.repeats, warmup=o.warmup,
                           min_time_s=o.min_time_s, max_repeats=o.max_repeats)


@dataclass
class _Samples:
    """Timed samples in seconds: per stage (a list per stage) and of the whole model."""

    prefill_stages: list[list[float]]
    prefill_whole: list[float]
    decode_stages: dict[int, list[list[float]]] = field(default_factory=dict)
    decode_whole: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class _Energy:
    """Where energy figures come from, and the counter readings when a counter was read."""

    source: str
    power_w: float | None  # the power model of an estimate
    measured: bool
    prefill_j: dict[str, float] = field(default_factory=dict)
    decode_j: dict[int, dict[str, float]] = field(default_factory=dict)

    def of(self, stage: str, median_ms: float, context: int | None = None) -> float | None:
        """A stage's energy: the counter's reading, else power x median latency, else None."""
        if self.measured:
            return self.prefill_j[stage] if context is None else self.decode_j[context][stage]
        return self.power_w * median_ms / 1e3 if self.power_w else None


def _measure(
    loaded: Any,
    opts: ProfileOptions,
    contexts: list[int],
    threads: int,
    notes: list[str],
    progress: Progress | None,
    accelerator: str | None,
) -> Profile:
    """The profile's steps in order: quiet watch, GEMM peak, prefill, decode, memory, energy, bandwidth,
    contention, assembly, notes."""
    import torch

    ad = loaded.adapter
    device, B, T = opts.device, opts.batch, opts.seq_len
    dt, runner = torch_dtype(opts.dtype), StagedRunner(ad, device, opts.logits_to_keep)
    loaded.model.to(device=device, dtype=dt)
    s = _Setup(loaded, opts, contexts, dt, runner, QuietWatch(device, threads).start())
    reader = open_hardware_reader(device) if opts.energy else None
    phases = _Phases(progress, 2 + len(contexts) + (1 if reader else 0) + (1 if opts.bandwidth else 0))

    gemm_peak = _gemm_peak(opts, notes, phases)
    gen = torch.Generator().manual_seed(opts.seed)
    s.ids = torch.randint(0, ad.vocab_size, (B, T), generator=gen).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    samples = _time_prefill(s, phases)
    s.tok = torch.randint(0, ad.vocab_size, (B, 1), generator=gen).to(device)
    _time_decode(s, samples, phases)
    if reader:
        phases.next("energy")
    captured, stage_peak, cuda_run_peak = _capture_and_stage_peaks(s, notes)
    energy = _energy_source(opts, reader, notes)
    if reader is not None:
        _energy_windows(s, reader, captured, energy)

    peak_mem, peak_src = run_peak(device, cuda_run_peak)
    bandwidth = _bandwidth(opts, notes, phases)  # after the run's peak is read: its buffers are not the model's
    contention = s.watch.stop()

    pflops = stage_flops(ad, B, T, 0, opts.logits_to_keep)
    dflops = {c: stage_flops(ad, B, 1, c, opts.logits_to_keep) for c in contexts}
    stages = _stage_profiles(s, samples, energy, stage_peak, gemm_peak, bandwidth, pflops, dflops)
    whole = _whole_model(s, samples, stages, dflops, bandwidth)
    from coinfer.models.summary import shared_param_bytes

    shared = shared_param_bytes(loaded)
    _closing_notes(s, notes, stages, whole, bool(stage_peak), shared)
    _contention_notes(notes, contention)
    return Profile(
        model=loaded.identity,
        context=_context(s, threads, energy, accelerator),
        stages=stages,
        whole_model=whole,
        input_payload=PayloadBytes(prefill_bytes=token_ids_bytes(B, T), per_token_bytes=token_ids_bytes(B, 1) if ad.is_decoder else 0),
        result_payload=_result_payload(ad, B),
        gemm_peak_flops_per_s=gemm_peak,
        memory_bandwidth=bandwidth,
        contention=contention,
        notes=notes,
        peak_memory_bytes=peak_mem,
        peak_memory_source=peak_src,
        shared_param_bytes=shared,
    )


def _gemm_peak(opts: ProfileOptions, notes: list[str], phases: _Phases) -> float | None:
    """The matrix-multiply peak in FLOP/s (None when not asked for)."""
    phases.report("GEMM peak")
    peak = None
    if opts.gemm:
        peak, gemm_n = gemm_peak_flops_per_s(opts.device, opts.dtype)
        notes.append(f"GEMM peak: best of 3 square {opts.dtype} products of side {gemm_n}")
    phases.next("prefill")
    return peak


def _bandwidth(opts: ProfileOptions, notes: list[str], phases: _Phases) -> MemoryBandwidth | None:
    """The memory bandwidth, STREAM-style (None when not asked for)."""
    if not opts.bandwidth:
        return None
    phases.next("memory bandwidth")
    bw = measure_bandwidth(opts.device, opts.bandwidth_buffer_bytes)
    cache = f"the last-level cache is {bw.last_level_cache_bytes / 2**20:g} MiB" if bw.last_level_cache_bytes else "cache size unknown"
    who = f"{bw.threads} threads" if bw.threads else "device to device"
    notes.append(
        f"memory bandwidth: best of {bw.passes} copy and {bw.passes} triad passes over fp32 buffers of "
        f"{bw.buffer_bytes / 2**20:g} MiB ({cache}), {who}: {bw.bytes_per_s / 1e9:.3g} GB/s ({bw.method}); "
        "a decode step's share = (weights + KV cache bytes) / bandwidth / measured time"
    )
    return bw


def _time_prefill(s: _Setup, phases: _Phases) -> _Samples:
    """Prefill of the prompt: stages and the whole model, interleaved."""
    ad, runner = s.ad, s.runner
    s.watch.checkpoint("before prefill")
    stages, whole = s.interleaved(
        lambda: runner.staged(s.ids, ad.new_state(), 0),
        lambda: runner.whole(s.ids, ad.new_cache() if ad.is_decoder else None),
        None,
        lambda f: phases.report("prefill", f),
    )
    s.watch.checkpoint("after prefill")
    return _Samples(stages, whole)


def _time_decode(s: _Setup, samples: _Samples, phases: _Phases) -> None:
    """One new token with ``context`` tokens cached, for every context; the cache is restored each step."""
    runner = s.runner
    for c in s.contexts:
        phases.next(f"decode @ {c}")
        ds = DecodeState(s.ad, s.opts.batch, c, s.dtype, s.opts.device)
        samples.decode_stages[c], samples.decode_whole[c] = s.interleaved(
            lambda ds=ds, c=c: runner.staged(s.tok, ds.state, c),
            lambda ds=ds: runner.whole(s.tok, ds.state.cache),
            ds.reset,
            lambda f, c=c: phases.report(f"decode @ {c}", f),
        )
        del ds
        s.watch.checkpoint(f"after decode @ {c}")


def _capture_and_stage_peaks(s: _Setup, notes: list[str]) -> tuple[list, dict[str, int], int]:
    """(each stage's prefill input, per-stage memory peaks, the CUDA run peak before they reset it)."""
    import torch

    from coinfer.models.adapters.base import ShardState

    captured: list = []
    s.runner.staged(s.ids, ShardState(cache=None), 0, capture=captured)
    cuda_run_peak = int(torch.cuda.max_memory_allocated()) if s.opts.device == "cuda" else 0
    peaks: dict[str, int] = {}
    try:
        peaks = stage_peaks(s.ad, s.ids, s.opts.logits_to_keep, s.opts.device)
    except Exception as exc:  # the profiler is optional machinery: report, do not fail the profile
        notes.append(f"per-stage peak memory not measured: {type(exc).__name__}: {exc}")
    return captured, peaks, cuda_run_peak


def _energy_source(opts: ProfileOptions, reader: Any, notes: list[str]) -> _Energy:
    """A hardware counter, else the --power model, else codecarbon's CPU model, else none."""
    power_w = opts.power_w
    if reader is not None:
        window = opts.energy_window_s or reader.min_window_s
        notes.append(
            f"energy: {reader.source} counter over windows of at least {window:g} s of repeated stage "
            "calls; whole-device figure (idle power and other processes included)"
        )
        return _Energy(reader.source, power_w, measured=True)
    if power_w is not None:
        notes.append(f"energy: ESTIMATE = --power {power_w:g} W x median latency (no hardware counter read)")
        return _Energy("estimate", power_w, measured=False)
    if opts.device == "cpu" and (power_w := codecarbon_cpu_power_w()) is not None:
        notes.append(
            f"energy: ESTIMATE = codecarbon's CPU power model ({power_w:g} W) x median latency (no hardware counter read)"
        )
        return _Energy("estimate", power_w, measured=False)
    notes.append("energy: not measured (no hardware counter, no power model; give --power)")
    return _Energy("none", None, measured=False)


def _energy_windows(s: _Setup, reader: Any, captured: list, energy: _Energy) -> None:
    """Read the counter over windows of repeated calls of each stage, prefill and every decode context."""
    from coinfer.models.adapters.base import ShardState

    ad, k, names = s.ad, s.opts.logits_to_keep, s.ad.stage_names()
    sync = synchronizer(s.opts.device)
    window = s.opts.energy_window_s or reader.min_window_s
    fns = stage_replays(ad, s.ids, 0, ShardState(cache=None), captured, k, reset=None)
    for name, fn in zip(names, fns, strict=True):
        energy.prefill_j[name], _ = measure_window(reader, fn, sync, window, time.perf_counter)
    for c in s.contexts:
        ds = DecodeState(ad, s.opts.batch, c, s.dtype, s.opts.device)
        cap: list = []
        s.runner.staged(s.tok, ds.state, c, capture=cap)
        ds.reset()
        fns = stage_replays(ad, s.tok, c, ds.state, cap, k, reset=ds.reset)
        energy.decode_j[c] = {}
        for name, fn in zip(names, fns, strict=True):
            energy.decode_j[c][name], _ = measure_window(reader, fn, sync, window, time.perf_counter)


def _stage_profiles(
    s: _Setup,
    samples: _Samples,
    energy: _Energy,
    stage_peak: dict[str, int],
    gemm_peak: float | None,
    bandwidth: MemoryBandwidth | None,
    pflops: dict[str, float],
    dflops: dict[int, dict[str, float]],
) -> list[StageProfile]:
    """One :class:`StageProfile` per stage from the samples, energy, FLOPs, weights, bytes read and payloads."""
    import torch

    from coinfer.models.summary import stage_param_bytes

    ad, B = s.ad, s.opts.batch
    pbytes = stage_param_bytes(s.loaded)
    el = torch.tensor([], dtype=s.dtype).element_size()
    out = []
    for si, name in enumerate(ad.stage_names()):
        b = block_index(name)
        kv = ad.kv_cache_bytes_per_token(b, el) * B if b is not None else 0
        saving = embedding_rows_saving(ad, B) if name == EMBED else 0
        pre = timing_of(samples.prefill_stages[si])
        dec = []
        for c in s.contexts:
            tm = timing_of(samples.decode_stages[c][si])
            read = decode_read_bytes(pbytes[name], kv, c, saving)
            bound, share = bound_and_fraction(read, tm.median_ms, bandwidth)
            dec.append(DecodeCost(context_tokens=c, timing=tm, flops=dflops[c][name], energy_j=energy.of(name, tm.median_ms, c),
                                  read_bytes=read, bandwidth_bound_ms=bound, bandwidth_fraction=share))
        frac = None
        if gemm_peak and pflops[name] > 0 and pre.median_ms > 0:
            frac = pflops[name] / (pre.median_ms / 1e3) / gemm_peak
        out.append(
            StageProfile(
                name=name,
                stage_kind=stage_kind(name),
                prefill=pre,
                prefill_flops=pflops[name],
                prefill_energy_j=energy.of(name, pre.median_ms),
                decode=dec,
                param_bytes=pbytes[name],
                kv_cache_bytes_per_token=kv,
                peak_memory_bytes=stage_peak.get(name),
                achieved_flops_fraction=frac,
                payload_after=_payloads_after(name, ad, B, s.opts.seq_len),
                noisy=is_noisy(pre.median_ms, pre.iqr_ms) or any(is_noisy(x.timing.median_ms, x.timing.iqr_ms) for x in dec),
            )
        )
    return out


def _payloads_after(stage: str, ad: Any, batch: int, tokens: int) -> dict[str, PayloadBytes]:
    """What crosses a cut right after ``stage``, per wire dtype (nothing after the head)."""
    last = stage_kind(stage) == "head"
    d = ad.hidden_size
    return {
        w: PayloadBytes(
            prefill_bytes=0 if last else activation_bytes(batch, tokens, d, w),
            per_token_bytes=0 if last or not ad.is_decoder else activation_bytes(batch, 1, d, w),
        )
        for w in WIRE_DTYPES
    }


def _result_payload(ad: Any, batch: int) -> PayloadBytes:
    """What the server sends back: one token id per sequence, or an encoder's fp32 embedding."""
    if ad.is_decoder:
        return PayloadBytes(prefill_bytes=token_ids_bytes(batch, 1), per_token_bytes=token_ids_bytes(batch, 1))
    return PayloadBytes(prefill_bytes=batch * ad.hidden_size * RESULT_ELEMENT_BYTES, per_token_bytes=0)


def _whole_model(
    s: _Setup, samples: _Samples, stages: list[StageProfile], dflops: dict[int, dict[str, float]], bandwidth: MemoryBandwidth | None
) -> WholeModel:
    """The unsplit model's timings, bytes a decode step reads, and how well the stages add up (coverage)."""
    whole_pre = timing_of(samples.prefill_whole)
    whole_dec = []
    for i, c in enumerate(s.contexts):
        tm = timing_of(samples.decode_whole[c])
        read = sum(st.decode[i].read_bytes or 0 for st in stages)
        bound, share = bound_and_fraction(read, tm.median_ms, bandwidth)
        whole_dec.append(DecodeCost(context_tokens=c, timing=tm, flops=sum(dflops[c].values()), read_bytes=read,
                                    bandwidth_bound_ms=bound, bandwidth_fraction=share))
    pre_cov = sum(st.prefill.median_ms for st in stages) / whole_pre.median_ms if whole_pre.median_ms else 0.0
    dec_cov = [
        sum(st.decode[i].timing.median_ms for st in stages) / wd.timing.median_ms if wd.timing.median_ms else 0.0
        for i, wd in enumerate(whole_dec)
    ]
    return WholeModel(
        prefill=whole_pre,
        decode=whole_dec,
        prefill_coverage=pre_cov,
        decode_coverage=dec_cov,
        prefill_pass_coverage=pass_coverage(samples.prefill_stages, samples.prefill_whole),
        decode_pass_coverage=[pass_coverage(samples.decode_stages[c], samples.decode_whole[c]) for c in s.contexts],
    )


def _closing_notes(s: _Setup, notes: list[str], stages: list[StageProfile], whole: WholeModel, stage_peaks_measured: bool,
                   shared: int = 0) -> None:
    """The caveats a reader of the profile needs: weights, head, decode cache, memory, FLOPs, noise, coverage."""
    ad, k, device = s.ad, s.opts.logits_to_keep, s.opts.device
    if s.loaded.identity.weights == "random":
        notes.insert(0, "weights: random (a preset's shape with seeded random weights)")
    if ad.is_decoder:
        what = "the last position only (logits_to_keep=1), as in generation" if k == 1 else f"logits_to_keep={k}"
        notes.append(f"head timed with logits for {what}")
        notes.append("decode: KV cache filled with random keys/values of the right shape, restored after each step")
        if s.opts.bandwidth and s.contexts:
            notes.append("decode read_bytes: each stage's weights at their dtype (the embedding: only the rows looked up) "
                         "plus its KV cache at the context; activations and the logits written are not counted")
            if getattr(ad.config, "sliding_window", None):
                notes.append("decode read_bytes count the whole KV cache; sliding-window layers read at most their window")
    notes.append("context building (positions, masks, rotary) is charged to block.0")
    if stage_peaks_measured:
        how = "the CUDA allocator" if device == "cuda" else "torch.profiler's CPU allocation trace"
        notes.append(f"stage peak_memory_bytes: prefill transient peak above the stage's start, from {how}")
    notes.append("FLOPs: matrix products only; attention over the full new x all-keys rectangle")
    if shared:
        notes.append(f"tied embedding/LM-head weights ({shared / 1e6:.1f} MB) are counted in both embed and head "
                     "param_bytes (each side needs them when split); shared_param_bytes records one copy to subtract "
                     "when both run on one machine")
    if device == "cpu" and s.opts.dtype == "fp16":
        notes.append("fp16 on CPU: runs, but most CPUs have no fp16 matrix units; bf16 or fp32 is usually faster")
    noisy_names = [st.name for st in stages if st.noisy]
    if noisy_names:
        notes.append(f"noisy (IQR/median > 10%): {', '.join(noisy_names)}")
    if not 0.9 <= whole.prefill_coverage <= 1.1:
        notes.append(f"prefill coverage {whole.prefill_coverage:.2f} is outside 0.9-1.1")


def _contention_notes(notes: list[str], contention: Any) -> None:
    """The loud line of a contended profile, or the note of a busy one (the record is ``contention``)."""
    line = warning_line(contention, "this profile") or note_line(contention, "this profile")
    if line:
        notes.append(line)


def _context(s: _Setup, threads: int, energy: _Energy, accelerator: str | None) -> MeasureContext:
    """How the measurement was taken."""
    o = s.opts
    return MeasureContext(
        machine=MachineInfo.here(accelerator=accelerator, libraries=True),
        device=o.device,  # type: ignore[arg-type]
        dtype=o.dtype,  # type: ignore[arg-type]
        threads=threads,
        batch=o.batch,
        seq_len=o.seq_len,
        decode_context_tokens=s.contexts,
        repeats=o.repeats,
        warmup=o.warmup,
        energy_source=energy.source,  # type: ignore[arg-type]
        power_w=energy.power_w if energy.source == "estimate" else None,
        logits_to_keep=o.logits_to_keep if s.ad.is_decoder else None,
        context_charged_to=block_name(0),
        min_time_s=o.min_time_s,
    )
