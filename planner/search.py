"""Exact search over cut x pruning ratio x device frequency x transmit power, and rate sweeps.

The grid is small (cuts x ratios x frequency steps x power steps, e.g. 82 x 11 x 6 x 8 = 43k), so
every point is evaluated with numpy broadcasting: the optimum over the grid is exact, not a
heuristic. Budgets mask points out; the objective is minimised over what remains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.errors import InfeasibleError, UserInputError
from coinfer.planner.cost import Budgets, CostModel, Objective
from coinfer.planner.link import Link
from coinfer.planner.tables import link_terms, onward, upto
from coinfer.reports.plan import Candidate, RatePoint
from coinfer.vocab import cut_name


@dataclass
class Cumulative:
    """Per ratio and cut (R, N+1): device sums over stages < c, server sums over stages >= c."""

    dev_ms: np.ndarray  # prefill + m x per-token, before DVFS
    dev_j: np.ndarray
    srv_ms: np.ndarray
    mem: np.ndarray
    allowed: np.ndarray
    distortion: np.ndarray  # (R,)
    ppl_ratio: np.ndarray  # (R,)


def cumulative(model: CostModel) -> Cumulative:
    """Cumulative device/server costs of every cut for every ratio (the search's tables)."""
    m = model.workload.new_tokens
    ctx = model.workload.prompt_tokens + m
    ops = model.ratios
    dsp = np.array([np.where(o.device_pruned, 1.0 / o.prefill_speedup, 1.0) for o in ops])
    dsd = np.array([np.where(o.device_pruned, 1.0 / o.decode_speedup, 1.0) for o in ops])
    ssp = np.array([np.where(o.server_pruned, 1.0 / o.prefill_speedup, 1.0) for o in ops])
    ssd = np.array([np.where(o.server_pruned, 1.0 / o.decode_speedup, 1.0) for o in ops])
    dev_ms = upto(model.dev_prefill_ms * dsp) + m * upto(model.dev_token_ms * dsd)
    dev_j = upto(model.dev_prefill_j * dsp) + m * upto(model.dev_token_j * dsd)
    srv_ms = onward(model.srv_prefill_ms * ssp) + m * onward(model.srv_token_ms * ssd)
    scale = np.array([o.param_scale for o in ops])
    mem = upto(model.param_bytes * scale + model.kv_bytes_per_token * ctx)
    mem[:, -1] -= [model.shared_bytes(o) for o in ops]  # all on the device: tied weights once
    allowed = np.array([o.allowed_cuts for o in ops])
    return Cumulative(dev_ms, dev_j, srv_ms, mem, allowed, np.array([o.distortion for o in ops]),
                      np.array([o.ppl_ratio for o in ops]))


@dataclass
class GridResult:
    """Every point of the (cut, ratio, freq, power) grid."""

    latency_ms: np.ndarray  # (C, R, A, P)
    energy_j: np.ndarray
    objective: np.ndarray
    feasible: np.ndarray
    allowed: np.ndarray
    metrics: dict[str, np.ndarray]  # per budget name, broadcastable to the grid


def grid(model: CostModel, link: Link, freqs: np.ndarray, objective: Objective, budgets: Budgets) -> GridResult:
    """Evaluate every configuration of the grid at once."""
    cu = cumulative(model)
    a = np.asarray(freqs, dtype=float)
    powers = link.powers()
    rate_up = link.uplink_rates(powers)  # (P,)
    rate_down = link.downlink_rate()
    link_ms, airtime = link_terms(model, link.rtt_ms, rate_up[:, None], np.array(rate_down))  # (P, C)
    dev = cu.dev_ms.T[:, :, None, None] / a[None, None, :, None]
    lat = dev + cu.srv_ms.T[:, :, None, None] + link_ms.T[:, None, None, :]
    e_cmp = cu.dev_j.T[:, :, None, None] * (a * a)[None, None, :, None]
    e_tx = (powers[:, None] * airtime).T[:, None, None, :]
    energy = e_cmp + e_tx
    allowed = np.broadcast_to(cu.allowed.T[:, :, None, None], lat.shape)
    metrics = {
        "latency_ms": lat,
        "energy_j": energy,
        "memory_bytes": cu.mem.T[:, :, None, None],
        "distortion": cu.distortion[None, :, None, None],
        "ppl_ratio": cu.ppl_ratio[None, :, None, None],
    }
    feasible = allowed.copy()
    for name, limit in budgets.as_dict().items():
        feasible &= metrics[name] <= limit
    obj = np.broadcast_to(objective.value(lat, energy), lat.shape)
    return GridResult(lat, energy, obj, feasible, allowed, metrics)


@dataclass
class SearchResult:
    """The optimum and what the plan shows around it."""

    best: Candidate
    per_cut: list[Candidate]
    all_device: Candidate
    all_server: Candidate
    nominal: list[Candidate]


_UNITS = {"latency_ms": ("latency", "ms", 1.0), "energy_j": ("energy", "J", 1.0),
          "memory_bytes": ("memory", "MB", 1e-6), "distortion": ("distortion", "", 1.0),
          "ppl_ratio": ("perplexity over dense", "x", 1.0)}


def binding_budget(g: GridResult, budgets: Budgets) -> str:
    """Say which budget binds when nothing is feasible, and by how much."""
    limits = budgets.as_dict()

    def fmt(name: str, v: float) -> str:
        label, unit, f = _UNITS[name]
        return f"{v * f:.4g}{' ' + unit if unit else ''}"

    def over(name: str, need: float) -> str:
        lim = limits[name]
        rel = f", {need / lim:.3g}x" if lim > 0 else ""
        return f"{fmt(name, need - lim)} over{rel}"

    # A budget no plan can meet on its own binds outright.
    for name in limits:
        vals = np.broadcast_to(g.metrics[name], g.latency_ms.shape)[g.allowed]
        need = float(vals.min())
        if need > limits[name]:
            label = _UNITS[name][0]
            return (f"no plan meets the {label} budget of {fmt(name, limits[name])}: the best possible is "
                    f"{fmt(name, need)} ({over(name, need)})")
    # Otherwise: a budget whose removal makes plans feasible binds against the others.
    for name in limits:
        ok = g.allowed.copy()
        for other, lim in limits.items():
            if other != name:
                ok &= np.broadcast_to(g.metrics[other] <= lim, ok.shape)
        if ok.any():
            need = float(np.broadcast_to(g.metrics[name], ok.shape)[ok].min())
            label = _UNITS[name][0]
            return (f"no plan meets all budgets: the {label} budget of {fmt(name, limits[name])} binds; plans "
                    f"meeting the others need {fmt(name, need)} ({over(name, need)})")
    return "no plan meets all budgets: at least two budgets bind together (relax any one and still none fits)"


def _pick(obj: np.ndarray, feasible: np.ndarray, allowed: np.ndarray) -> tuple[int, ...] | None:
    """Index of the best feasible point; else the best allowed one (to show); None if none allowed."""
    if feasible.any():
        return np.unravel_index(int(np.argmin(np.where(feasible, obj, np.inf))), obj.shape)
    if allowed.any():
        return np.unravel_index(int(np.argmin(np.where(allowed, obj, np.inf))), obj.shape)
    return None


def search(
    model: CostModel, link: Link, freqs: np.ndarray, objective: Objective, budgets: Budgets
) -> SearchResult:
    """Find the best (cut, ratio, frequency, power) over the grid, exactly.

    Raises:
        InfeasibleError: No configuration meets the budgets (the message says which binds).
    """
    freqs = np.asarray(freqs, dtype=float)
    powers = link.powers()
    g = grid(model, link, freqs, objective, budgets)
    if not g.feasible.any():
        raise InfeasibleError(binding_budget(g, budgets))

    def cand(idx: tuple[int, ...]) -> Candidate:
        c, r, ai, pi = (int(i) for i in idx)
        return model.evaluate(link, c, r, float(freqs[ai]), float(powers[pi]), objective, budgets)

    best = cand(_pick(g.objective, g.feasible, g.allowed))
    per_cut = []
    for c in range(model.num_stages + 1):
        idx = _pick(g.objective[c], g.feasible[c], g.allowed[c])
        per_cut.append(cand((c, *idx)))
    # Baselines: the unpruned model at that end, with resources still chosen for the objective.
    ends = []
    for c in (model.num_stages, 0):
        idx = _pick(g.objective[c, 0], g.feasible[c, 0], g.allowed[c, 0])
        ends.append(cand((c, 0, *idx)))
    # Unpruned, nominal frequency, top power: what a run of a plain split at each cut should see.
    nominal = [model.evaluate(link, c, 0, 1.0, float(powers[-1]), objective, budgets)
               for c in range(model.num_stages + 1)]
    return SearchResult(best, per_cut, ends[0], ends[1], nominal)


def sweep_rates(
    model: CostModel,
    link: Link,
    rates_bps: np.ndarray,
    freqs: np.ndarray,
    objective: Objective,
    budgets: Budgets,
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Best configuration for each uplink rate of a fixed-rate link (vectorised over rates).

    The downlink follows the swept rate unless the link has its own downlink rate.

    Returns:
        (index, objective): ``index[k]`` = (cut, ratio index, freq index, power index) of the best
        feasible point at ``rates_bps[k]``, all -1 when none; ``objective[k]`` its value (inf).
    """
    if link.wireless:
        raise UserInputError("--sweep-rate needs a fixed-rate link (--rate), not a wireless uplink")
    rates = np.asarray(rates_bps, dtype=float)
    if rates.ndim != 1 or not np.all(np.isfinite(rates)) or np.any(rates <= 0):
        raise UserInputError("swept rates must be positive and finite")
    cu = cumulative(model)
    a = np.asarray(freqs, dtype=float)
    powers = link.powers()
    fixed_down = link.downlink_rate_bps
    dev = cu.dev_ms.T[:, :, None, None] / a[None, None, :, None]  # (C, R, A, 1)
    base_lat = dev + cu.srv_ms.T[:, :, None, None]
    e_cmp = cu.dev_j.T[:, :, None, None] * (a * a)[None, None, :, None]
    limits = budgets.as_dict()
    static_ok = cu.allowed.T[:, :, None, None].copy()
    if "memory_bytes" in limits:
        static_ok &= cu.mem.T[:, :, None, None] <= limits["memory_bytes"]
    for name in ("distortion", "ppl_ratio"):
        if name in limits:
            static_ok &= getattr(cu, name)[None, :, None, None] <= limits[name]
    shape = base_lat.shape[:3] + (len(powers),)
    out_idx = np.full((len(rates), 4), -1, dtype=int)
    out_obj = np.full(len(rates), np.inf)
    for s in range(0, len(rates), chunk):
        rk = rates[s:s + chunk]
        down = np.full_like(rk, fixed_down) if fixed_down is not None else rk
        link_ms, airtime = link_terms(model, link.rtt_ms, rk[:, None], down[:, None])  # (K, C)
        lat = base_lat[None] + link_ms[:, :, None, None, None]  # (K, C, R, A, 1)
        energy = e_cmp[None] + (airtime[:, :, None] * powers[None, None, :])[:, :, None, None, :]
        lat = np.broadcast_to(lat, (len(rk), *shape))
        ok = np.broadcast_to(static_ok[None], lat.shape).copy()
        if "latency_ms" in limits:
            ok &= lat <= limits["latency_ms"]
        if "energy_j" in limits:
            ok &= energy <= limits["energy_j"]
        obj = np.where(ok, objective.value(lat, energy), np.inf).reshape(len(rk), -1)
        arg = np.argmin(obj, axis=1)
        val = obj[np.arange(len(rk)), arg]
        idx = np.stack(np.unravel_index(arg, shape), axis=1)
        idx[~np.isfinite(val)] = -1
        out_idx[s:s + len(rk)] = idx
        out_obj[s:s + len(rk)] = val
    return out_idx, out_obj


def rate_table(model: CostModel, rates_bps: np.ndarray, index: np.ndarray, objective: np.ndarray,
               freqs: np.ndarray) -> list[RatePoint]:
    """Compress a sweep into ranges of rates over which the same (cut, ratio, frequency) is best."""
    points: list[RatePoint] = []
    start = 0
    for k in range(1, len(rates_bps) + 1):
        if k < len(rates_bps) and tuple(index[k][:3]) == tuple(index[start][:3]):
            continue
        c, r, ai = (int(x) for x in index[start][:3])
        feasible = c >= 0
        points.append(RatePoint(
            rate_from_bps=float(rates_bps[start]), rate_to_bps=float(rates_bps[k - 1]),
            cut=c if feasible else None, cut_name=cut_name(c, model.num_blocks) if feasible else "infeasible",
            ratio=model.ratios[r].ratio if feasible else 0.0, freq_scale=float(freqs[ai]) if feasible else 1.0,
            objective_from=float(objective[start]) if feasible else None,
            objective_to=float(objective[k - 1]) if feasible else None,
        ))
        start = k
    return points
