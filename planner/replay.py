"""Replay over a trace: the policy and its baselines step by step, on the same accounting. No torch.

One request is served per trace step, under that step's state. Per step and method: the chosen
(cut, wire precision), its latency (plus a switching delay when the cut differs from the previous
step's: the shards must load or hand over stages; a change of wire precision alone is free),
device energy (switching costs none), quality (the robustness profile's mean figure, interpolated
as :mod:`coinfer.planner.quality` says) and the paper's reward

    R = a * (PPL_ref - PPL) / PPL_ref + b * (L - s) / L     (a = 10, b = 1)

with ``s`` the blocks on the device and ``L`` the model's blocks; for an encoder the first term
is ``a * (cosine - 1)`` (0 for the clean model, as for a decoder).

Methods:

* ``policy`` - the plan's table, looked up at each step's state (no foresight, no switching cost);
* ``oracle`` - at each step, every candidate evaluated at the step's exact state, the switching
  cost from the previous step's cut included (greedy: no foresight beyond the step);
* ``paper-reward`` - per state, the cut of greatest R at the base wire precision (no budget);
* ``fixed cut c`` - the same cut at every step, at the base wire precision;
* ``rl-ppo`` (optional) - the paper's learned policy (:mod:`coinfer.planner.rl_baseline`).

A step where a method has no feasible choice falls back to the cheapest candidate of known quality
and counts as a budget violation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.planner.policy import CandidateTable, PolicyCell, StateEval, best_per_state, lookup
from coinfer.planner.quality import EXACT
from coinfer.reports.plan import MethodResult
from coinfer.reports.replay import MethodSteps

PAPER_A = 10.0
PAPER_B = 1.0


@dataclass
class MethodRun:
    """A method's candidate index per step (-1: nothing feasible) and what its decisions cost."""

    name: str
    kind: str
    choices: np.ndarray
    evaluations: int
    evaluations_note: str = ""


def paper_reward(loss_mean, blocks_on_device, num_blocks: int, sign: float, a: float = PAPER_A,
                 b: float = PAPER_B):
    """The paper's reward from a quality loss (see :mod:`quality`) and the blocks on the device.

    For a perplexity ratio ``rho`` (loss = rho) it is ``a (1 - rho) + b (L - s) / L``.
    """
    quality_term = -a * (np.asarray(loss_mean, dtype=float) - sign * EXACT)
    return quality_term + b * (num_blocks - np.asarray(blocks_on_device, dtype=float)) / num_blocks


def base_candidates(t: CandidateTable, base_wire: str) -> list[int]:
    """Candidate indices at the base wire precision, one per cut (cut 0 and all-on-device included)."""
    return [k for k, c in enumerate(t.choices) if c.wire in (None, base_wire)]


def paper_choices(t: CandidateTable, ev: StateEval, base_wire: str, a: float = PAPER_A, b: float = PAPER_B):
    """Per state, the base-wire candidate of greatest reward among those of known quality."""
    ks = np.array(base_candidates(t, base_wire))
    r = paper_reward(ev.loss_mean[ks], t.blocks_on_device()[ks][:, None], t.num_blocks, t.quality.sign, a, b)
    r = np.where(np.isnan(r), -np.inf, r)
    best = np.argmax(r, axis=0)
    ok = np.isfinite(r[best, np.arange(r.shape[1])])
    return np.where(ok, ks[best], -1)


def oracle_choices(t: CandidateTable, ev: StateEval, switch_cost: float) -> np.ndarray:
    """Per step, the feasible candidate of least objective plus switching cost from the previous cut."""
    cuts = np.array([c.cut for c in t.choices])
    out = np.full(ev.objective.shape[1], -1)
    prev = None
    for i in range(ev.objective.shape[1]):
        cost = ev.objective[:, i] + (switch_cost * (cuts != prev) if prev is not None else 0.0)
        cost = np.where(ev.feasible[:, i], cost, np.inf)
        k = int(np.argmin(cost))
        if np.isfinite(cost[k]):
            out[i] = k
            prev = cuts[k]
        else:
            prev = cuts[_fallback(ev, i)]
    return out


def policy_choices(cells: list[PolicyCell], ev: StateEval, sev: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The plan's table at each state (the exhaustive choice where a state lies outside the table)."""
    exhaustive = best_per_state(ev)
    out = []
    for i, (s, r) in enumerate(zip(sev, up, strict=True)):
        k = lookup(cells, float(s), 1.0 / float(r))
        out.append(exhaustive[i] if k is None else k)
    return np.array(out, dtype=int)


def _fallback(ev: StateEval, i: int) -> int:
    known = ~np.isnan(ev.loss_mean[:, i])
    return int(np.argmin(np.where(known, ev.objective[:, i], np.inf)))


def account(t: CandidateTable, ev: StateEval, run: MethodRun, switch_delay_ms: float, reward_a: float,
            reward_b: float) -> tuple[MethodResult, MethodSteps]:
    """Per-step outcomes and their summary for one method (the module note's accounting)."""
    n = ev.objective.shape[1]
    ks = np.array([k if k >= 0 else _fallback(ev, i) for i, k in enumerate(run.choices)], dtype=int)
    cuts = np.array([t.choices[k].cut for k in ks])
    idx = np.arange(n)
    switched = np.concatenate([[False], cuts[1:] != cuts[:-1]]) if n else np.zeros(0, bool)
    lat = ev.latency_ms[ks, idx] + switch_delay_ms * switched
    en = ev.energy_j[ks, idx]
    obj = ev.objective[ks, idx] + (switch_delay_ms * switched if t.objective.kind != "energy" else 0.0)
    loss = ev.loss_mean[ks, idx]
    known = ~np.isnan(loss)
    reward = paper_reward(loss, t.blocks_on_device()[ks], t.num_blocks, t.quality.sign, reward_a, reward_b)
    violation = ~ev.feasible[ks, idx] | (run.choices < 0)
    q = t.quality.native(loss)
    worst = t.quality.native(np.nanmax(loss)) if known.any() else None
    used = sorted({int(c) for c in cuts})
    res = MethodResult(
        method=run.name, kind=run.kind, steps=n,
        mean_reward=float(np.mean(reward[known])) if known.any() else None,
        mean_latency_ms=float(lat.mean()) if n else 0.0, mean_energy_j=float(en.mean()) if n else 0.0,
        mean_objective=float(obj.mean()) if n else 0.0,
        mean_quality=float(np.mean(q[known])) if known.any() else None,
        worst_quality=None if worst is None else float(worst),
        budget_violations=int(violation.sum()), unknown_quality_steps=int((~known).sum()),
        switches=int(switched.sum()), model_evaluations=run.evaluations, evaluations_note=run.evaluations_note,
        cuts_used=used, device_memory_bytes=int(round(max(t.device_mem[ks]))) if n else 0,
        server_memory_bytes=int(round(max(t.server_mem[ks]))) if n else 0,
    )
    steps = MethodSteps(
        method=run.name, cut=[int(c) for c in cuts], wire_dtype=[t.choices[k].wire for k in ks],
        latency_ms=[float(v) for v in lat], energy_j=[float(v) for v in en],
        quality=[float(v) if np.isfinite(v) else None for v in q],
        reward=[float(v) if np.isfinite(v) else None for v in reward],
        switched=[bool(v) for v in switched], violation=[bool(v) for v in violation],
    )
    return res, steps


def fixed_runs(t: CandidateTable, base_wire: str, steps: int) -> list[MethodRun]:
    """One run per cut at the base wire precision."""
    runs = []
    for k in base_candidates(t, base_wire):
        c = t.choices[k]
        name = f"fixed cut {c.cut}"
        runs.append(MethodRun(name, "fixed", np.full(steps, k), 0, "a fixed cut decides nothing"))
    return runs
