"""The ONNX Runtime rows of a precision report: the device shard as one KV-cache graph per precision.

One graph runs the whole device shard, so these rows have whole-shard prefill and decode
latency (no per-stage split), timed interleaved with the torch fp32 unpruned shard in one loop;
quality goes through the fp32 torch server stages, like the torch rows'.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from coinfer.errors import DeviceUnavailableError
from coinfer.models.shards import Shard
from coinfer.precision import evaluation, onnx_engine, timing
from coinfer.reports.precision import PrecisionResult
from coinfer.reports.prune import ShardFile

ENGINE = "onnxruntime"


def _unsupported(p: str, r: float, reason: str) -> PrecisionResult:
    return PrecisionResult(precision=p, pruning_ratio=r, engine=ENGINE, supported=False, unsupported_reason=reason)


def ort_results(s: Any, r: float, base: Any, export_root: Path | None) -> list[PrecisionResult]:
    """Every requested precision of the (pruned) device shard on ONNX Runtime.

    Args:
        s: The measurement's shared setup (options, the fp32 model, scope, prompt, windows, reference).
        r: Pruning ratio of ``base``.
        base: The family adapter of the (pruned) fp32 model, prepared (separate Linear projections).
        export_root: The export folder (the graphs are written under ``ratio-<r>/``), or None.
    """
    opts = s.opts
    if opts.scope != "device" or opts.device != "cpu":
        return [_unsupported(p, r, "onnxruntime rows are measured for a CPU device scope (--scope device --split K)")
                for p in opts.precisions]
    rows: dict[str, PrecisionResult] = {}
    runnable = []
    for p in opts.precisions:
        try:
            rows[p] = PrecisionResult(precision=p, pruning_ratio=r, engine=ENGINE, supported=True,
                                      kernel=onnx_engine.check_precision(p))
            runnable.append(p)
        except DeviceUnavailableError as exc:
            rows[p] = _unsupported(p, r, str(exc))
    if not runnable:
        return list(rows.values())
    dev = Shard(base, 0, s.end)
    work = tempfile.TemporaryDirectory(prefix="coinfer-ort-")
    folder = Path(work.name)
    if export_root is not None:
        folder = export_root / f"ratio-{r:.3f}"
        folder.mkdir(exist_ok=True)
    files = _graphs(dev, folder, runnable)
    shards = {p: onnx_engine.OrtShard(onnx_engine.session(files[p]["onnx"], None), dev, p) for p in runnable}
    if opts.measure_speed:
        _speed(s, shards, rows)
    if s.ref is not None:
        server = Shard(base, s.end, base.num_blocks + 2, logits_to_keep=0)
        for p, ort in shards.items():
            rows[p].quality = evaluation.quality_of(lambda ids, o=ort: server(o(ids, o.new_state())), s.windows, s.ref)
    if export_root is not None:
        from coinfer.reports.io import file_sha256

        for p in runnable:
            rows[p].shards = [ShardFile(role="device", format=fmt, path=f"{folder.name}/{path.name}", sha256=file_sha256(path),
                                        size_bytes=path.stat().st_size) for fmt, path in files[p].items()]
    work.cleanup()  # sessions hold their weights in memory
    return [rows[p] for p in opts.precisions]


def _graphs(dev: Shard, folder: Path, precisions: list[str]) -> dict[str, dict[str, Path]]:
    out = {"fp32": onnx_engine.export_kv_graph(dev, folder, "device-fp32-onnxruntime")}
    for p in precisions:
        if p != "fp32":
            out[p] = onnx_engine.quantize_graph(out["fp32"]["onnx"], folder, f"device-{p}-onnxruntime", p)
    return out


def _speed(s: Any, shards: dict[str, Any], rows: dict[str, PrecisionResult]) -> None:
    import statistics

    ref = timing.WholeShard("torch-fp32", Shard(s.ad0, 0, s.end))
    runs = [ref] + [timing.WholeShard(p, o, ENGINE) for p, o in shards.items()]
    samples = timing.time_whole(runs, s.prompt, s.opts.repeats, decode=s.ad0.is_decoder)
    rp, rd = (statistics.median(samples[ref.key][k]) if samples[ref.key][k] else None for k in ("prefill", "decode"))
    for p in shards:
        row, got = rows[p], samples[p]
        row.prefill_ms = statistics.median(got["prefill"])
        row.prefill_speedup = rp / row.prefill_ms
        if got["decode"] and rd:
            row.decode_ms = statistics.median(got["decode"])
            row.decode_speedup = rd / row.decode_ms
        cv = [statistics.pstdev(v) / statistics.mean(v) for v in got.values() if len(v) > 1]
        row.max_cv = max(cv, default=0.0)
        row.notes.append("one graph: whole-shard latency against the torch fp32 unpruned shard timed in the same loop")
