"""Timing a model stage by stage: boundary timestamps, interleaved repeats, a fixed decode context.

The pieces :mod:`coinfer.profiler.measure` assembles into a profile:

* :class:`StageMarks` - a timestamp at each stage boundary (wall clock, or CUDA events);
* :class:`StagedRunner` - one pass stage by stage, or the unsplit model, timed;
* :func:`interleaved` - staged and whole passes alternated until enough time was measured;
* :class:`DecodeState` - a KV cache of ``context`` tokens that each decode step leaves unchanged;
* :func:`stage_replays` - one callable per stage re-running it on its captured input (energy windows);
* :func:`timing_of`, :func:`pass_coverage` - the summaries a profile stores.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from coinfer.profiler.stats import median_iqr
from coinfer.reports.profile import Timing


class StageMarks:
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
        """The first mark of a pass (after letting queued GPU work finish)."""
        if self.cuda:
            self._torch.cuda.synchronize()
        return [self.mark()]

    def mark(self) -> Any:
        """A timestamp now: a recorded CUDA event, or the wall clock."""
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


class StagedRunner:
    """Runs the model stage by stage or whole, with a timestamp at every stage boundary."""

    def __init__(self, ad: Any, device: str, logits_to_keep: int) -> None:
        self.ad, self.k = ad, logits_to_keep
        self.marks = StageMarks(device)

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


def interleaved(
    staged: Callable[[], list[float]],
    whole: Callable[[], float],
    reset: Callable[[], None] | None,
    report: Callable[[float], None],
    *,
    repeats: int,
    warmup: int,
    min_time_s: float,
    max_repeats: int,
) -> tuple[list[list[float]], list[float]]:
    """Alternate staged and whole passes; per-stage and whole-model samples in seconds.

    At least ``repeats`` timed pairs after ``warmup`` untimed ones, more for fast models until
    ``min_time_s`` of timed passes have run (a median of sub-millisecond stages needs many
    samples to be repeatable), never more than ``max_repeats``. Python's garbage collector is
    paused while timing so a collection does not land in a stage.
    """
    import gc

    stage_samples: list[list[float]] | None = None
    whole_samples: list[float] = []
    r = 0
    spent = 0.0
    target = repeats
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while r < warmup + target:
            timed = r >= warmup
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
                done = r - warmup
                per_pair = spent / done
                if spent < min_time_s and per_pair > 0:
                    # more pairs for fast models, bounded so a tiny model cannot run forever
                    want = min(max_repeats, int(min_time_s / per_pair) + 1)
                    target = max(target, want)
                report(min(1.0, done / target))
    finally:
        if gc_was:
            gc.enable()
    return stage_samples or [], whole_samples


def filled_cache(ad: Any, batch: int, context: int, dtype: Any, device: str) -> Any:
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


class DecodeState:
    """A cache holding ``context`` tokens; ``reset`` puts it back after a decode step.

    Each layer's attributes are snapshotted once; a dynamic cache's update replaces its tensors
    (it does not write into them), so restoring the snapshot undoes a step exactly and cheaply,
    sliding-window layers included, and the cache object stays the same for any context that
    holds it. If a step ever leaves the cache at a different length, it is rebuilt instead.
    """

    def __init__(self, ad: Any, batch: int, context: int, dtype: Any, device: str) -> None:
        from coinfer.models.adapters.base import ShardState

        self._make = lambda: filled_cache(ad, batch, context, dtype, device)
        self.context = context
        self.state = ShardState(cache=self._make(), past_length=context)
        self._snapshot()

    def _snapshot(self) -> None:
        layers = getattr(self.state.cache, "layers", None)
        self._layers = [dict(vars(layer)) for layer in layers] if layers is not None else None
        self._length = self.state.cache.get_seq_length()

    def reset(self) -> None:
        """Undo the decode step just run: the cache holds ``context`` tokens again."""
        if self._layers is not None:
            for layer, saved in zip(self.state.cache.layers, self._layers, strict=True):
                vars(layer).update(saved)
            if self.state.cache.get_seq_length() == self._length:
                return
        self.state.cache = self._make()
        self._snapshot()


def stage_replays(
    ad: Any, x: Any, past: int, state: Any, captured: list, k: int, reset: Callable[[], None] | None
) -> list[Callable[[], Any]]:
    """One callable per stage that re-runs it on its captured input (for energy windows).

    ``captured`` holds each block's input and the head's, as :meth:`StagedRunner.staged` records
    them; ``reset`` runs after each block (a decode step must leave the cache as it found it).
    """
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


def timing_of(samples_s: list[float]) -> Timing:
    """Median and IQR in milliseconds of samples in seconds."""
    med, iqr = median_iqr([s * 1e3 for s in samples_s])
    return Timing(median_ms=med, iqr_ms=iqr, repeats=len(samples_s))


def pass_coverage(per_stage: list[list[float]], whole: list[float]) -> float:
    """Median of the staged passes' totals over the whole model's median (0 when that is 0)."""
    totals = [sum(t) for t in zip(*per_stage, strict=True)]
    w = median_iqr(whole)[0]
    return median_iqr(totals)[0] / w if w else 0.0
