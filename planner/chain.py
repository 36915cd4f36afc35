"""Several members in a chain: a contiguous partition of the stages by dynamic programming.

As in EdgeShard, member ``j`` runs stages ``[b_j, b_{j+1})`` (possibly none) with
``0 = b_0 <= b_1 <= ... <= b_K = N``. The hop between members ``j`` and ``j+1`` carries what a
single split at ``b_{j+1}`` would carry (the activation forward, the result back, a round trip per
phase that waits on it; nothing once every stage is done), so a two-member chain of device and
server gives exactly the single-split latency.

* latency: minimise ``sum_j compute_j + sum_j hop_j`` (min-sum DP);
* throughput: minimise the bottleneck ``max(compute_j, occupancy of hop_j)`` (min-max DP), the time
  per request once requests are pipelined; a hop's occupancy is its bytes over its rate (the RTT
  delays a request but does not occupy the link). Among partitions with that bottleneck, the one
  of least latency, then of fewest hops used (a second, min-sum DP restricted to them).

A member may have a memory capacity (weights + KV of its stages); a segment over it is excluded.
The DPs run over (N+1) x (N+1) segment matrices per member (O(K N^2) with numpy); latency without
caps needs only a running minimum (O(K N)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from coinfer.errors import InfeasibleError, UserInputError
from coinfer.planner.cost import CostModel, Workload, check_compatible
from coinfer.planner.tables import link_terms, stage_costs, upto
from coinfer.reports.plan import ChainHop, ChainPlan, ChainSegment
from coinfer.reports.profile import Profile
from coinfer.vocab import stage_names


@dataclass
class ChainProblem:
    """Numbers the chain DP needs.

    Attributes:
        members: Member names, in chain order (the first holds the input).
        stage_ms: (K, N) per member, per stage: prefill + new_tokens x per-token latency.
        stage_mem: (K, N) per member, per stage: weight bytes + KV cache bytes.
        hop_ms: (K-1, N+1) hop j's time if the cut between members j and j+1 is at b.
        hop_busy_ms: (K-1, N+1) hop j's occupancy (transfer time, no RTT) at b.
        memory_caps: (K,) bytes; inf = no cap.
        hop_names, hop_rates_bps, hop_rtts_ms, hop_payload_bytes: For the report.
    """

    members: list[str]
    stage_ms: np.ndarray
    stage_mem: np.ndarray
    hop_ms: np.ndarray
    hop_busy_ms: np.ndarray
    memory_caps: np.ndarray
    hop_names: list[str]
    hop_rates_bps: list[float]
    hop_rtts_ms: list[float]
    hop_payload_bytes: np.ndarray  # (N+1,) prefill activation at each boundary

    @property
    def num_stages(self) -> int:
        """N."""
        return self.stage_ms.shape[1]


def build_chain_problem(
    members: list[tuple[str, Profile]],
    hops: list[tuple[float, float]],
    workload: Workload,
    wire_dtype: str,
    cost_model: CostModel,
    memory_caps: dict[str, float] | None = None,
) -> ChainProblem:
    """Assemble the chain DP's inputs from member profiles and hop (rate_bps, rtt_ms).

    ``cost_model`` gives the payloads (from the first member's profile, with the last as server).

    Raises:
        SchemaError: Members profile different models.
        UserInputError: Wrong number of hops, duplicate names, or a cap for an unknown member.
    """
    if len(members) < 2:
        raise UserInputError("a chain needs at least two members")
    names = [n for n, _ in members]
    if len(set(names)) != len(names):
        raise UserInputError(f"chain member names must be unique: {', '.join(names)}")
    if len(hops) != len(members) - 1:
        raise UserInputError(f"a chain of {len(members)} members needs {len(members) - 1} links, got {len(hops)}")
    first = members[0][1]
    for name, p in members[1:]:
        check_compatible(first, p, names[0], name)
    need_decode = first.model.is_decoder
    ctx = workload.prompt_tokens + workload.new_tokens
    m = workload.new_tokens
    stage_ms, stage_mem = [], []
    for name, p in members:
        costs = stage_costs(p, name, workload, need_decode)
        stage_ms.append(costs.prefill_ms + m * costs.token_ms)
        stage_mem.append(np.array([s.param_bytes + s.kv_cache_bytes_per_token * ctx for s in p.stages], float))
    hop_ms, busy = [], []
    for rate, rtt in hops:
        lm, _ = link_terms(cost_model, rtt, np.array(rate), np.array(rate))
        hop_ms.append(lm)
        b, _ = link_terms(cost_model, 0.0, np.array(rate), np.array(rate))
        busy.append(b)
    caps = np.full(len(members), np.inf)
    for name, cap in (memory_caps or {}).items():
        if name not in names:
            raise UserInputError(f"memory cap for {name!r}: no such chain member ({', '.join(names)})")
        caps[names.index(name)] = cap
    return ChainProblem(
        members=names, stage_ms=np.array(stage_ms), stage_mem=np.array(stage_mem), hop_ms=np.array(hop_ms),
        hop_busy_ms=np.array(busy), memory_caps=caps,
        hop_names=[f"{names[j]}-{names[j + 1]}" for j in range(len(hops))],
        hop_rates_bps=[float(r) for r, _ in hops], hop_rtts_ms=[float(t) for _, t in hops],
        hop_payload_bytes=cost_model.up_prefill_bytes.copy(),
    )


@lru_cache(maxsize=16)
def _upper(n1: int) -> np.ndarray:
    """Mask of b <= b' on an n1 x n1 grid (cached: the chain DP is called in tight loops)."""
    return np.triu(np.ones((n1, n1), bool))


def solve_chain(prob: ChainProblem, objective: str = "latency") -> tuple[list[int], float]:
    """Exact contiguous partition by DP.

    Latency without memory caps uses the prefix-sum form ``f'[b'] = S[b'] + min_{b<=b'} (f[b] - S[b])``
    (a running minimum, O(K N)); otherwise each middle member is one min-plus (or min-max) product
    with its (N+1) x (N+1) segment matrix (O(K N^2)); the first member's segments all start at 0
    and the last's all end at N, so those two are a row and a column.

    Returns:
        (boundaries, value): ``boundaries`` = [b_0=0, b_1, ..., b_K=N]; ``value`` = total latency
        [ms] (objective 'latency') or bottleneck [ms] ('throughput').

    Raises:
        InfeasibleError: No partition fits the members' memory caps.
    """
    if objective not in ("latency", "throughput"):
        raise UserInputError(f"chain objective {objective!r}: expected latency or throughput")
    k, n = prob.stage_ms.shape
    back = []
    if objective == "latency" and np.all(np.isinf(prob.memory_caps)):
        f = np.full(n + 1, np.inf)
        f[0] = 0.0
        s = upto(prob.stage_ms)
        idx = np.arange(n + 1)
        for j in range(k):
            g = f - s[j]
            # Running argmin of g: where the running minimum was last improved.
            run = np.minimum.accumulate(g)
            arg = np.maximum.accumulate(np.where(g == run, idx, 0))
            f = s[j] + run
            if j < k - 1:
                f = f + prob.hop_ms[j]
            back.append(arg)
    else:
        s = upto(prob.stage_ms)
        m = upto(prob.stage_mem)
        caps = prob.memory_caps
        latency = objective == "latency"
        # The first member starts at stage 0: its segments are one row, no minimisation.
        f = np.where(m[0] <= caps[0], s[0], np.inf)
        f = f + prob.hop_ms[0] if latency else np.maximum(f, prob.hop_busy_ms[0])
        back.append(np.zeros(n + 1, dtype=int))
        upper = _upper(n + 1)
        cols = np.arange(n + 1)
        for j in range(1, k - 1):
            ok = upper & (m[j][None, :] - m[j][:, None] <= caps[j]) if np.isfinite(caps[j]) else upper
            comp = np.where(ok, s[j][None, :] - s[j][:, None], np.inf)
            tot = f[:, None] + comp if latency else np.maximum(f[:, None], comp)
            arg = np.argmin(tot, axis=0)
            f = tot[arg, cols]
            f = f + prob.hop_ms[j] if latency else np.maximum(f, prob.hop_busy_ms[j])
            back.append(arg)
        # The last member ends at stage N: one column.
        seg = np.where(m[-1][n] - m[-1] <= caps[-1], s[-1][n] - s[-1], np.inf)
        tot = f + seg if latency else np.maximum(f, seg)
        arg = np.full(n + 1, int(np.argmin(tot)))
        f = np.full(n + 1, tot[arg[0]])
        back.append(arg)
    value = float(f[n])
    if not np.isfinite(value):
        raise InfeasibleError("no partition of the chain fits the members' memory caps")
    if objective == "throughput":
        # Many partitions often share the bottleneck: among them, the least latency, then fewest hops.
        return _least_latency_within(prob, value), value
    return _trace(back, n), value


def _trace(back: list[np.ndarray], n: int) -> list[int]:
    bounds = [n]
    for j in range(len(back) - 1, -1, -1):
        bounds.append(int(back[j][bounds[-1]]))
    return bounds[::-1]


def hops_used(prob: ChainProblem, bounds: list[int]) -> int:
    """Hops that carry something: hop j does unless every stage is done before it (b_{j+1} = N)."""
    return sum(1 for b in bounds[1:-1] if b < prob.num_stages)


def _least_latency_within(prob: ChainProblem, limit: float) -> list[int]:
    """The partition of least total latency, then fewest hops, whose bottleneck is at most ``limit``.

    A min-sum DP (O(K N^2)) over the partitions the bottleneck allows: every member's compute and
    every hop's occupancy within ``limit`` (relative tolerance 1e-9: equal sums built in another order
    differ in the last bits), memory caps respected. Latency ties (same tolerance) go to fewer hops.
    """
    k, n = prob.stage_ms.shape
    tol = 1e-9 * max(limit, 1e-12)
    s, m = upto(prob.stage_ms), upto(prob.stage_mem)
    upper, cols = _upper(n + 1), np.arange(n + 1)
    f = np.where(cols == 0, 0.0, np.inf)  # latency with stages [0, b) done by the members so far
    hops = np.zeros(n + 1)
    back = []
    for j in range(k):
        comp = s[j][None, :] - s[j][:, None]
        ok = upper & (comp <= limit + tol) & (m[j][None, :] - m[j][:, None] <= prob.memory_caps[j])
        tot = np.where(ok, f[:, None] + comp, np.inf)
        best = tot.min(axis=0)
        near = tot <= best + 1e-9 * np.maximum(np.abs(best), 1e-12)
        arg = np.argmin(np.where(near, hops[:, None], np.inf), axis=0)
        f, hops = tot[arg, cols], hops[arg]
        if j < k - 1:
            f = np.where(prob.hop_busy_ms[j] <= limit + tol, f + prob.hop_ms[j], np.inf)
            hops = hops + (cols < n)
        back.append(arg)
    return _trace(back, n)


def chain_costs(prob: ChainProblem, bounds: list[int]) -> tuple[float, float]:
    """(total latency, bottleneck) of a given partition, in ms."""
    comp = [float(prob.stage_ms[j, bounds[j]:bounds[j + 1]].sum()) for j in range(len(prob.members))]
    hops = [float(prob.hop_ms[j, bounds[j + 1]]) for j in range(len(prob.members) - 1)]
    busy = [float(prob.hop_busy_ms[j, bounds[j + 1]]) for j in range(len(prob.members) - 1)]
    return sum(comp) + sum(hops), max(comp + busy)


def describe_chain(prob: ChainProblem, bounds: list[int], objective: str) -> ChainPlan:
    """The chosen partition as the plan records it."""
    names = stage_names(prob.num_stages - 2)
    total, bottleneck = chain_costs(prob, bounds)
    segs = [
        ChainSegment(
            member=prob.members[j], first_stage=bounds[j], num_stages=bounds[j + 1] - bounds[j],
            stage_names=names[bounds[j]:bounds[j + 1]],
            compute_ms=float(prob.stage_ms[j, bounds[j]:bounds[j + 1]].sum()),
            memory_bytes=int(prob.stage_mem[j, bounds[j]:bounds[j + 1]].sum()),
        )
        for j in range(len(prob.members))
    ]
    hops = [
        ChainHop(link=prob.hop_names[j], rate_bps=prob.hop_rates_bps[j], rtt_ms=prob.hop_rtts_ms[j],
                 payload_bytes=int(prob.hop_payload_bytes[bounds[j + 1]]) if bounds[j + 1] < prob.num_stages else 0,
                 transfer_ms=float(prob.hop_ms[j, bounds[j + 1]]))
        for j in range(len(prob.members) - 1)
    ]
    return ChainPlan(members=prob.members, objective=objective, segments=segs, hops=hops, total_latency_ms=total,
                     bottleneck_ms=bottleneck, throughput_rps=1e3 / bottleneck if bottleneck > 0 else 0.0)
