"""Measure every requested ratio: what was removed, distortion, speed-up; export shards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from coinfer.models.adapters.base import FamilyAdapter, ShardState
from coinfer.pruner import metrics
from coinfer.pruner.structure import scope_blocks
from coinfer.quiet import QuietWatch, note_line, refuse_if_strict, warning_line
from coinfer.reports.common import MachineInfo
from coinfer.reports.prune import (
    BlockPruning,
    CalibrationInfo,
    CurvePoint,
    Distortion,
    LaplaceFit,
    PruneReport,
    RatioResult,
    ShardFile,
    Speedup,
)
from coinfer.vocab import block_name

ONNX_CHECK_SEQ_LENS = (8, 24)
ONNX_TOLERANCE = 1e-4
_RHO_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_BITS_GRID = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def _scope_flops(ad: FamilyAdapter, stages: list[str], tokens: int, context: int) -> float:
    return sum(metrics.stage_flops(ad, s, tokens, context) for s in stages)


def _laplace(ad: FamilyAdapter, blocks: list[int], ratios: list[float]) -> LaplaceFit | None:
    # Streaming sums: the scope's matrices can be hundreds of MB.
    n, s_abs, s_sq = 0, 0.0, 0.0
    for b in blocks:
        for p in ad.blocks()[b].parameters():
            if p.dim() >= 2:
                w = p.detach().double()
                n += w.numel()
                s_abs += float(w.abs().sum())
                s_sq += float(w.pow(2).sum())
    if n == 0 or s_abs == 0:
        return None
    lam = n / s_abs
    rhos = sorted({*_RHO_GRID, *(r for r in ratios if r > 0)})
    return LaplaceFit(
        lam=lam,
        variance=2.0 / lam**2,
        empirical_variance=s_sq / n,
        magnitude_pruning_curve=[CurvePoint(x=r, distortion=metrics.magnitude_pruning_distortion(r)) for r in rhos],
        shannon_lower_bound=[CurvePoint(x=b, distortion=metrics.shannon_lower_bound(b)) for b in _BITS_GRID],
    )


def _timed_shard(ad: FamilyAdapter, opts: Any) -> Any:
    from coinfer.models.shards import Shard

    end = ad.num_blocks + 2 if opts.scope == "all" else opts.split + 1
    return Shard(ad, 0, end, logits_to_keep=1)


def _speed(ad0: FamilyAdapter, ad: FamilyAdapter, prompt: torch.Tensor, opts: Any) -> Speedup:
    s0, s1 = _timed_shard(ad0, opts), _timed_shard(ad, opts)
    stages = s0.stage_names()
    T = prompt.shape[1]
    fns = [lambda s=s: s(prompt, ShardState(cache=None)) for s in (s0, s1)]
    decode = ad0.is_decoder and len(s0.block_indices) > 0
    tok = prompt[:, -1:]
    if decode:
        states = []
        for s in (s0, s1):
            st = s.new_state()
            s(prompt, st)
            states.append(st)

        def step(s: Any, st: ShardState) -> None:
            s(tok, st)
            st.cache.crop(-1)  # back to the prompt, so every step sees the same context
            st.past_length -= 1

        fns += [lambda s=s, st=st: step(s, st) for s, st in zip((s0, s1), states, strict=True)]
    watch = QuietWatch("cpu", torch.get_num_threads()).start()
    with torch.no_grad():
        meds, cvs = metrics.interleaved_medians(fns, opts.repeats, warmup=2)
    contention = watch.stop()
    f0, f1 = _scope_flops(ad0, stages, T, T), _scope_flops(ad, stages, T, T)
    ideal = f0 / f1 if f1 > 0 else 1.0
    measured = meds[0] / meds[1]
    out = dict(
        measured_stages=stages,
        prefill_tokens=T,
        repeats=opts.repeats,
        prefill_measured=measured,
        prefill_flops_ratio=ideal,
        realised_over_ideal=measured / ideal,
        original_prefill_ms=meds[0],
        pruned_prefill_ms=meds[1],
        max_cv=max(cvs),
        contention=contention,
    )
    if decode:
        d0, d1 = _scope_flops(ad0, stages, 1, T + 1), _scope_flops(ad, stages, 1, T + 1)
        dm = meds[2] / meds[3]
        out.update(
            decode_measured=dm,
            decode_flops_ratio=d0 / d1,
            decode_realised_over_ideal=dm / (d0 / d1),
            original_decode_ms=meds[2],
            pruned_decode_ms=meds[3],
        )
    return Speedup(**out)


def _onnx_diff(shard: Any, sess: Any) -> dict[str, float]:
    from coinfer.models.shard_io import example_input

    diffs = {}
    for n in ONNX_CHECK_SEQ_LENS:
        x = example_input(shard, n)
        with torch.no_grad():
            ref = shard(x, ShardState(cache=None))
        want = ref if isinstance(ref, torch.Tensor) else ref.last_hidden_state
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        diffs[str(n)] = float((torch.from_numpy(got) - want).abs().max())
    return diffs


def _export_ratio(loaded: Any, ad: FamilyAdapter, ratio: float, root: Path, opts: Any) -> tuple[list[ShardFile], dict, list[str]]:
    from coinfer.models import shard_io
    from coinfer.models.shards import split
    from coinfer.reports.io import file_sha256

    sub = f"ratio-{ratio:.3f}"
    folder = root / sub
    folder.mkdir()
    s = split(ad, opts.split)
    files: list[ShardFile] = []
    diffs: dict[str, float] = {}
    notes: list[str] = []
    for role, shard in (("device", s.device), ("server", s.server)):
        written = shard_io.export_safetensors(
            shard, folder, role, loaded.identity, requested_ratio=ratio, scope=opts.scope
        )
        if opts.onnx and not shard.is_empty and (shard.has_embed or len(shard.block_indices) or shard.has_head):
            written.update(shard_io.export_onnx(shard, folder, role))
            sess = shard_io.load_onnx_shard(
                written["onnx"], file_sha256(written["onnx"]), file_sha256(written["onnx-data"]), threads=torch.get_num_threads()
            )
            for n, d in _onnx_diff(shard, sess).items():
                diffs[n] = max(diffs.get(n, 0.0), d)
        for fmt, path in written.items():
            files.append(
                ShardFile(role=role, format=fmt, path=f"{sub}/{path.name}", sha256=file_sha256(path), size_bytes=path.stat().st_size)
            )
    if diffs and max(diffs.values()) > ONNX_TOLERANCE:
        notes.append(f"ONNX shard differs from torch by {max(diffs.values()):.3g} (> {ONNX_TOLERANCE:g})")
    return files, diffs, notes


@dataclass
class _Baseline:
    """The unpruned model as every ratio is compared with it."""

    ad: FamilyAdapter
    blocks: list[int]  # the blocks in scope
    windows: list[torch.Tensor]
    pruner: Any  # recipe.Pruner: the recipe resolved, its statistics, scores and block sensitivities
    ref: Any  # metrics.OutputStats of the original
    perplexity: float | None
    sq_norm: dict[int, float]  # per block: squared norm of its weights
    params: dict[int, int]  # per block: parameters
    model_params: int
    evalset: Any = None  # models.perplexity.EvalSet of the evaluation text (decoders), or None

    @property
    def tokens(self) -> int:
        """Tokens per calibration window (the timed prompt too)."""
        return int(self.windows[0].shape[1])

    @property
    def half(self) -> int:
        """Windows in the fitting half; the rest are held out for the bound."""
        return len(self.windows) // 2


def measure_all(loaded: Any, calib: Any, opts: Any, eval_text: Any = None) -> PruneReport:
    """Prune the prepared model at each ratio and measure; see :func:`coinfer.pruner.api.run_prune`.

    ``eval_text`` (a :class:`~coinfer.models.corpora.Text`, decoders only) adds the quality of each
    ratio under the perplexity protocol, beside the dense model's.
    """
    from coinfer.pruner import tp_adapter

    base = _baseline(loaded.adapter, calib, opts)
    notes = _model_notes(base, calib, opts)
    base.evalset, dense_quality = _dense_quality(loaded, eval_text, calib, opts, notes)
    results: list[RatioResult] = []
    final = Path(opts.export_dir) if opts.export_dir else None
    with _export_folder(final, opts.force) as export_tmp:
        for r in opts.ratios:
            res, ad = _measure_ratio(loaded, base, r, opts)
            if base.evalset is not None:
                res.quality = _quality(ad, base)
            if export_tmp is not None:
                files, diffs, enotes = _export_ratio(loaded, ad, r, export_tmp, opts)
                res.shards, res.onnx_max_abs_diff = files, diffs
                res.notes += enotes
            results.append(res)
            del ad
    c_all, c_fit, bound = _bound(results, base.half, notes)
    return PruneReport(
        model=loaded.identity,
        machine=MachineInfo.here(libraries=True),
        threads=torch.get_num_threads(),
        importance=base.pruner.recipe.importance,
        allocation=base.pruner.recipe.allocation,
        compensation=base.pruner.recipe.compensation,
        block_sensitivity=(None if base.pruner.sensitivity is None
                           else {block_name(b): v for b, v in base.pruner.sensitivity.items()}),
        scope=opts.scope,
        split=opts.split,
        calibration=CalibrationInfo(
            source=calib.source, sha256=calib.sha256, num_sequences=len(base.windows), tokens=calib.tokens, tokenizer=calib.tokenizer
        ),
        dense_quality=dense_quality,
        results=results,
        empirical_c=max(c_all) if c_all else None,
        empirical_c_fit=max(c_fit) if c_fit else None,
        bound_holds=bound,
        laplace=_laplace(base.ad, base.blocks, opts.ratios),
        export_dir=str(final) if final is not None else None,
        torch_pruning_version=tp_adapter.version(),
        seq_len=base.tokens,
        notes=notes,
    )


def _dense_quality(loaded: Any, eval_text: Any, calib: Any, opts: Any, notes: list[str]) -> tuple[Any, Any]:
    """The evaluation set and the dense model's figures on it (None, None: no text or an encoder)."""
    if eval_text is None:
        return None, None
    if not loaded.adapter.is_decoder:
        notes.append("encoder: quality on the evaluation text is the pooled cosine on the calibration windows "
                     "(no perplexity)")
        return None, None
    from coinfer.models import perplexity

    evalset = perplexity.prepare_for(loaded, eval_text, tokens=opts.eval_tokens, window=opts.eval_window)
    if eval_text.name == calib.source or eval_text.sha256 == calib.sha256:
        notes.append(f"the evaluation text is the calibration text ({calib.source}): the perplexity is not held out")
    return evalset, perplexity.evaluate(perplexity.logits_fn(loaded.adapter), evalset)


def _quality(ad: FamilyAdapter, base: _Baseline) -> Any:
    """A pruned model's figures on the evaluation set, against the dense model."""
    from coinfer.models import perplexity

    return perplexity.evaluate(perplexity.logits_fn(ad), base.evalset, reference=perplexity.logits_fn(base.ad),
                               reference_name="dense")


def _baseline(ad0: FamilyAdapter, calib: Any, opts: Any) -> _Baseline:
    """The recipe's statistics and scores, reference outputs and per-block norms of the unpruned model."""
    from coinfer.pruner import recipe

    blocks = scope_blocks(ad0.num_blocks, opts.scope, opts.split)
    windows = calib.windows
    rec = recipe.resolve(opts.importance, opts.allocation, opts.compensation, ad0.is_decoder)
    pruner = recipe.Pruner(ad0, blocks, windows, rec, opts.round_to)
    ref = metrics.run_outputs(ad0, windows)
    return _Baseline(
        ad=ad0,
        blocks=blocks,
        windows=windows,
        pruner=pruner,
        ref=ref,
        perplexity=metrics.perplexity(ref.logprobs, windows) if ad0.is_decoder else None,
        sq_norm={b: metrics.block_sq_norm(ad0, b) for b in range(ad0.num_blocks)},
        params={b: metrics.block_params(ad0, b) for b in range(ad0.num_blocks)},
        model_params=sum(p.numel() for p in ad0.model.parameters()),
    )


def _model_notes(base: _Baseline, calib: Any, opts: Any) -> list[str]:
    """What a reader of the report must know about the calibration, the model and the scope."""
    ad0, blocks = base.ad, base.blocks
    notes = list(opts.notes)
    if calib.tokenizer == "bytes":
        notes.append("calibration tokens are UTF-8 bytes modulo the vocabulary: the model ships no tokenizer")
    if ad0.module_layout() != "native" and ad0.family == "gpt2":
        notes.append("gpt2: fused Conv1D attention converted to separate q/k/v Linear projections before pruning")
    rec = base.pruner.recipe
    if rec.importance == "taylor" and not ad0.is_decoder:
        notes.append("taylor on an encoder: loss is the mean squared norm of the final hidden states (no labels)")
    if any(ad0.attention_heads(b)[1] < ad0.attention_heads(b)[0] for b in blocks):
        notes.append("grouped-query attention: key/value heads kept, query heads removed evenly per kv group")
    if not blocks:
        notes.append("scope holds no blocks (split 0): nothing can be pruned")
    notes.append(f"recipe: {rec.describe()}; ratio = fraction of the scope's prunable parameters (query heads, MLP "
                 "channels)")
    return notes + base.pruner.notes


@contextmanager
def _export_folder(final: Path | None, force: bool) -> Iterator[Path | None]:
    """A temporary folder beside ``final`` that replaces it when the block succeeds (None: no export).

    On any failure the temporary folder is removed and ``final`` is left as it was.
    """
    if final is None:
        yield None
        return
    from coinfer.reports.io import sweep_stale_temps, temp_prefix

    parent = final.parent if str(final.parent) else Path(".")
    sweep_stale_temps(parent, final.name)  # left by a prune killed with SIGKILL
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=parent))
    try:
        yield tmp
        _finalise(tmp, final, force)
    except BaseException:  # noqa: BLE001 - any interruption: remove the half-written export, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _measure_ratio(loaded: Any, base: _Baseline, r: float, opts: Any) -> tuple[RatioResult, FamilyAdapter]:
    """Prune a copy at ratio ``r`` and measure what it removed, its distortion and its speed."""
    from coinfer.pruner import allocation

    ad, sels = base.pruner.prune_copy(r)
    prunable_ratio = allocation.achieved_ratio(base.ad, sels)
    rows, removed_sq = _block_rows(base, ad)
    scoped = [rows[b] for b in base.blocks]
    sp0, sp1 = sum(base.params[b] for b in base.blocks), sum(x.params_after for x in scoped)
    pruned = sp1 < sp0
    head_ratio, chan_ratio, rnotes = _achieved_ratios(r, scoped, pruned, len(base.blocks), prunable_ratio)
    scope_sq = sum(base.sq_norm[b] for b in base.blocks)
    dw_total = removed_sq / scope_sq if base.blocks and scope_sq > 0 else 0.0
    dist, fit_dy = _distortion(base, ad, dw_total)
    speed = None
    if opts.measure_speed and pruned:
        speed = _speed(base.ad, ad, base.windows[0], opts)
        what = f"the speed-up at ratio {r:g}"
        refuse_if_strict(speed.contention, opts.strict, what)  # inside the export's temporary folder: nothing kept
        if line := warning_line(speed.contention, what) or note_line(speed.contention, what):
            rnotes.append(line)
    elif opts.measure_speed:
        rnotes.append("speed not measured: nothing was removed (speed-up 1 by construction)")
    res = RatioResult(
        requested_ratio=r,
        achieved_param_ratio=1 - sp1 / sp0 if sp0 else 0.0,
        achieved_prunable_ratio=prunable_ratio,
        achieved_head_ratio=head_ratio,
        achieved_channel_ratio=chan_ratio,
        pruned_anything=pruned,
        blocks=rows,
        params_before=sp0,
        params_after=sp1,
        model_params_before=base.model_params,
        model_params_after=sum(p.numel() for p in ad.model.parameters()),
        prefill_flops_before=sum(x.prefill_flops_before for x in scoped),
        prefill_flops_after=sum(x.prefill_flops_after for x in scoped),
        speedup=speed,
        distortion=dist,
        notes=rnotes,
        fit_output_rel_mse=fit_dy,
    )
    return res, ad


def _block_rows(base: _Baseline, ad: FamilyAdapter) -> tuple[list[BlockPruning], float]:
    """One row per block (heads, channels, parameters, FLOPs, parameter distortion), and the
    squared weight norm removed from the blocks in scope."""
    ad0, T = base.ad, base.tokens
    rows = []
    removed_sq = 0.0
    for b in range(ad0.num_blocks):
        sq0 = base.sq_norm[b]
        dw = max(0.0, 1.0 - metrics.block_sq_norm(ad, b) / sq0) if sq0 > 0 else 0.0
        if b in base.blocks:
            removed_sq += dw * sq0
        rows.append(
            BlockPruning(
                name=block_name(b),
                params_before=base.params[b],
                params_after=metrics.block_params(ad, b),
                heads_before=ad0.attention_heads(b)[0],
                heads_after=ad.attention_heads(b)[0],
                mlp_channels_before=ad0.mlp_channels(b),
                mlp_channels_after=ad.mlp_channels(b),
                prefill_flops_before=metrics.block_flops(ad0, b, T, T),
                prefill_flops_after=metrics.block_flops(ad, b, T, T),
                param_distortion=dw,
            )
        )
    return rows, removed_sq


def _achieved_ratios(r: float, scoped: list[BlockPruning], pruned: bool, n_blocks: int,
                     prunable_ratio: float) -> tuple[float, float, list[str]]:
    """(fraction of query heads removed, fraction of MLP channels removed, notes on rounding)."""
    h0, h1 = sum(x.heads_before for x in scoped), sum(x.heads_after for x in scoped)
    c0, c1 = sum(x.mlp_channels_before for x in scoped), sum(x.mlp_channels_after for x in scoped)
    head_ratio = 1 - h1 / h0 if h0 else 0.0
    chan_ratio = 1 - c1 / c0 if c0 else 0.0
    notes = []
    if not pruned and r > 0:
        notes.append(f"requested ratio {r:g} removed nothing (rounding of {h0 // max(1, n_blocks)} heads / {c0 // max(1, n_blocks)} channels per block)")
    elif r > 0:
        notes.append(f"requested {r:g} of the prunable parameters, removed {prunable_ratio:.3f} of them "
                     f"({head_ratio:.3f} of query heads, {chan_ratio:.3f} of MLP channels)")
    if r == 0:
        notes.append("the original model (reference point)")
    return head_ratio, chan_ratio, notes


def _distortion(base: _Baseline, ad: FamilyAdapter, dw_total: float) -> tuple[Distortion, float | None]:
    """The pruned model's output distortion on the calibration windows, and on the fitting half alone."""
    ref, half = base.ref, base.half
    out = metrics.run_outputs(ad, base.windows)
    dy = metrics.rel_mse(ref.hidden, out.hidden)
    dist = Distortion(
        output_rel_mse=dy,
        param_distortion=dw_total,
        bound_ratio=dy / dw_total if dw_total > 0 else None,
        output_rel_mse_heldout=metrics.rel_mse(ref.hidden[half:], out.hidden[half:]) if half else None,
    )
    if ad.is_decoder:
        dist.kl_next_token = metrics.kl_next_token(ref.logprobs, out.logprobs)
        dist.perplexity_before = base.perplexity
        dist.perplexity_after = metrics.perplexity(out.logprobs, base.windows)
    else:
        dist.pooled_cosine = metrics.pooled_cosine(ref.hidden, out.hidden)
    fit_dy = metrics.rel_mse(ref.hidden[:half], out.hidden[:half]) if half else None
    return dist, fit_dy


def _bound(results: list[RatioResult], half: int, notes: list[str]) -> tuple[list[float], list[float], bool | None]:
    """The empirical C of ``D_y <= C D_w`` over ratios (all windows; fitting half) and whether the
    fitted C bounds the held-out half."""
    c_all = [x.distortion.output_rel_mse / x.distortion.param_distortion for x in results if x.distortion.param_distortion > 0]
    c_fit = [
        x.fit_output_rel_mse / x.distortion.param_distortion
        for x in results
        if x.distortion.param_distortion > 0 and x.fit_output_rel_mse is not None
    ]
    bound = None
    if c_fit and half:
        cf = max(c_fit)
        bound = all(
            (x.distortion.output_rel_mse_heldout or 0.0) <= cf * x.distortion.param_distortion * (1 + 1e-9)
            if x.distortion.param_distortion > 0
            else x.distortion.output_rel_mse <= 1e-10
            for x in results
        )
    elif not half:
        notes.append("one calibration window only: no held-out half, bound not checked")
    return c_all, c_fit, bound


def _finalise(tmp: Path, final: Path, force: bool) -> None:
    from coinfer.errors import UserInputError
    from coinfer.reports.io import fsync_folder, temp_prefix

    if final.exists():
        if any(final.iterdir()) and not force:
            raise UserInputError(f"--export {final}: folder exists and is not empty (use --force to replace it)")
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=".old", dir=tmp.parent))
        final.rename(old / "previous")
        try:
            tmp.rename(final)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM) between the renames: the old folder goes back
            (old / "previous").rename(final)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_folder(final.parent if str(final.parent) else ".")

