"""Per-stage prefill and decode latency of several variants of one shard, interleaved in one run.

Every repeat runs each variant's staged prefill and decode step once, the order rotating, so a
drift in machine load hits all variants alike and speed-ups are ratios taken side by side. A
decode step runs one token over a KV cache of ``context`` tokens and is undone afterwards
(:class:`coinfer.profiler.timing.DecodeState`), so every step sees the same context. The shard's
context (positions, masks, rotary embeddings) is charged to its first block, as in a profile.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from coinfer.models.adapters.base import ShardState
from coinfer.models.shards import Shard
from coinfer.profiler.timing import DecodeState, StageMarks


@dataclass
class StageSamples:
    """Seconds per stage and repeat: ``prefill[s]`` and ``decode[s]`` lists for stage ``s``."""

    prefill: list[list[float]] = field(default_factory=list)
    decode: list[list[float]] = field(default_factory=list)


def staged_pass(shard: Shard, x: torch.Tensor, state: ShardState, marks: StageMarks) -> list[float]:
    """One forward of ``shard`` with a timestamp after each stage; seconds per stage."""
    ad = shard.adapter
    m = marks.start()
    h = ad.embed(x, state.past_length) if shard.has_embed else x
    if shard.has_embed:
        m.append(marks.mark())
    blocks = shard.block_indices
    first = blocks.start if len(blocks) else ad.num_blocks
    ctx = ad.context(h, state, first, None) if (len(blocks) or shard.has_head) else None
    for i in blocks:
        h = ad.block(i, h, ctx)
        m.append(marks.mark())
    if shard.has_head:
        ad.head(h, ctx, 1)
        m.append(marks.mark())
    return marks.durations(m)


@dataclass
class Variant:
    """One shard to time (its decode state is built by :func:`time_variants`)."""

    key: Any
    shard: Shard


def _runners(v: Variant, prompt: torch.Tensor, context: int | None, marks: StageMarks, device: str) -> tuple[Callable, Callable | None]:
    shard = v.shard

    def prefill() -> list[float]:
        return staged_pass(shard, prompt, ShardState(cache=None), marks)

    if context is None or not shard.adapter.is_decoder or not len(shard.block_indices):
        return prefill, None
    ds = DecodeState(shard.adapter, prompt.shape[0], context, torch.float32, device)
    tok = prompt[:, -1:]

    def decode() -> list[float]:
        ds.state.past_length = ds.context
        out = staged_pass(shard, tok, ds.state, marks)
        ds.reset()
        return out

    return prefill, decode


@torch.no_grad()
def time_variants(
    variants: list[Variant], prompt: torch.Tensor, context: int | None, repeats: int, warmup: int = 2, device: str = "cpu"
) -> dict[Any, StageSamples]:
    """Staged prefill (and decode at ``context``) samples of every variant, interleaved.

    Args:
        variants: Shards over the same stages (e.g. one per precision).
        prompt: Token ids (or a hidden state) for the prefill, (1, T).
        context: KV-cache length of a decode step; None times prefill only.
        repeats: Timed repeats per variant.
        warmup: Untimed repeats first (kernels pack their weights on the first call).
        device: cpu or cuda (CUDA events then).
    """
    marks = StageMarks(device)
    runs = [(v.key, *_runners(v, prompt, context, marks, device)) for v in variants]
    out = {key: StageSamples() for key, _, _ in runs}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + repeats):
            k = r % len(runs)
            for key, prefill, decode in runs[k:] + runs[:k]:
                p = prefill()
                d = decode() if decode is not None else None
                if r >= warmup:
                    _append(out[key].prefill, p)
                    if d is not None:
                        _append(out[key].decode, d)
    finally:
        if gc_was:
            gc.enable()
    return out


def _append(per_stage: list[list[float]], times: list[float]) -> None:
    if not per_stage:
        per_stage.extend([] for _ in times)
    for samples, t in zip(per_stage, times, strict=True):
        samples.append(t)


def medians_ms(per_stage: list[list[float]]) -> list[float]:
    """Median of each stage's samples, in milliseconds."""
    return [statistics.median(s) * 1e3 for s in per_stage]


def max_cv(*groups: list[list[float]]) -> float:
    """The largest coefficient of variation among the stages' samples."""
    cvs = [statistics.pstdev(s) / statistics.mean(s) for g in groups for s in g if len(s) > 1 and statistics.mean(s) > 0]
    return max(cvs, default=0.0)


class WholeShard:
    """A shard timed as one call (torch or ONNX Runtime): a prefill that writes the KV cache, then
    one decode step over it, after which the cache is put back to the prompt's length."""

    def __init__(self, key: Any, shard: Any, engine: str = "torch") -> None:
        self.key, self.shard, self.engine = key, shard, engine
        self.state: Any = None

    def prefill(self, prompt: torch.Tensor) -> None:
        self.state = self.shard.new_state()
        self.shard(prompt, self.state)

    def decode(self, tok: torch.Tensor, context: int) -> None:
        st = self.state
        if self.engine == "torch":
            self.shard(tok, st)
            st.cache.crop(-1)  # back to the prompt: every step sees the same context
        else:
            saved = st.past
            self.shard(tok, st)
            st.past = saved
        st.past_length = context


@torch.no_grad()
def time_whole(shards: list[WholeShard], prompt: torch.Tensor, repeats: int, decode: bool = True,
               warmup: int = 2) -> dict[Any, dict[str, list[float]]]:
    """Prefill (and decode-step) samples in ms of whole shards, interleaved with a rotating order."""
    tok, context = prompt[:, -1:], prompt.shape[1]
    out: dict[Any, dict[str, list[float]]] = {w.key: {"prefill": [], "decode": []} for w in shards}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + repeats):
            k = r % len(shards)
            for w in shards[k:] + shards[:k]:
                t0 = time.perf_counter()
                w.prefill(prompt)
                t1 = time.perf_counter()
                if decode:
                    w.decode(tok, context)
                t2 = time.perf_counter()
                if r >= warmup:
                    out[w.key]["prefill"].append((t1 - t0) * 1e3)
                    if decode:
                        out[w.key]["decode"].append((t2 - t1) * 1e3)
    finally:
        if gc_was:
            gc.enable()
    return out
