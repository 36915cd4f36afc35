"""The tables the cost model, the exact search and the chain DP share.

* :func:`stage_costs` - per stage, prefill latency/energy and mean per-token decode latency/energy
  of one profile at a workload (decode interpolated between the profiled contexts);
* :func:`link_terms` - per cut, the link's latency and airtime, broadcast over rates;
* :func:`upto` / :func:`onward` - per cut ``c``, sums over the stages before / from ``c``.

Conventions are those of :mod:`coinfer.planner.cost` (cut ``c`` = stages on the device, 0..N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from coinfer.errors import SchemaError
from coinfer.reports.profile import Profile, StageProfile

if TYPE_CHECKING:
    from coinfer.planner.cost import CostModel, Workload


@dataclass
class StageCosts:
    """One profile's per-stage costs at one workload (arrays of length N)."""

    prefill_ms: np.ndarray
    prefill_j: np.ndarray
    token_ms: np.ndarray  # mean over the workload's decode steps
    token_j: np.ndarray
    energy_known: bool  # False when a stage had no energy figure and no power model


def _interp(xs: np.ndarray, ys: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation; beyond the ends, the end segment's slope when it rises, else flat.

    A cost that falls with context is measurement noise, so it is never extrapolated (a noisy
    profile would otherwise predict free decoding at long contexts); the result is floored at 0.
    """
    if len(xs) == 1:
        return np.full(at.shape, float(ys[0]))
    out = np.interp(at, xs, ys)
    lo, hi = at < xs[0], at > xs[-1]
    if lo.any():
        slope = max(0.0, (ys[1] - ys[0]) / (xs[1] - xs[0]))
        out[lo] = ys[0] + slope * (at[lo] - xs[0])
    if hi.any():
        slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        out[hi] = ys[-1] + slope * (at[hi] - xs[-1])
    return np.maximum(out, 0.0)


def _decode_points(st: StageProfile, role: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pts = sorted(st.decode, key=lambda d: d.context_tokens)
    xs = np.array([d.context_tokens for d in pts], dtype=float)
    if len(set(xs.tolist())) != len(xs):
        raise SchemaError(f"{role} profile: stage {st.name} has repeated decode contexts")
    ms = np.array([d.timing.median_ms for d in pts], dtype=float)
    ej = None if any(d.energy_j is None for d in pts) else np.array([d.energy_j for d in pts], dtype=float)
    return xs, ms, ej


def stage_costs(p: Profile, role: str, wl: Workload, need_decode: bool) -> StageCosts:
    """Per-stage prefill ms/J and mean per-token decode ms/J at this workload for one profile.

    Raises:
        SchemaError: Decode costs are needed and a stage has none (or repeats a context).
    """
    s0 = p.context.seq_len
    scale = wl.prompt_tokens / s0
    power = p.context.power_w
    contexts = wl.prompt_tokens + np.arange(wl.new_tokens, dtype=float) if wl.new_tokens else np.array(
        [float(wl.prompt_tokens)])
    pre_ms, pre_j, tok_ms, tok_j = [], [], [], []
    energy_known = True
    for st in p.stages:
        t = st.prefill.median_ms * scale
        pre_ms.append(t)
        if st.prefill_energy_j is not None:
            pre_j.append(st.prefill_energy_j * scale)
        elif power is not None:
            pre_j.append(power * t / 1e3)
        else:
            pre_j.append(0.0)
            energy_known = False
        if need_decode:
            if not st.decode:
                raise SchemaError(f"{role} profile: stage {st.name} has no decode timings (profile decode too)")
            xs, ms, ej = _decode_points(st, role)
            tm = _interp(xs, ms, contexts)
            tok_ms.append(float(tm.mean()))
            if ej is not None:
                tok_j.append(float(_interp(xs, ej, contexts).mean()))
            elif power is not None:
                tok_j.append(float(power * tm.mean() / 1e3))
            else:
                tok_j.append(0.0)
                energy_known = False
        else:
            tok_ms.append(0.0)
            tok_j.append(0.0)
    return StageCosts(np.array(pre_ms), np.array(pre_j), np.array(tok_ms), np.array(tok_j), energy_known)


def upto(x: np.ndarray) -> np.ndarray:
    """out[..., c] = sum of x[..., :c] for c in 0..N."""
    z = np.zeros(x.shape[:-1] + (1,))
    return np.concatenate([z, np.cumsum(x, axis=-1)], axis=-1)


def onward(x: np.ndarray) -> np.ndarray:
    """out[..., c] = sum of x[..., c:] for c in 0..N."""
    z = np.zeros(x.shape[:-1] + (1,))
    return np.concatenate([np.cumsum(x[..., ::-1], axis=-1)[..., ::-1], z], axis=-1)


def link_terms(model: CostModel, rtt_ms: float, rate_up: np.ndarray, rate_down: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link latency [ms] and airtime [s] of every cut, broadcast over rate arrays.

    ``rate_up`` and ``rate_down`` broadcast against a trailing cut axis of length N+1.
    """
    n_st = model.num_stages
    m = model.workload.new_tokens
    cuts = np.arange(n_st + 1)
    crosses = (cuts < n_st).astype(float)
    split = ((cuts >= 1) & (cuts < n_st)).astype(float)
    up_bytes = model.up_prefill_bytes + m * model.up_token_bytes
    down_bytes = model.down_prefill_bytes + m * model.down_token_bytes
    # Round trips: one for the prefill when anything crosses, one per decode step when split.
    rtt = rtt_ms * (crosses + m * split)
    link_ms = up_bytes * 8e3 / rate_up + down_bytes * 8e3 / rate_down + rtt
    airtime_s = up_bytes * 8 / rate_up
    return link_ms, airtime_s
