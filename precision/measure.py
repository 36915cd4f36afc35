"""Measure every precision (x pruning ratio): per-stage speed against fp32, quality, exported shards.

Steps: read the texts, load and prepare the model, fix the scope and the timed shard, the fp32
reference outputs, pruning scores (when a ratio is above 0), then per ratio: a pruned copy, each
precision applied to a copy of it, all variants timed interleaved with the fp32 unpruned shard,
their quality, their export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coinfer.errors import DeviceUnavailableError, UserInputError
from coinfer.models.shards import Shard
from coinfer.precision import evaluation, timing
from coinfer.precision.apply import Quantized, Scope, quantized_copy
from coinfer.precision.export import export_folder, export_variant
from coinfer.precision.modules import kernel_for
from coinfer.reports.common import MachineInfo
from coinfer.reports.precision import LoadSample, PrecisionReport, PrecisionResult, Quality, StageLatency
from coinfer.reports.prune import CalibrationInfo
from coinfer.vocab import EMBED, HEAD, block_index

REFERENCE = ("fp32", 0.0)


@dataclass
class Texts:
    """The evaluation text and, when pruning, the calibration text (source, text)."""

    eval: evaluation.EvalText | None
    calib: tuple[str, str] | None


def read_texts(opts: Any) -> Texts:
    """Read and check the texts before any model work.

    Raises:
        UserInputError: A missing or unreadable text, or calibration text equal to the evaluation text.
    """
    from coinfer.pruner import calibration

    ev = evaluation.resolve_eval_text(opts.eval_text) if opts.quality else None
    cal = calibration.read_text(opts.calib) if any(r > 0 for r in opts.ratios) else None
    if ev is not None and cal is not None and not _disjoint(ev.text, cal[1]):
        raise UserInputError("--calib and the evaluation text overlap: quality must be measured on text the pruning never saw")
    return Texts(ev, cal)


def _disjoint(a: str, b: str) -> bool:
    a, b = a.strip(), b.strip()
    return a not in b and b not in a


@dataclass
class _Setup:
    """What every ratio shares."""

    opts: Any
    loaded: Any
    scope: Scope
    end: int  # one past the last timed stage position
    prompt: torch.Tensor
    windows: list[torch.Tensor]
    ref: evaluation.Reference | None

    @property
    def ad0(self) -> Any:
        return self.loaded.adapter


def _scope(ad: Any, opts: Any) -> tuple[Scope, int]:
    L = ad.num_blocks
    if opts.split is not None and not 0 <= opts.split <= L:
        raise UserInputError(f"--split {opts.split} outside 0..{L} for a {L}-block model")
    if opts.scope == "device":
        return Scope(tuple(range(opts.split)), False), opts.split + 1
    return Scope(tuple(range(L)), True), L + 2


def _load(opts: Any, texts: Texts) -> tuple[_Setup, Any]:
    """Load and prepare the model; the reference outputs on the evaluation windows."""
    from coinfer.models.loading import load_model

    loaded = load_model(opts.model, seed=opts.seed)
    with torch.no_grad():
        loaded.adapter.prepare_for_pruning()  # GPT-2: fused Conv1D attention -> Linear q/k/v (same numbers)
    if opts.device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("--device cuda: no CUDA device here")
        loaded.model.to("cuda")
    scope, end = _scope(loaded.adapter, opts)
    gen = torch.Generator().manual_seed(opts.seed)
    prompt = torch.randint(0, loaded.adapter.vocab_size, (1, opts.prefill_tokens), generator=gen).to(opts.device)
    windows, protocol, ref = [], None, None
    if texts.eval is not None:
        windows, protocol = evaluation.eval_windows(loaded, texts.eval, opts.eval_tokens, opts.eval_window)
        windows = [w.to(opts.device) for w in windows]
        ref = evaluation.reference(loaded.adapter, windows)
    return _Setup(opts, loaded, scope, end, prompt, windows, ref), protocol


def _scores(s: _Setup, texts: Texts) -> tuple[dict, CalibrationInfo | None]:
    """Pruning importance on the unpruned model (only when a ratio is above 0)."""
    if texts.calib is None or not s.scope.blocks:
        return {}, None
    from coinfer.pruner import calibration, importance

    source, text = texts.calib
    calib = calibration.build(text, source, s.loaded, min(s.opts.eval_window, 256), 32)
    windows = [w.to(s.opts.device) for w in calib.windows]
    scores = importance.scores(s.opts.importance, s.ad0, list(s.scope.blocks), windows)
    info = CalibrationInfo(source=calib.source, sha256=calib.sha256, num_sequences=len(windows), tokens=calib.tokens,
                           tokenizer=calib.tokenizer)  # type: ignore[arg-type]
    return scores, info


def measure_all(opts: Any, texts: Texts) -> PrecisionReport:
    """See :func:`coinfer.precision.api.run_quantize`."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    load0 = _load_average()
    s, protocol = _load(opts, texts)
    scores, calib_info = _scores(s, texts)
    if protocol is not None and calib_info is not None:
        protocol.calibration_disjoint = True  # read_texts refused overlapping texts
    results: list[PrecisionResult] = []
    final = Path(opts.export_dir) if opts.export_dir else None
    with export_folder(final, opts.force) as tmp:
        for r in opts.ratios:
            results += _measure_ratio(s, r, scores, tmp)
    ad0 = s.ad0
    return PrecisionReport(
        model=s.loaded.identity,
        machine=MachineInfo.here(libraries=True),
        device=opts.device,
        threads=torch.get_num_threads(),
        scope=opts.scope,
        split=opts.split,
        group_size=opts.group_size,
        timed_stages=ad0.stage_names()[: s.end],
        prefill_tokens=opts.prefill_tokens,
        decode_context_tokens=opts.prefill_tokens if ad0.is_decoder else None,
        repeats=opts.repeats,
        protocol=protocol,
        reference_perplexity=s.ref.perplexity if s.ref is not None else None,
        importance=opts.importance if calib_info is not None else None,
        calibration=calib_info,
        load=LoadSample(load_average_start=load0, load_average_end=_load_average(), cpu_count=os.cpu_count()),
        export_dir=str(final) if final is not None else None,
        results=results,
        notes=_notes(s),
    )


def _notes(s: _Setup) -> list[str]:
    notes = []
    ad0 = s.ad0
    if ad0.family == "gpt2":
        notes.append("gpt2: fused Conv1D attention converted to separate q/k/v Linear projections (same numbers)")
    if s.scope.head and ad0.head_linears():
        notes.append("the LM head is quantized with the blocks; the embedding lookup stays fp32")
    notes.append("weight-only: int8/int4/bf16 matrices read bf16 activations (cast in, output cast back); norms, "
                 "attention softmax, residual stream and KV cache stay fp32")
    if s.loaded.identity.weights == "random":
        notes.append("random weights: quality figures describe this random model only")
    return notes


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _measure_ratio(s: _Setup, r: float, scores: dict, export_root: Path | None) -> list[PrecisionResult]:
    """Every precision at pruning ratio ``r``: timed together with the fp32 unpruned shard."""
    from coinfer.pruner.structure import prune_copy

    opts = s.opts
    base = s.ad0 if r == 0 else prune_copy(s.loaded, r, scores, list(s.scope.blocks), opts.round_to)[0]
    variants: dict[str, Quantized] = {}
    results: dict[str, PrecisionResult] = {}
    for p in (opts.precisions if "torch" in opts.engines else []):
        try:
            kernel = kernel_for(p, opts.device)
        except DeviceUnavailableError as exc:
            results[p] = PrecisionResult(precision=p, pruning_ratio=r, supported=False, unsupported_reason=str(exc))
            continue
        q = quantized_copy(base, p, s.scope, opts.group_size)
        variants[p] = q
        results[p] = PrecisionResult(precision=p, pruning_ratio=r, supported=True, kernel=kernel,
                                     quantized_modules=len(q.modules), weight_bytes=_scope_bytes(q, s.scope))
    if opts.measure_speed and variants:
        _speed(s, r, variants, results)
    for p, q in variants.items():
        res = results[p]
        if s.ref is not None:
            res.quality = _perfect(s.ref) if (p, r) == REFERENCE else evaluation.quality(q.adapter, s.windows, s.ref)
        if export_root is not None:
            res.shards = export_variant(q, s.loaded, opts.split, r, export_root, opts.scope)
    out = [results[p] for p in opts.precisions] if "torch" in opts.engines else []
    if "onnxruntime" in opts.engines:
        from coinfer.precision.measure_ort import ort_results

        out += ort_results(s, r, base, export_root)
    return out


def _scope_bytes(q: Quantized, scope: Scope) -> int:
    ad = q.adapter
    mods = [ad.blocks()[b] for b in scope.blocks] + (list(ad.head_modules().values()) if scope.head else [])
    return q.weight_bytes(mods)


def _perfect(ref: evaluation.Reference) -> Quality:
    # The reference against itself: identical outputs by construction.
    return Quality(output_rel_mse=0.0, perplexity=ref.perplexity, perplexity_ratio=1.0 if ref.perplexity else None,
                   kl_next_token_nats=0.0 if ref.logprobs is not None else None,
                   top1_agreement=1.0 if ref.logprobs is not None else None,
                   pooled_cosine=1.0 if ref.logprobs is None else None)


def _speed(s: _Setup, r: float, variants: dict[str, Quantized], results: dict[str, PrecisionResult]) -> None:
    """Time the variants interleaved with the fp32 unpruned shard; fill stage rows and speed-ups."""
    opts = s.opts
    keys = {p: (p, r) for p in variants}
    runs = [timing.Variant(REFERENCE, Shard(s.ad0, 0, s.end))]
    runs += [timing.Variant(keys[p], Shard(q.adapter, 0, s.end)) for p, q in variants.items() if keys[p] != REFERENCE]
    context = opts.prefill_tokens if s.ad0.is_decoder else None
    samples = timing.time_variants(runs, s.prompt, context, opts.repeats, device=opts.device)
    ref = samples[REFERENCE]
    ref_p, ref_d = timing.medians_ms(ref.prefill), timing.medians_ms(ref.decode)
    names = s.ad0.stage_names()[: s.end]
    for p in variants:
        got = samples[keys[p]]
        pm, dm = timing.medians_ms(got.prefill), timing.medians_ms(got.decode)
        res = results[p]
        sizes = _stage_bytes(variants[p], names)
        res.stages = [
            StageLatency(stage=n, weight_bytes=sizes[i], prefill_ms=pm[i], decode_ms=dm[i] if dm else None,
                         prefill_speedup=_ratio(ref_p[i], pm[i]), decode_speedup=_ratio(ref_d[i], dm[i]) if dm else None)
            for i, n in enumerate(names)
        ]
        res.prefill_ms, res.prefill_speedup = sum(pm), _ratio(sum(ref_p), sum(pm))
        if dm:
            res.decode_ms, res.decode_speedup = sum(dm), _ratio(sum(ref_d), sum(dm))
        res.max_cv = timing.max_cv(got.prefill, got.decode)


def _stage_bytes(q: Quantized, names: list[str]) -> list[int]:
    """Weight bytes of each named stage of ``q``'s model (tied weights counted in each stage)."""
    ad = q.adapter
    mods = {EMBED: list(ad.embed_modules().values()), HEAD: list(ad.head_modules().values())}
    return [q.weight_bytes(mods[n] if n in mods else [ad.blocks()[block_index(n)]]) for n in names]


def _ratio(a: float, b: float) -> float | None:
    return a / b if a > 0 and b > 0 else None
