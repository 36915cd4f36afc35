"""Cut and wire precision as a policy of the channel state: candidates, exact envelopes, lookups.

A *candidate* is a (cut, wire precision): cut 0 (token ids cross) and the cut after the head (all on
the device) once each, every cut in between once per wire precision the robustness profile
knows. For a fixed workload, each candidate's costs at uplink rate ``r`` are exactly linear in
``x = 1 / r``: latency ``a + b x`` (the downlink follows the uplink unless the link fixes it),
device energy ``e + P airtime(1) x`` (compute plus transmit at the link's top power), so the
objective (latency, energy or their weighted sum) is ``alpha + beta x`` too.

The policy is exact, not sampled:

* along the channel's severity (erasure probability, or minus the SNR), a candidate meets the
  quality budget up to its *threshold* (the quality curves are non-decreasing in severity, see
  :mod:`coinfer.planner.quality`), so between consecutive thresholds the feasible set is fixed;
* within such a cell, the best candidate along ``x`` is the lower envelope of lines, each cut
  short where a latency or energy budget ends it (budgets are non-decreasing in ``x`` too).

Each (severity cell, rate segment) is one row of the table; a lookup returns the same choice as
an exhaustive search at that state (ties aside), which the tests check by brute force.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coinfer.planner.cost import Budgets, CostModel, Objective
from coinfer.planner.link import Link
from coinfer.planner.quality import Curve, QualityModel
from coinfer.planner.search import cumulative
from coinfer.planner.tables import link_terms, onward

_TOL = 1e-12


@dataclass(frozen=True)
class Choice:
    """One candidate: a cut and the wire precision the activation crosses it in (None: no activation)."""

    cut: int
    wire: str | None


@dataclass
class CandidateTable:
    """Every candidate's costs as lines in ``x = 1 / uplink rate``, and its quality curve."""

    choices: list[Choice]
    num_blocks: int
    impairment: str
    quality: QualityModel
    curves: list[Curve | None]
    objective: Objective
    limit_loss: float | None  # the quality budget as a loss bound; None: no budget
    lat_alpha: np.ndarray  # ms
    lat_beta: np.ndarray  # ms x bit/s
    e_alpha: np.ndarray  # J
    e_beta: np.ndarray  # J x bit/s
    device_mem: np.ndarray  # bytes on the device (weights + KV of the stages before the cut)
    server_mem: np.ndarray  # bytes on the server (the stages from the cut on)
    static_ok: np.ndarray  # memory budget met
    xmax: np.ndarray  # largest x at which the latency and energy budgets hold
    thresholds: np.ndarray  # largest severity at which the quality budget holds (and quality is known)
    notes: list[str] = field(default_factory=list)

    @property
    def obj_alpha(self) -> np.ndarray:
        """Objective at infinite rate."""
        return np.asarray(self.objective.value(self.lat_alpha, self.e_alpha), dtype=float)

    @property
    def obj_beta(self) -> np.ndarray:
        """Objective slope in ``x``."""
        return np.asarray(self.objective.value(self.lat_beta, self.e_beta), dtype=float)

    def index(self, cut: int, wire: str | None) -> int | None:
        """The candidate of (cut, wire); cut 0 and the last cut ignore the wire."""
        for k, c in enumerate(self.choices):
            if c.cut == cut and (c.wire is None or c.wire == wire):
                return k
        return None

    def blocks_on_device(self) -> np.ndarray:
        """Blocks each candidate runs on the device (the paper's split ``s``)."""
        return np.clip(np.array([c.cut for c in self.choices]) - 1, 0, self.num_blocks)


@dataclass
class StateEval:
    """Every candidate at every state: arrays of shape (K, S); losses as in :mod:`quality`."""

    latency_ms: np.ndarray
    energy_j: np.ndarray
    objective: np.ndarray
    loss_mean: np.ndarray  # NaN: unknown
    loss_bound: np.ndarray
    feasible: np.ndarray


def _coefficients(m: CostModel, rtt_ms: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cut: round-trip ms, uplink and downlink ms x bit/s, uplink airtime s x bit/s (shared tables)."""
    inf, one = np.array(np.inf), np.array(1.0)
    rtt, _ = link_terms(m, rtt_ms, inf, inf)
    up, air = link_terms(m, 0.0, one, inf)
    down, _ = link_terms(m, 0.0, inf, one)
    return rtt, up, down, air


def _xmax(alpha: np.ndarray, beta: np.ndarray, limit: float | None) -> np.ndarray:
    if limit is None:
        return np.full(alpha.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = np.where(alpha <= limit, np.inf, -np.inf)
        return np.where(beta > 0, (limit - alpha) / np.where(beta > 0, beta, 1.0), flat)


def build_table(
    models: dict[str, CostModel],
    base_wire: str,
    link: Link,
    quality: QualityModel,
    impairment: str,
    objective: Objective,
    budgets: Budgets,
    limit: float | None,
    freq_scale: float = 1.0,
) -> CandidateTable:
    """The candidates of every wire precision in ``models`` (keyed by wire) and their lines.

    Args:
        models: One cost model per wire precision, same workload; ``base_wire`` among them.
        base_wire: The model cut 0 and the last cut use (their payload does not depend on it).
        link: The link (RTT, fixed downlink, transmit power).
        quality: The robustness profile's curves.
        impairment: 'none', 'erasure' or 'awgn': which curves judge the states.
        objective: What to minimise.
        budgets: Latency, energy and memory budgets (distortion is pruning's; 0 here).
        limit: The quality budget in the profile's metric (None: none).
        freq_scale: Device DVFS scale.
    """
    base = models[base_wire]
    n_st = base.num_stages
    wires = [w for w in quality.wires if w in models]
    choices = [Choice(0, None)] + [Choice(c, w) for c in range(1, n_st) for w in wires] + [Choice(n_st, None)]
    limit_loss = quality.limit_loss(limit) if limit is not None else None
    rows = {name: [] for name in ("rtt", "up", "down", "air", "ms", "j", "mem", "srv")}
    ctx = base.workload.prompt_tokens + base.workload.new_tokens
    srv_mem = onward(base.param_bytes + base.kv_bytes_per_token * ctx)
    tabs = {}
    for w in {base_wire, *wires}:
        cu = cumulative(models[w])
        tabs[w] = (*_coefficients(models[w], link.rtt_ms), cu.dev_ms[0], cu.dev_j[0], cu.mem[0], cu.srv_ms[0])
    for ch in choices:
        rtt, up, down, air, dev_ms, dev_j, mem, srv_ms = tabs[ch.wire or base_wire]
        c = ch.cut
        srv = srv_ms[c]
        for name, v in (("rtt", rtt[c]), ("up", up[c]), ("down", down[c]), ("air", air[c]),
                        ("ms", dev_ms[c] / freq_scale + srv), ("j", dev_j[c] * freq_scale ** 2),
                        ("mem", mem[c]), ("srv", srv_mem[c])):
            rows[name].append(float(v))
    r = {k: np.array(v) for k, v in rows.items()}
    fixed = link.downlink_rate_bps
    lat_alpha = r["ms"] + r["rtt"] + (r["down"] / fixed if fixed is not None else 0.0)
    lat_beta = r["up"] + (0.0 if fixed is not None else r["down"])
    power = float(link.powers()[-1])
    e_alpha, e_beta = r["j"], power * r["air"]
    static_ok = np.ones(len(choices), bool)
    if budgets.memory_bytes is not None:
        static_ok &= r["mem"] <= budgets.memory_bytes
    xmax = np.minimum(_xmax(lat_alpha, lat_beta, budgets.latency_ms), _xmax(e_alpha, e_beta, budgets.energy_j))
    xmax = np.where(static_ok, xmax, -np.inf)
    curves = [quality.curve(ch.cut, ch.wire or base_wire, impairment) for ch in choices]
    lim = np.inf if limit_loss is None else limit_loss
    thresholds = np.array([-np.inf if cv is None else cv.threshold(lim) for cv in curves])
    return CandidateTable(
        choices=choices, num_blocks=base.num_blocks, impairment=impairment, quality=quality, curves=curves,
        objective=objective, limit_loss=limit_loss, lat_alpha=lat_alpha, lat_beta=lat_beta, e_alpha=e_alpha,
        e_beta=e_beta, device_mem=r["mem"], server_mem=r["srv"], static_ok=static_ok,
        xmax=xmax, thresholds=thresholds,
    )


def evaluate_states(t: CandidateTable, sev: np.ndarray, up: np.ndarray) -> StateEval:
    """Every candidate at every state (exhaustively): costs, quality and feasibility, shape (K, S)."""
    x = 1.0 / np.asarray(up, dtype=float)
    lat = t.lat_alpha[:, None] + t.lat_beta[:, None] * x[None, :]
    en = t.e_alpha[:, None] + t.e_beta[:, None] * x[None, :]
    obj = np.asarray(t.objective.value(lat, en), dtype=float)
    mean = np.full(lat.shape, np.nan)
    bound = np.full(lat.shape, np.nan)
    for k, cv in enumerate(t.curves):
        if cv is not None:
            mean[k], bound[k] = cv.at(sev)
    ok = t.static_ok[:, None] & ~np.isnan(bound) & (x[None, :] <= t.xmax[:, None])
    if t.limit_loss is not None:
        ok &= np.nan_to_num(bound, nan=np.inf) <= t.limit_loss
    return StateEval(lat, en, obj, mean, bound, ok)


def best_per_state(ev: StateEval) -> np.ndarray:
    """The feasible candidate of least objective at each state (-1 when none is feasible)."""
    masked = np.where(ev.feasible, ev.objective, np.inf)
    best = np.argmin(masked, axis=0)
    return np.where(np.isfinite(masked[best, np.arange(masked.shape[1])]), best, -1)


def envelope(alpha, beta, xmax, ks, x_lo: float, x_hi: float) -> list[tuple[float, float, int]]:
    """The lower envelope of lines ``alpha + beta x`` over ``[x_lo, x_hi]``, line k valid for x <= xmax[k].

    Returns:
        Segments (x_from, x_to, k) covering the interval in order; k = -1 where no line is valid.
        Ties go to the line that stays best to the right (smaller slope), then the lower index.
    """
    active = [k for k in ks if xmax[k] >= x_lo]
    out: list[tuple[float, float, int]] = []
    x = x_lo
    while True:
        if not active:
            out.append((x, x_hi, -1))
            return out
        vals = np.array([alpha[k] + beta[k] * x for k in active])
        best = vals.min()
        tied = [k for k, v in zip(active, vals, strict=True) if v <= best + _TOL * max(1.0, abs(best))]
        k = min(tied, key=lambda j: (beta[j], j))
        end = min(float(xmax[k]), x_hi)
        for j in active:
            if beta[j] < beta[k]:
                xc = (alpha[j] - alpha[k]) / (beta[k] - beta[j])
                if x + _TOL * max(1.0, abs(x)) < xc <= xmax[j]:
                    end = min(end, xc)
        out.append((x, end, k))
        if end >= x_hi:
            return out
        x = end
        active = [j for j in active if xmax[j] > x]


@dataclass
class PolicyCell:
    """Severity range (lo, hi] (the first cell includes lo) with its rate segments in x."""

    sev_lo: float
    sev_hi: float
    segments: list[tuple[float, float, int]]


def build_policy(t: CandidateTable, sev_lo: float, sev_hi: float, x_lo: float, x_hi: float) -> list[PolicyCell]:
    """The exact policy over severities [sev_lo, sev_hi] and x = 1/rate in [x_lo, x_hi]."""
    th = t.thresholds
    cuts = sorted({float(v) for v in th if sev_lo <= v < sev_hi})
    bounds = [*cuts, sev_hi]
    alpha, beta = t.obj_alpha, t.obj_beta
    cells: list[PolicyCell] = []
    lo = sev_lo
    for hi in bounds:
        ks = [k for k in range(len(t.choices)) if th[k] >= hi]
        segs = envelope(alpha, beta, t.xmax, ks, x_lo, x_hi)
        if cells and [s[2] for s in cells[-1].segments] == [s[2] for s in segs] and \
                np.allclose([s[:2] for s in cells[-1].segments], [s[:2] for s in segs], rtol=1e-12, atol=0):
            cells[-1].sev_hi = hi
        else:
            cells.append(PolicyCell(lo, hi, segs))
        lo = hi
    return cells


def lookup(cells: list[PolicyCell], sev: float, x: float) -> int | None:
    """The policy's candidate at one state; None outside the policy's range, -1 where none is feasible."""
    tol = _TOL * max(1.0, abs(sev))
    if not cells or sev < cells[0].sev_lo - tol or sev > cells[-1].sev_hi + tol:
        return None
    cell = next(c for c in cells if sev <= c.sev_hi + tol)
    xt = _TOL * max(1.0, abs(x))
    if x < cell.segments[0][0] - xt or x > cell.segments[-1][1] + xt:
        return None
    return next(k for lo, hi, k in cell.segments if x <= hi + xt)


def static_best(ev: StateEval, weights: np.ndarray) -> int:
    """The one candidate of least expected objective that is feasible at every state of positive weight."""
    w = np.asarray(weights, dtype=float)
    use = w > 0
    ok = ev.feasible[:, use].all(axis=1)
    if not ok.any():
        return -1
    expected = np.where(ok, (ev.objective[:, use] * w[use]).sum(axis=1), np.inf)
    return int(np.argmin(expected))
