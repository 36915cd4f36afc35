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
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from coinfer.errors import UserInputError
from coinfer.models.flops import stage_flops
from coinfer.models.payload import activation_bytes, token_ids_bytes
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
from coinfer.profiler.stats import is_noisy, median_iqr
from coinfer.reports.common import MachineInfo
from coinfer.reports.profile import (
    DecodeCost,
    EmissionsSummary,
    MeasureContext,
    PayloadBytes,
    Profile,
    StageProfile,
    Timing,
    WholeModel,
)
from coinfer.vocab import EMBED, HEAD, WIRE_DTYPES, block_index, block_name, max_positions, stage_kind

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
        raise UserInputError(f"--seq-len must be positive, got {opts.seq_len}")
    if opts.batch <= 0:
        raise UserInputError(f"--batch must be positive, got {opts.batch}")
    if opts.repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, got {opts.repeats}")
    if opts.warmup < 0:
        raise UserInputError(f"--warmup must not be negative, got {opts.warmup}")
    if opts.threads is not None and opts.threads < 1:
        raise UserInputError(f"--threads must be at least 1, got {opts.threads}")
    if opts.power_w is not None and opts.power_w <= 0:
        raise UserInputError(f"--power-w must be positive, got {opts.power_w}")
    if opts.decode_context is not None and any(c < 1 for c in opts.decode_context):
        raise UserInputError(f"--decode-context values must be positive, got {opts.decode_context}")
    if opts.min_time_s < 0 or opts.max_repeats < opts.repeats:
        raise UserInputError("min_time_s must not be negative and max_repeats must be at least repeats")
    if opts.logits_to_keep < 0:
        raise UserInputError("logits_to_keep must not be negative")


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
    """
    import torch

    validate_options(opts)
    ad = loaded.adapter
    notes = list(opts.notes)
    max_pos = max_positions(ad.config)
    if max_pos is not None and opts.seq_len > max_pos:
        raise UserInputError(f"--seq-len {opts.seq_len} exceeds the model's {max_pos} positions")
    contexts: list[int] = []
    if ad.is_decoder:
        if opts.decode_context is None:
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
            contexts = fits
        else:
            too_long = [c for c in opts.decode_context if max_pos is not None and c + 1 > max_pos]
            if too_long:
                raise UserInputError(f"--decode-context {too_long} exceeds the model's {max_pos} positions")
            contexts = sorted(set(opts.decode_context))
    elif opts.decode_context:
        notes.append("decode timing skipped: encoders have no decode step")

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
    return profile


class _Marks:
    """Timestamps at stage boundaries: wall clock on CPU, CUDA events on a GPU.

    On CUDA an event is recorded at each boundary and the device is synchronised once at the
    end, so timing does not stall the queue (a sync per stage would add launch gaps that the
    unsplit model does not have and inflate the sum of stages).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        if self.cuda:
            import torch

            self._torch = torch

    def start(self) -> list[Any]:
        if self.cuda:
            self._torch.cuda.synchronize()
        return [self.mark()]

    def mark(self) -> Any:
        if self.cuda:
            ev = self._torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def durations(self, marks: list[Any]) -> list[float]:
        """Seconds between consecutive marks (synchronises CUDA first)."""
        if self.cuda:
            self._torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


class _Runner:
    """Runs the model stage by stage or whole, with a timestamp at every stage boundary."""

    def __init__(self, ad: Any, device: str, logits_to_keep: int) -> None:
        self.ad, self.k = ad, logits_to_keep
        self.marks = _Marks(device)

    def staged(self, x: Any, state: Any, past: int, capture: list | None = None) -> list[float]:
        """One pass; seconds per stage. ``capture`` receives each stage's input when given."""
        ad, mk = self.ad, self.marks
        marks = mk.start()
        h = ad.embed(x, past)
        marks.append(mk.mark())
        if capture is not None:
            capture.append(h)
        # The shard's context (positions, masks, rotary) is charged to the first block after it.
        ctx = ad.context(h, state, 0, None)
        for i in range(ad.num_blocks):
            h = ad.block(i, h, ctx)
            marks.append(mk.mark())
            if capture is not None:
                capture.append(h)
        ad.head(h, ctx, self.k)
        marks.append(mk.mark())
        return mk.durations(marks)

    def whole(self, x: Any, cache: Any) -> float:
        """The unsplit model through the library's own forward; seconds."""
        marks = self.marks.start()
        self.ad.reference(x, None, cache, self.k)
        marks.append(self.marks.mark())
        return self.marks.durations(marks)[0]


def _filled_cache(ad: Any, batch: int, context: int, dtype: Any, device: str) -> Any:
    """A KV cache holding ``context`` tokens of random keys/values (timing does not depend on values)."""
    import torch

    cache = ad.new_cache()
    gen = torch.Generator().manual_seed(1)
    hd = ad.head_dim()
    for i in range(ad.num_blocks):
        _, kv = ad.attention_heads(i)
        k = (torch.randn(batch, kv, context, hd, generator=gen) * 0.1).to(device=device, dtype=dtype)
        v = (torch.randn(batch, kv, context, hd, generator=gen) * 0.1).to(device=device, dtype=dtype)
        cache.update(k, v, i)
    return cache


class _DecodeState:
    """A cache holding ``context`` tokens; ``reset`` puts it back after a decode step.

    Each layer's attributes are snapshotted once; a dynamic cache's update replaces its tensors
    (it does not write into them), so restoring the snapshot undoes a step exactly and cheaply,
    sliding-window layers included, and the cache object stays the same for any context that
    holds it. If a step ever leaves the cache at a different length, it is rebuilt instead.
    """

    def __init__(self, ad: Any, batch: int, context: int, dtype: Any, device: str) -> None:
        from coinfer.models.adapters.base import ShardState

        self._make = lambda: _filled_cache(ad, batch, context, dtype, device)
        self.context = context
        self.state = ShardState(cache=self._make(), past_length=context)
        self._snapshot()

    def _snapshot(self) -> None:
        layers = getattr(self.state.cache, "layers", None)
        self._layers = [dict(vars(layer)) for layer in layers] if layers is not None else None
        self._length = self.state.cache.get_seq_length()

    def reset(self) -> None:
        if self._layers is not None:
            for layer, saved in zip(self.state.cache.layers, self._layers, strict=True):
                vars(layer).update(saved)
            if self.state.cache.get_seq_length() == self._length:
                return
        self.state.cache = self._make()
        self._snapshot()


def _timing(samples_s: list[float]) -> Timing:
    med, iqr = median_iqr([s * 1e3 for s in samples_s])
    return Timing(median_ms=med, iqr_ms=iqr, repeats=len(samples_s))


def _measure(
    loaded: Any,
    opts: ProfileOptions,
    contexts: list[int],
    threads: int,
    notes: list[str],
    progress: Progress | None,
    accelerator: str | None,
) -> Profile:
    import torch

    from coinfer.models.adapters.base import ShardState
    from coinfer.models.summary import stage_param_bytes

    ad = loaded.adapter
    device, B, T, k = opts.device, opts.batch, opts.seq_len, opts.logits_to_keep
    dt = torch_dtype(opts.dtype)
    loaded.model.to(device=device, dtype=dt)
    sync = synchronizer(device)
    runner = _Runner(ad, device, k)
    names = ad.stage_names()
    reader = open_hardware_reader(device) if opts.energy else None
    phases = 2 + len(contexts) + (1 if reader else 0)  # GEMM, prefill, each context, energy
    state = {"phase": 0, "what": "GEMM peak"}

    def report(what: str, frac: float = 0.0) -> None:
        state["what"] = what
        if progress:
            progress(what, int(100 * (state["phase"] + frac)), 100 * phases)

    def next_phase(what: str) -> None:
        state["phase"] += 1
        report(what)

    report("GEMM peak")
    peak = None
    if opts.gemm:
        peak, gemm_n = gemm_peak_flops_per_s(device, opts.dtype)
        notes.append(f"GEMM peak: best of 3 square {opts.dtype} products of side {gemm_n}")
    next_phase("prefill")

    gen = torch.Generator().manual_seed(opts.seed)
    ids = torch.randint(0, ad.vocab_size, (B, T), generator=gen).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # -- prefill: stages and the whole model, interleaved ------------------------------------
    stage_samples, whole_samples = _interleaved(
        lambda: runner.staged(ids, ad.new_state(), 0),
        lambda: runner.whole(ids, ad.new_cache() if ad.is_decoder else None),
        None,
        opts,
        lambda f: report("prefill", f),
    )

    # -- decode: one token with `context` tokens cached ----------------------------------------
    tok = torch.randint(0, ad.vocab_size, (B, 1), generator=gen).to(device)
    dec_stage: dict[int, list[list[float]]] = {}
    dec_whole: dict[int, list[float]] = {}
    for c in contexts:
        next_phase(f"decode @ {c}")
        ds = _DecodeState(ad, B, c, dt, device)
        dec_stage[c], dec_whole[c] = _interleaved(
            lambda ds=ds, c=c: runner.staged(tok, ds.state, c),
            lambda ds=ds: runner.whole(tok, ds.state.cache),
            ds.reset,
            opts,
            lambda f, c=c: report(f"decode @ {c}", f),
        )
        del ds
    if reader:
        next_phase("energy")

    # -- per-stage memory (CUDA) and captured inputs for energy windows -------------------------
    stage_peak: dict[str, int] = {}
    captured = []
    runner.staged(ids, ShardState(cache=None), 0, capture=captured)
    run_peak = int(torch.cuda.max_memory_allocated()) if device == "cuda" else 0  # before the resets
    try:
        stage_peak = _stage_peaks(ad, ids, k, device)
    except Exception as exc:  # the profiler is optional machinery: report, do not fail the profile
        notes.append(f"per-stage peak memory not measured: {type(exc).__name__}: {exc}")

    # -- energy ---------------------------------------------------------------------------------
    power_w = opts.power_w
    if reader is not None:
        energy_source = reader.source
        window = opts.energy_window_s or reader.min_window_s
        notes.append(
            f"energy: {reader.source} counter over windows of at least {window:g} s of repeated stage "
            "calls; whole-device figure (idle power and other processes included)"
        )
    elif power_w is not None:
        energy_source = "estimate"
        notes.append(f"energy: ESTIMATE = --power-w {power_w:g} W x median latency (no hardware counter read)")
    elif device == "cpu" and (power_w := codecarbon_cpu_power_w()) is not None:
        energy_source = "estimate"
        notes.append(
            f"energy: ESTIMATE = codecarbon's CPU power model ({power_w:g} W) x median latency (no hardware counter read)"
        )
    else:
        energy_source = "none"
        notes.append("energy: not measured (no hardware counter, no power model; give --power-w)")

    prefill_energy: dict[str, float] = {}
    decode_energy: dict[int, dict[str, float]] = {}
    if reader is not None:
        window = opts.energy_window_s or reader.min_window_s
        fns = _stage_callables(ad, ids, 0, ShardState(cache=None), captured, k, reset=None)
        for name, fn in zip(names, fns, strict=True):
            prefill_energy[name], _ = measure_window(reader, fn, sync, window, time.perf_counter)
        for c in contexts:
            ds = _DecodeState(ad, B, c, dt, device)
            cap: list = []
            runner.staged(tok, ds.state, c, capture=cap)
            ds.reset()
            fns = _stage_callables(ad, tok, c, ds.state, cap, k, reset=ds.reset)
            decode_energy[c] = {}
            for name, fn in zip(names, fns, strict=True):
                decode_energy[c][name], _ = measure_window(reader, fn, sync, window, time.perf_counter)

    # -- assemble -------------------------------------------------------------------------------
    pflops = stage_flops(ad, B, T, 0, k)
    dflops = {c: stage_flops(ad, B, 1, c, k) for c in contexts}
    pbytes = stage_param_bytes(loaded)
    el = torch.tensor([], dtype=dt).element_size()
    d = ad.hidden_size
    stages: list[StageProfile] = []
    noisy_names: list[str] = []
    for si, name in enumerate(names):
        pre = _timing(stage_samples[si])
        dec: list[DecodeCost] = []
        for c in contexts:
            tm = _timing(dec_stage[c][si])
            e = decode_energy[c][name] if reader else (power_w * tm.median_ms / 1e3 if power_w else None)
            dec.append(DecodeCost(context_tokens=c, timing=tm, flops=dflops[c][name], energy_j=e))
        if reader:
            pe = prefill_energy[name]
        else:
            pe = power_w * pre.median_ms / 1e3 if power_w else None
        frac = None
        if peak and pflops[name] > 0 and pre.median_ms > 0:
            frac = pflops[name] / (pre.median_ms / 1e3) / peak
        kind, b = stage_kind(name), block_index(name)
        kv = ad.kv_cache_bytes_per_token(b, el) * B if b is not None else 0
        payload = {
            w: PayloadBytes(
                prefill_bytes=0 if kind == "head" else activation_bytes(B, T, d, w),
                per_token_bytes=0 if kind == "head" or not ad.is_decoder else activation_bytes(B, 1, d, w),
            )
            for w in WIRE_DTYPES
        }
        noisy = is_noisy(pre.median_ms, pre.iqr_ms) or any(is_noisy(x.timing.median_ms, x.timing.iqr_ms) for x in dec)
        if noisy:
            noisy_names.append(name)
        stages.append(
            StageProfile(
                name=name,
                stage_kind=kind,  # type: ignore[arg-type]
                prefill=pre,
                prefill_flops=pflops[name],
                prefill_energy_j=pe,
                decode=dec,
                param_bytes=pbytes[name],
                kv_cache_bytes_per_token=kv,
                peak_memory_bytes=stage_peak.get(name),
                achieved_flops_fraction=frac,
                payload_after=payload,
                noisy=noisy,
            )
        )

    def pass_cov(per_stage: list[list[float]], whole: list[float]) -> float:
        totals = [sum(t) for t in zip(*per_stage, strict=True)]
        w = median_iqr(whole)[0]
        return median_iqr(totals)[0] / w if w else 0.0

    whole_pre = _timing(whole_samples)
    whole_dec = [
        DecodeCost(context_tokens=c, timing=_timing(dec_whole[c]), flops=sum(dflops[c].values())) for c in contexts
    ]
    pre_cov = sum(s.prefill.median_ms for s in stages) / whole_pre.median_ms if whole_pre.median_ms else 0.0
    dec_cov = [
        sum(s.decode[i].timing.median_ms for s in stages) / wd.timing.median_ms if wd.timing.median_ms else 0.0
        for i, wd in enumerate(whole_dec)
    ]

    if loaded.identity.weights == "random":
        notes.insert(0, "weights: random (a preset's shape with seeded random weights)")
    if ad.is_decoder:
        what = "the last position only (logits_to_keep=1), as in generation" if k == 1 else f"logits_to_keep={k}"
        notes.append(f"head timed with logits for {what}")
        notes.append("decode: KV cache filled with random keys/values of the right shape, restored after each step")
    notes.append("context building (positions, masks, rotary) is charged to block.0")
    if stage_peak:
        how = "the CUDA allocator" if device == "cuda" else "torch.profiler's CPU allocation trace"
        notes.append(f"stage peak_memory_bytes: prefill transient peak above the stage's start, from {how}")
    notes.append("FLOPs: matrix products only; attention over the full new x all-keys rectangle")
    if ad.family == "gpt2":
        notes.append("GPT-2's tied embedding/LM-head weights are counted in both embed and head param_bytes")
    if device == "cpu" and opts.dtype == "fp16":
        notes.append("fp16 on CPU: runs, but most CPUs have no fp16 matrix units; bf16 or fp32 is usually faster")
    if noisy_names:
        notes.append(f"noisy (IQR/median > 10%): {', '.join(noisy_names)}")
    if not 0.9 <= pre_cov <= 1.1:
        notes.append(f"prefill coverage {pre_cov:.2f} is outside 0.9-1.1")
    if device == "cpu":
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak_src = "ru_maxrss"
    else:
        peak_mem = max(run_peak, int(torch.cuda.max_memory_allocated()))
        peak_src = "cuda_max_allocated"

    context = MeasureContext(
        machine=MachineInfo.here(accelerator=accelerator, libraries=True),
        device=device,  # type: ignore[arg-type]
        dtype=opts.dtype,  # type: ignore[arg-type]
        threads=threads,
        batch=B,
        seq_len=T,
        decode_context_tokens=contexts,
        repeats=opts.repeats,
        warmup=opts.warmup,
        energy_source=energy_source,  # type: ignore[arg-type]
        power_w=power_w if energy_source == "estimate" else None,
        logits_to_keep=k if ad.is_decoder else None,
        context_charged_to="block.0",
        min_time_s=opts.min_time_s,
    )
    result_per = token_ids_bytes(B, 1) if ad.is_decoder else 0
    result_pre = token_ids_bytes(B, 1) if ad.is_decoder else B * d * RESULT_ELEMENT_BYTES
    return Profile(
        model=loaded.identity,
        context=context,
        stages=stages,
        whole_model=WholeModel(
            prefill=whole_pre,
            decode=whole_dec,
            prefill_coverage=pre_cov,
            decode_coverage=dec_cov,
            prefill_pass_coverage=pass_cov(stage_samples, whole_samples),
            decode_pass_coverage=[pass_cov(dec_stage[c], dec_whole[c]) for c in contexts],
        ),
        input_payload=PayloadBytes(prefill_bytes=token_ids_bytes(B, T), per_token_bytes=token_ids_bytes(B, 1) if ad.is_decoder else 0),
        result_payload=PayloadBytes(prefill_bytes=result_pre, per_token_bytes=result_per),
        gemm_peak_flops_per_s=peak,
        notes=notes,
        peak_memory_bytes=peak_mem,
        peak_memory_source=peak_src,
    )


def _interleaved(
    staged: Callable[[], list[float]],
    whole: Callable[[], float],
    reset: Callable[[], None] | None,
    opts: ProfileOptions,
    report: Callable[[float], None],
) -> tuple[list[list[float]], list[float]]:
    """Alternate staged and whole passes; per-stage and whole-model samples in seconds.

    At least ``opts.repeats`` timed pairs, more for fast models until ``opts.min_time_s`` of timed
    passes have run (a median of sub-millisecond stages needs many samples to be repeatable).
    Python's garbage collector is paused while timing so a collection does not land in a stage.
    """
    import gc

    stage_samples: list[list[float]] | None = None
    whole_samples: list[float] = []
    r = 0
    spent = 0.0
    target = opts.repeats
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while r < opts.warmup + target:
            timed = r >= opts.warmup
            # alternate the order so neither side always runs first
            for side in ((0, 1) if r % 2 == 0 else (1, 0)):
                if side == 0:
                    times = staged()
                    if stage_samples is None:
                        stage_samples = [[] for _ in times]
                    if timed:
                        for samples, t in zip(stage_samples, times, strict=True):
                            samples.append(t)
                        spent += sum(times)
                else:
                    t = whole()
                    if timed:
                        whole_samples.append(t)
                        spent += t
                if reset is not None:
                    reset()
            r += 1
            if timed:
                done = r - opts.warmup
                per_pair = spent / done
                if spent < opts.min_time_s and per_pair > 0:
                    # more pairs for fast models, bounded so a tiny model cannot run forever
                    want = min(opts.max_repeats, int(opts.min_time_s / per_pair) + 1)
                    target = max(target, want)
                report(min(1.0, done / target))
    finally:
        if gc_was:
            gc.enable()
    return stage_samples or [], whole_samples


def _stage_callables(
    ad: Any, x: Any, past: int, state: Any, captured: list, k: int, reset: Callable[[], None] | None
) -> list[Callable[[], Any]]:
    """One callable per stage that re-runs it on its captured input (for energy windows)."""
    fns: list[Callable[[], Any]] = [lambda: ad.embed(x, past)]
    ctx = ad.context(captured[0], state, 0, None)
    after = reset or (lambda: None)

    def first_block(i: int = 0) -> Any:
        out = ad.block(i, captured[i], ad.context(captured[0], state, 0, None))
        after()
        return out

    def block(i: int) -> Any:
        out = ad.block(i, captured[i], ctx)
        after()
        return out

    for i in range(ad.num_blocks):
        fns.append(first_block if i == 0 else (lambda i=i: block(i)))
    if ad.num_blocks:
        fns.append(lambda: ad.head(captured[-1], ctx, k))
    else:
        fns.append(lambda: ad.head(captured[-1], ad.context(captured[0], state, 0, None), k))
    return fns


def _cuda_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn``; its CUDA memory peak above what was allocated when it started."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    res = fn()
    torch.cuda.synchronize()
    return res, max(0, int(torch.cuda.max_memory_allocated()) - base)


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (C++ logging bypasses Python)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _cpu_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` under torch's profiler; the peak of its running sum of CPU allocations and frees."""
    from torch.profiler import ProfilerActivity, profile

    with _stderr_silenced():  # the profiler's C++ side logs start/stop lines on fd 2
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            res = fn()
    current = peak = 0
    for ev in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += ev.self_cpu_memory_usage  # self: children are events of their own
        peak = max(peak, current)
    return res, int(peak)


def _stage_peaks(ad: Any, ids: Any, k: int, device: str) -> dict[str, int]:
    """Per stage, the prefill memory peak above what was allocated when it started (a stateless pass)."""
    from coinfer.models.adapters.base import ShardState

    measure = _cuda_peak if device == "cuda" else _cpu_peak
    out: dict[str, int] = {}
    state = ShardState(cache=None)
    h, out[EMBED] = measure(lambda: ad.embed(ids, 0))
    ctx = ad.context(h, state, 0, None) if ad.num_blocks == 0 else None
    for i in range(ad.num_blocks):

        def step(i: int = i, h: Any = h, ctx: Any = ctx) -> tuple[Any, Any]:
            c = ad.context(h, state, 0, None) if i == 0 else ctx  # charged to block.0
            return c, ad.block(i, h, c)

        (ctx, h), out[block_name(i)] = measure(step)
    _, out[HEAD] = measure(lambda: ad.head(h, ctx, k))
    return out
