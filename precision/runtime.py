"""The device shard of a run at a weight precision, on torch or ONNX Runtime (for ``coinfer run``)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coinfer.precision.apply import Scope, quantized_copy, shared_copy
from coinfer.precision.modules import kernel_for


@dataclass
class DeviceVariant:
    """What the device runs, and how it came to be."""

    shard: Any
    precision: str
    engine: str
    kernel: str
    notes: list[str] = field(default_factory=list)
    workdir: Any = None  # keeps ONNX Runtime's files alive with the session


def _prepared_copy(shard: Any) -> Any:
    """The shard over a copy of its model's module tree (tensors shared) with separate Linear projections.

    The original stays as it was (GPT-2 keeps its Conv1D), so a reference chain built from it
    computes exactly what the server process computes.
    """
    from coinfer.models.shards import Shard

    ad = type(shard.adapter)(shared_copy(shard.adapter.model))
    with torch.no_grad():
        ad.prepare_for_pruning()
    return Shard(ad, shard.start, shard.end, shard.logits_to_keep)


def device_variant(shard: Any, precision: str, engine: str, threads: int | None) -> DeviceVariant:
    """``shard`` (fp32 torch, possibly an exported pruned one) at ``precision`` on ``engine``.

    Raises:
        DeviceUnavailableError: No kernel for that precision here, or the engine does not offer it.
        UnsupportedModelError: The engine cannot run this shard (e.g. no KV-cache graph for it).
    """
    if engine == "onnxruntime":
        from coinfer.precision import onnx_engine

        kernel = onnx_engine.check_precision(precision)
        work = tempfile.TemporaryDirectory(prefix="coinfer-ort-")
        ort, secs = onnx_engine.build_ort_shard(_prepared_copy(shard), precision, Path(work.name), threads)
        notes = [f"device shard on onnxruntime ({kernel}): one graph for prefill and decode with the KV cache as "
                 f"inputs/outputs, exported at run time in {secs['export_s']:.1f} s"
                 + (f", quantized in {secs['quantize_s']:.1f} s" if precision != "fp32" else "")]
        return DeviceVariant(ort, precision, engine, kernel, notes, work)
    kernel = kernel_for(precision, "cpu" if next(shard.parameters()).device.type == "cpu" else "cuda")
    if precision == "fp32":
        return DeviceVariant(shard, precision, engine, kernel)
    base = _prepared_copy(shard)
    q = quantized_copy(base.adapter, precision, Scope.of_stages(base.adapter, shard.start, shard.end))
    from coinfer.models.shards import Shard

    notes = [f"device shard at {precision} ({kernel}; {len(q.modules)} matrices); the output check runs the same "
             "device shard and the server's stages in one process"]
    return DeviceVariant(Shard(q.adapter, shard.start, shard.end, shard.logits_to_keep), precision, engine, kernel, notes)
