"""Latency and energy at every cut over several link rates, from a plan and (when found) its inputs.

A plan file holds its candidates at one rate. For other rates the curves are recomputed with the
planner's own search on the plan's input profiles (torch-free), found among the report's files or at
the paths the plan recorded, and used only when their sha256 matches what the plan recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coinfer.errors import CoinferError, InfeasibleError
from coinfer.planner.cost import (
    OBJECTIVES,
    Budgets,
    Objective,
    Workload,
    build_cost_model,
    derive_server_profile,
)
from coinfer.planner.link import Link
from coinfer.planner.search import search
from coinfer.reports.plan import Candidate, InputFile, Plan
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.viz.documents import Loaded, load_any

_SPEEDUP = re.compile(r"every stage ([0-9.eE+-]+)x faster")


@dataclass
class CutCurve:
    """The best configuration's costs at every cut, at one uplink rate."""

    rate_bps: float
    cuts: list[int]
    latency_ms: list[float]
    energy_j: list[float]
    from_file: bool  # True: the plan's own candidates; False: recomputed from its inputs


@dataclass
class PlanInputs:
    """The documents a plan was computed from."""

    device: Profile
    server: Profile
    prune: PruneReport | None


def _find(inp: InputFile, plan_path: Path, pool: list[Loaded]) -> Loaded | None:
    """The input file among the report's files (by sha256), else at its recorded path or beside the plan."""
    for item in pool:
        if item.sha256 == inp.sha256:
            return item
    recorded = Path(inp.path)
    for cand in (recorded, plan_path.parent / recorded, plan_path.parent / recorded.name):
        if cand.is_file():
            try:
                item = load_any(cand)
            except CoinferError:
                continue
            if item.sha256 == inp.sha256:
                return item
    return None


def derived_speedup(inp: InputFile) -> float | None:
    """The factor of a server profile the plan derived (``--server-speedup``), None if not derived."""
    m = _SPEEDUP.search(inp.derivation or "") if inp.derived else None
    return float(m.group(1)) if m else None


def resolve_inputs(plan_item: Loaded, pool: list[Loaded]) -> tuple[PlanInputs | None, str]:
    """The plan's device and server profiles (and pruning report), or None and the reason."""
    plan: Plan = plan_item.doc  # type: ignore[assignment]
    found: dict[str, Loaded] = {}
    for inp in plan.inputs:
        item = _find(inp, plan_item.path, pool)
        if item is None:
            return None, f"input {inp.role} {inp.path} (sha256 {inp.sha256[:12]}) not found or changed"
        found[inp.role] = item
    if "device" not in found or "server" not in found:
        return None, "the plan names no single device and server (a chain plan)"
    server_in = next(i for i in plan.inputs if i.role == "server")
    server: Profile = found["server"].doc  # type: ignore[assignment]
    if server_in.derived:
        speedup = derived_speedup(server_in)
        if speedup is None:
            return None, f"cannot re-derive the server profile from {server_in.derivation!r}"
        server = derive_server_profile(found["device"].doc, speedup)  # type: ignore[arg-type]
    prune = found["prune"].doc if "prune" in found else None
    return PlanInputs(found["device"].doc, server, prune), "recomputed from the plan's input files"  # type: ignore[arg-type]


def curve_rates(plan: Plan) -> list[float]:
    """The plan's uplink rate and decades around it (within the swept range, when there is one)."""
    r0 = plan.link.uplink_rate_bps
    rates = [r0 * 10.0**k for k in (-2, -1, 0, 1, 2)]
    if plan.rate_sweep:
        lo = min(p.rate_from_bps for p in plan.rate_sweep)
        hi = max(p.rate_to_bps for p in plan.rate_sweep)
        rates = [r for r in rates if lo * (1 - 1e-9) <= r <= hi * (1 + 1e-9) or r == r0]
    return rates


def _from_candidates(rate: float, cands: list[Candidate], from_file: bool) -> CutCurve:
    return CutCurve(rate, [c.cut for c in cands], [c.total_latency_ms for c in cands],
                    [c.energy.total_j for c in cands], from_file)


def cut_curves(plan: Plan, inputs: PlanInputs | None) -> tuple[list[CutCurve], list[str]]:
    """Curves at the plan's rate (from the file) and, with the inputs, at the rates around it.

    Returns:
        (curves sorted by rate, notes on what could not be drawn).
    """
    curves = [_from_candidates(plan.link.uplink_rate_bps, plan.candidates, True)]
    notes: list[str] = []
    if inputs is None:
        return curves, notes
    if plan.link.kind != "fixed":
        return curves, ["a wireless plan: curves at other rates are not drawn (the rate follows the power)"]
    wl = Workload(plan.prompt_tokens, plan.new_tokens)
    model = build_cost_model(inputs.device, inputs.server, wl, plan.link.wire_dtype, inputs.prune)
    objective = Objective(plan.objective if plan.objective in OBJECTIVES else "latency",
                          plan.energy_weight_ms_per_j or 1000.0)
    budgets = Budgets(**plan.budgets)
    fixed_down = None if plan.link.downlink_rate_bps == plan.link.uplink_rate_bps else plan.link.downlink_rate_bps
    powers = (plan.link.tx_power_w,) if plan.link.tx_power_w is not None else ()
    for rate in curve_rates(plan):
        if rate == plan.link.uplink_rate_bps:
            continue
        link = Link(rate_bps=rate, downlink_rate_bps=fixed_down, rtt_ms=plan.link.rtt_ms,
                    wire_dtype=plan.link.wire_dtype, tx_powers_w=powers)
        try:
            res = search(model, link, np.asarray(plan.freq_scales), objective, budgets)
        except InfeasibleError as exc:
            notes.append(f"at {rate:g} bit/s nothing meets the budgets ({exc})")
            continue
        curves.append(_from_candidates(rate, res.per_cut, False))
    return sorted(curves, key=lambda c: c.rate_bps), notes
