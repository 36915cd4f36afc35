"""Synthetic profiles and pruning reports for tests, benchmarks and demos without a measurement.

The numbers are made up (or random with a seed); a profile made here says so in ``notes`` and
``derived_from``. Nothing here is used when planning from real files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from coinfer.models.payload import activation_bytes, token_ids_bytes
from coinfer.reports.common import MachineInfo, ModelIdentity
from coinfer.reports.profile import DecodeCost, MeasureContext, PayloadBytes, Profile, StageProfile, Timing
from coinfer.reports.prune import (
    BlockPruning,
    CalibrationInfo,
    Distortion,
    PruneReport,
    RatioResult,
    Speedup,
)
from coinfer.reports.quality import PerplexityProtocol, QualityFigures, TextRef
from coinfer.reports.robustness import ChannelCondition, Estimate, RobustnessPoint, RobustnessProfile
from coinfer.vocab import WIRE_DTYPES, block_name, stage_kind, stage_names

_MACHINE = MachineInfo(hostname="synthetic", os="none", cpu="none", cpu_count_logical=1, python="3")


def identity(num_blocks: int, hidden: int = 64, is_decoder: bool = True, config: str = "ab") -> ModelIdentity:
    """A made-up model identity (``config`` seeds the config hash: different = other model)."""
    return ModelIdentity(
        name=f"synthetic-{num_blocks}", family="llama" if is_decoder else "bert", model_type="llama",
        config_sha256=(config * 64)[:64], weights="random", weights_seed=0, num_blocks=num_blocks,
        hidden_size=hidden, vocab_size=1000, num_parameters=1000 * num_blocks, is_decoder=is_decoder,
    )


def synthetic_profile(
    num_blocks: int,
    *,
    stage_ms: Sequence[float] | None = None,
    decode_ms: Sequence[Sequence[float]] | None = None,
    decode_contexts: Sequence[int] = (16, 64),
    energy_j_per_ms: float | None = 0.01,
    param_bytes: Sequence[int] | None = None,
    kv_bytes_per_token: int = 512,
    hidden: int = 64,
    seq_len: int = 32,
    batch: int = 1,
    is_decoder: bool = True,
    config: str = "ab",
    seed: int | None = None,
) -> Profile:
    """A profile with the given (or random, with ``seed``) per-stage costs.

    Args:
        num_blocks: L.
        stage_ms: Prefill median per stage (L+2 values); default 1 ms per block, 0.2 for embed/head.
        decode_ms: Per stage, the decode median at each of ``decode_contexts``; default 10% of
            prefill, growing 20% over the contexts.
        decode_contexts: The measured decode contexts.
        energy_j_per_ms: Energy per ms of compute (None = no energy figures).
        param_bytes: Weight bytes per stage.
        kv_bytes_per_token: KV bytes per token of each block.
        hidden: Hidden size (sets payloads, 4 bytes per fp32 element).
        seq_len: Prompt tokens profiled.
        batch: Batch.
        is_decoder: Decoders have decode timings and per-token payloads.
        config: Seeds the config hash.
        seed: When given, costs are random (uniform) instead of the defaults above.
    """
    n = num_blocks + 2
    rng = np.random.default_rng(seed) if seed is not None else None
    if stage_ms is None:
        stage_ms = (rng.uniform(0.1, 5.0, n) if rng is not None else [0.2, *([1.0] * num_blocks), 0.2])
    if param_bytes is None:
        param_bytes = (rng.integers(1, 10**6, n) if rng is not None else [4000, *([10**5] * num_blocks), 4000])
    names = stage_names(num_blocks)
    kinds = [stage_kind(name) for name in names]
    stages = []
    for i, name in enumerate(names):
        ms = float(stage_ms[i])
        dec = []
        if is_decoder:
            if decode_ms is not None:
                vals = [float(v) for v in decode_ms[i]]
            elif rng is not None:
                vals = sorted(rng.uniform(0.01, 1.0, len(decode_contexts)).tolist())
            else:
                vals = [0.1 * ms * (1 + 0.2 * j / max(1, len(decode_contexts) - 1)) for j in range(len(decode_contexts))]
            dec = [DecodeCost(context_tokens=c, timing=Timing(median_ms=v, iqr_ms=0.0, repeats=3), flops=1.0,
                              energy_j=None if energy_j_per_ms is None else v * energy_j_per_ms)
                   for c, v in zip(decode_contexts, vals, strict=True)]
        is_last = i == n - 1
        pay = {
            d: PayloadBytes(
                prefill_bytes=0 if is_last else activation_bytes(batch, seq_len, hidden, d),
                per_token_bytes=0 if (is_last or not is_decoder) else activation_bytes(batch, 1, hidden, d),
            )
            for d in WIRE_DTYPES
        }
        stages.append(StageProfile(
            name=name, stage_kind=kinds[i], prefill=Timing(median_ms=ms, iqr_ms=0.0, repeats=3), prefill_flops=1.0,
            prefill_energy_j=None if energy_j_per_ms is None else ms * energy_j_per_ms, decode=dec,
            param_bytes=int(param_bytes[i]), kv_cache_bytes_per_token=kv_bytes_per_token if kinds[i] == "block" else 0,
            payload_after=pay,
        ))
    ctx = MeasureContext(
        machine=_MACHINE, device="cpu", dtype="fp32", threads=1, batch=batch, seq_len=seq_len,
        decode_context_tokens=list(decode_contexts) if is_decoder else [], repeats=3, warmup=0,
        energy_source="estimate" if energy_j_per_ms is not None else "none",
    )
    result = (PayloadBytes(prefill_bytes=token_ids_bytes(batch, 1), per_token_bytes=token_ids_bytes(batch, 1))
              if is_decoder else PayloadBytes(prefill_bytes=batch * hidden * 4, per_token_bytes=0))
    return Profile(
        model=identity(num_blocks, hidden, is_decoder, config), context=ctx, stages=stages,
        input_payload=PayloadBytes(prefill_bytes=token_ids_bytes(batch, seq_len),
                                   per_token_bytes=token_ids_bytes(batch, 1)),
        result_payload=result, derived_from="synthetic", notes=["synthetic profile: made-up numbers"],
    )


def _speedup(s: float, r: float, stages: list[str]) -> Speedup:
    # Fill what this version of the schema asks for (the pruner's schema grows optional details).
    values = dict(prefill_measured=s, decode_measured=s, prefill_flops_ratio=1 / (1 - r), realised_over_ideal=s * (1 - r),
                  original_prefill_ms=1.0, pruned_prefill_ms=1.0 / s, measured_stages=stages or ["embed"],
                  prefill_tokens=32, repeats=3, max_cv=0.0)
    return Speedup(**{k: v for k, v in values.items() if k in Speedup.model_fields})


def synthetic_prune_report(
    num_blocks: int,
    ratios: Sequence[float] = (0.2, 0.4),
    speedups: Sequence[float] | None = None,
    distortions: Sequence[float] | None = None,
    scope: str = "all",
    split: int | None = None,
    config: str = "ab",
    hidden: int = 64,
    is_decoder: bool = True,
    ppl_ratios: Sequence[float] | None = None,
) -> PruneReport:
    """A pruning report with, per ratio, a speed-up (default 1 + ratio) and distortion (ratio^2);
    with ``ppl_ratios``, perplexities of a dense 10 times each on a made-up evaluation text."""
    speedups = speedups or [1.0 + r for r in ratios]
    distortions = distortions or [r * r for r in ratios]
    pruned = range(num_blocks) if scope == "all" else range(split or 0)
    results = []
    for r, s, d in zip(ratios, speedups, distortions, strict=True):
        blocks = [BlockPruning(name=block_name(i), params_before=1000, params_after=int(1000 * (1 - r)),
                               heads_before=4, heads_after=4, mlp_channels_before=8, mlp_channels_after=8,
                               prefill_flops_before=1.0, prefill_flops_after=1.0 - r, param_distortion=d)
                  for i in pruned]
        results.append(RatioResult(
            requested_ratio=r, achieved_param_ratio=r, pruned_anything=True, blocks=blocks, params_before=1000,
            params_after=int(1000 * (1 - r)), prefill_flops_before=1.0, prefill_flops_after=1.0 - r,
            speedup=_speedup(s, r, [block_name(i) for i in pruned]),
            distortion=Distortion(output_rel_mse=d, param_distortion=d),
            quality=_quality(10.0 * ppl_ratios[len(results)]) if ppl_ratios else None,
        ))
    return PruneReport(
        model=identity(num_blocks, hidden, is_decoder, config), machine=_MACHINE, threads=1, importance="magnitude",
        scope=scope, split=split,
        calibration=CalibrationInfo(source="builtin", sha256="0" * 64, num_sequences=1, tokens=1), results=results,
        dense_quality=_quality(10.0) if ppl_ratios else None,
    )


def _quality(perplexity: float) -> QualityFigures:
    text = TextRef(name="made-up", sha256="0" * 64, source="synthetic")
    protocol = PerplexityProtocol(text=text, tokenizer="model", tokens=512, window=256, stride=256, bos_prepended=False,
                                  first_token_scored=False, dtype="fp32")
    return QualityFigures(protocol=protocol, perplexity=perplexity, nll_nats=math.log(perplexity))


def synthetic_robustness(
    num_blocks: int,
    *,
    cuts: Sequence[int] | None = None,
    wires: Sequence[str] = ("fp32", "fp16", "int8"),
    impair_wires: Sequence[str] | None = None,
    erasure: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.3),
    snr_db: Sequence[float] = (),
    hidden: int = 64,
    is_decoder: bool = True,
    config: str = "ab",
    draws: int = 8,
    evaluations_per_draw: int = 8,
    sensitivity: float = 3.0,
    seed: int = 0,
) -> RobustnessProfile:
    """A made-up robustness profile in the shape ``coinfer channel`` writes (for tests and benchmarks).

    Quality loss grows linearly with the erasure probability (and with 10^(-SNR/10) for AWGN),
    ``sensitivity / (1 + cut / 4)`` times faster at shallow cuts (deeper cuts are more robust,
    as the adaptive-splitting paper found), plus a fixed cost per wire precision; the confidence
    interval is +-10% of the loss, with seeded noise on the means. Decoders report the perplexity
    ratio ``1 + loss``, encoders the pooled cosine ``1 - loss / 10``.
    """
    rng = np.random.default_rng(seed)
    cuts = list(cuts) if cuts is not None else [1, 2, *range(3, num_blocks + 2, 2)]
    impair_wires = list(impair_wires) if impair_wires is not None else list(wires)
    wire_cost = {"fp32": 0.0, "fp16": 0.0005, "int8": 0.01, "int4": 0.06}
    conditions = [ChannelCondition(wire_dtype=w) for w in wires]
    conditions += [ChannelCondition(wire_dtype=w, impairment="erasure", erasure_p=p) for w in impair_wires for p in erasure]
    conditions += [ChannelCondition(wire_dtype=w, impairment="awgn", snr_db=s) for w in impair_wires for s in snr_db]
    points = []
    total_draws = 0
    for c in cuts:
        f = sensitivity / (1 + c / 4)
        for cond in conditions:
            level = {"none": 0.0, "erasure": cond.erasure_p, "awgn": 10 ** (-(cond.snr_db or 0) / 10)}[cond.impairment]
            loss = wire_cost.get(cond.wire_dtype, 0.1) + f * level
            n = 1 if cond.deterministic else draws
            total_draws += n
            mean = loss * (1 + (0.05 * rng.standard_normal() if n > 1 else 0.0))
            half = 0.1 * loss if n > 1 else 0.0
            fig = (Estimate(mean=1 + mean, ci_low=1 + mean - half, ci_high=1 + mean + half, draws=n) if is_decoder
                   else Estimate(mean=1 - mean / 10, ci_low=1 - (mean + half) / 10, ci_high=1 - (mean - half) / 10,
                                 draws=n))
            points.append(RobustnessPoint(
                cut=c, cut_name=stage_names(num_blocks)[c - 1], condition=cond,
                payload_bytes_per_token=activation_bytes(1, 1, hidden, cond.wire_dtype),
                perplexity_ratio=fig if is_decoder else None, pooled_cosine=None if is_decoder else fig,
                output_rel_mse=Estimate(mean=mean, ci_low=mean, ci_high=mean, draws=n),
            ))
    return RobustnessProfile(
        model=identity(num_blocks, hidden, is_decoder, config), machine=_MACHINE,
        metric="perplexity_ratio" if is_decoder else "pooled_cosine", clean_perplexity=20.0 if is_decoder else None,
        seed=seed, cuts=cuts, points=points, model_evaluations=total_draws * evaluations_per_draw,
        notes=["synthetic robustness profile: made-up numbers"],
    )
