"""`coinfer plan --robustness`: the wire precision with the cut, under a quality budget, per channel state.

One library call (:func:`robust_plan`) turns profiles, a robustness profile and channel states (a
fixed state, a distribution, or a trace) into a Plan whose ``policy`` section maps channel states to
a (cut, wire precision), and - for a trace - replays the policy and its baselines step by step
(:mod:`coinfer.planner.replay`). The rules for quality between measurements are in
:mod:`coinfer.planner.quality`, those for the rate of a state in :mod:`coinfer.planner.channel`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from coinfer.errors import InfeasibleError, SchemaError, UserInputError
from coinfer.planner.channel import (
    ChannelState,
    check_erasure,
    common_impairment,
    parse_erasure,
    parse_snr_db,
    state_rates,
)
from coinfer.planner.cost import CostModel, Workload, build_cost_model
from coinfer.planner.link import Link
from coinfer.planner.plan import PlanRequest, Prepared, input_file, prepare
from coinfer.planner.policy import (
    CandidateTable,
    PolicyCell,
    StateEval,
    build_policy,
    build_table,
    evaluate_states,
    lookup,
    static_best,
)
from coinfer.planner.quality import QualityModel, evaluations_of, level_of, points_for, severity
from coinfer.planner.replay import (
    PAPER_A,
    PAPER_B,
    MethodRun,
    account,
    fixed_runs,
    oracle_choices,
    paper_choices,
    policy_choices,
)
from coinfer.planner.trace import distribution_states, load_states, load_trace, trace_states
from coinfer.reports.io import load_document
from coinfer.reports.plan import Candidate, Plan, Policy, PolicyRow, QualityBudget, StateChoice, StateSpec
from coinfer.reports.profile import Profile
from coinfer.reports.replay import ReplayReport
from coinfer.reports.robustness import RobustnessProfile
from coinfer.units import parse_duration_ms
from coinfer.vocab import cut_name

QUALITY_NOTES = [
    "quality: the robustness profile's points, made non-decreasing in channel severity (running worst) and "
    "interpolated linearly between measured conditions; better than the best measured channel: the clean point "
    "(erasure 0) or the best measured figure held; worse than the worst measured: unknown, never planned for",
    "quality at unmeasured cuts: the worse of the two measured neighbours; outside the measured cuts unknown, except "
    "all-on-device (nothing crosses: exact) and cut 0 on a clean channel (token ids: exact)",
    "quality budget checked against the pessimistic end of each confidence interval; the mean is what is reported",
    "channel state: erasure_p judges on erasure points, an SNR alone on AWGN points; the uplink rate is the state's "
    "rate_bps, else B log2(1 + SNR) on a wireless uplink, else the link's rate; the downlink follows the uplink "
    "unless --down-rate fixes it",
]


@dataclass
class RobustSpec:
    """What ``--robustness`` adds to a plan request (already parsed into numbers).

    Attributes:
        robustness: Path of the robustness profile.
        max_ppl_ratio: Decoders: the perplexity ratio (over the clean model) the plan may reach.
        min_cosine: Encoders: the pooled cosine (to the clean model) the plan must keep.
        erasure_p, snr_db: A fixed channel state (either, both, or neither = a clean channel).
        states: Path of a distribution of states (JSON or CSV).
        trace: Path of a trace of time-stamped states (JSON or CSV): the plan is replayed over it.
        switch_delay_ms: Delay a change of cut costs in a replay; None = one RTT.
        rl_timesteps: PPO timesteps of the paper's RL baseline in the replay (0 = not run).
        rl_seed: Seed of the RL baseline.
    """

    robustness: str
    max_ppl_ratio: float | None = None
    min_cosine: float | None = None
    erasure_p: float | None = None
    snr_db: float | None = None
    states: str | None = None
    trace: str | None = None
    switch_delay_ms: float | None = None
    rl_timesteps: int = 0
    rl_seed: int = 0

    def __post_init__(self) -> None:
        if self.max_ppl_ratio is not None and self.min_cosine is not None:
            raise UserInputError("give --max-ppl-ratio (decoders) or --min-cosine (encoders), not both")
        if self.max_ppl_ratio is not None and not (math.isfinite(self.max_ppl_ratio) and self.max_ppl_ratio >= 1):
            raise UserInputError(f"--max-ppl-ratio {self.max_ppl_ratio!r}: must be a number >= 1 (1 = the clean model)")
        if self.min_cosine is not None and not (math.isfinite(self.min_cosine) and -1 <= self.min_cosine <= 1):
            raise UserInputError(f"--min-cosine {self.min_cosine!r}: must be in [-1, 1]")
        if self.erasure_p is not None:
            check_erasure(self.erasure_p)
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise UserInputError(f"--snr-db {self.snr_db!r}: not a finite number")
        given = [o for o, v in (("--erasure/--snr-db", self.erasure_p is not None or self.snr_db is not None),
                                ("--states", self.states), ("--trace", self.trace)) if v]
        if len(given) > 1:
            raise UserInputError(f"give one channel description: {' or '.join(given)}, not several")
        if self.switch_delay_ms is not None and not (math.isfinite(self.switch_delay_ms) and self.switch_delay_ms >= 0):
            raise UserInputError("--switch-delay must be a finite duration, not negative")
        if self.rl_timesteps < 0:
            raise UserInputError(f"--rl-timesteps {self.rl_timesteps}: must not be negative")
        if self.rl_timesteps and self.trace is None:
            raise UserInputError("--rl-timesteps trains the RL baseline on a trace: give --trace")

    @property
    def limit(self) -> float | None:
        """The quality budget in the profile's metric."""
        return self.max_ppl_ratio if self.max_ppl_ratio is not None else self.min_cosine


@dataclass
class RobustResult:
    """The plan, and the step-by-step replay when a trace was given."""

    plan: Plan
    replay: ReplayReport | None = None


@dataclass
class _States:
    states: list[ChannelState]
    weights: np.ndarray
    source: str
    path: str | None


def _refuse_unsupported(req: PlanRequest) -> None:
    bad = [o for o, v in (("--prune-report", req.prune), ("--precision-report", req.precision), ("--sweep-rate", req.sweep), ("chains of --device-profile", req.chain),
                          ("--freq-range with several steps", req.freq_range[2] > 1),
                          ("--tx-power-range", req.link is not None and len(req.link.tx_powers_w) > 1)) if v]
    if bad:
        raise UserInputError(f"{bad[0]} is not combined with --robustness (the robustness profile is of the unpruned "
                             "model; the policy chooses cut and wire precision)")


def _check_profile(rob: RobustnessProfile, device: Profile, spec: RobustSpec) -> None:
    a, b = rob.model, device.model
    if not a.same_architecture(b) or a.num_blocks != b.num_blocks:
        raise SchemaError(f"the robustness profile is of another model ({a.name}, {a.num_blocks} blocks, config "
                          f"{a.config_sha256[:12]}) than the profiles ({b.name}, {b.num_blocks} blocks, config "
                          f"{b.config_sha256[:12]})")
    if spec.max_ppl_ratio is not None and rob.metric != "perplexity_ratio":
        raise UserInputError(f"--max-ppl-ratio: the robustness profile measures {rob.metric} (an encoder): give "
                             "--min-cosine")
    if spec.min_cosine is not None and rob.metric != "pooled_cosine":
        raise UserInputError(f"--min-cosine: the robustness profile measures {rob.metric} (a decoder): give "
                             "--max-ppl-ratio")


def _load_states(spec: RobustSpec) -> _States:
    if spec.trace is not None:
        st = trace_states(load_trace(spec.trace))
        return _States(st, np.full(len(st), 1.0 / len(st)), "trace", spec.trace)
    if spec.states is not None:
        st = distribution_states(load_states(spec.states))
        return _States(st, np.array([s.probability for s in st]), "distribution", spec.states)
    return _States([ChannelState(erasure_p=spec.erasure_p, snr_db=spec.snr_db)], np.ones(1), "fixed", None)


def wire_models(device: Profile, server: Profile, wl: Workload, quality: QualityModel, base_wire: str,
                notes: list[str]) -> dict[str, CostModel]:
    """One cost model per wire precision the robustness profile knows (and the base one).

    A wire precision the device profile has no payload for (e.g. a profile older than int4) takes
    its per-token bytes from the robustness profile.
    """
    models: dict[str, CostModel] = {}
    for w in dict.fromkeys([base_wire, *quality.wires]):
        if all(w in st.payload_after for st in device.stages[:-1]):
            models[w] = build_cost_model(device, server, wl, w)
            continue
        per_token = quality.payload_per_token(w)
        if per_token is None:
            notes.append(f"wire {w}: no payload size in the profiles; left out")
            continue
        m = build_cost_model(device, server, wl, "fp32")
        batch = device.context.batch
        up_p, up_t = m.up_prefill_bytes.copy(), m.up_token_bytes.copy()
        up_p[1:m.num_stages] = per_token * batch * wl.prompt_tokens
        up_t[1:m.num_stages] = per_token * batch if m.is_decoder else 0
        models[w] = dataclasses.replace(m, wire_dtype=w, up_prefill_bytes=up_p, up_token_bytes=up_t)
        notes.append(f"wire {w}: payload from the robustness profile ({per_token} B per token); the device profile "
                     "has none")
    for m in models.values():
        notes.extend(n for n in m.notes if not n.startswith("wire ") and n not in notes)
    return models


def _severity_range(impairment: str, sev: np.ndarray, quality: QualityModel, source: str) -> tuple[float, float]:
    if impairment == "none":
        return 0.0, 0.0
    lo = 0.0 if impairment == "erasure" else -np.inf
    hi = float(sev.max())
    if source == "fixed":  # show where the choice moves over the whole measured range
        hi = max(hi, quality.max_severity(impairment))
    return lo, hi


def policy_rows(t: CandidateTable, cells: list[PolicyCell]) -> list[PolicyRow]:
    """The policy as table rows (ascending severity, then ascending rate)."""
    rows = []
    alpha, beta = t.obj_alpha, t.obj_beta
    for cell in cells:
        for x_from, x_to, k in reversed(cell.segments):
            ch = t.choices[k] if k >= 0 else None
            qb = None
            if ch is not None and t.curves[k] is not None and np.isfinite(cell.sev_hi):
                qb = float(t.quality.native(t.curves[k].at(np.array([cell.sev_hi]))[1][0]))
            rows.append(PolicyRow(
                impairment=t.impairment, level_from=level_of(t.impairment, cell.sev_lo),
                level_to=level_of(t.impairment, cell.sev_hi), rate_from_bps=1.0 / x_to, rate_to_bps=1.0 / x_from,
                cut=ch.cut if ch else None, cut_name=cut_name(ch.cut, t.num_blocks) if ch else "infeasible",
                wire_dtype=ch.wire if ch else None,
                objective_from=float(alpha[k] + beta[k] * x_to) if ch else None,
                objective_to=float(alpha[k] + beta[k] * x_from) if ch else None, quality_bound=qb,
            ))
    return rows


def _state_choices(t: CandidateTable, ev: StateEval, st: _States, up: np.ndarray, ks: np.ndarray) -> list[StateChoice]:
    out = []
    for i, (s, k) in enumerate(zip(st.states, ks, strict=True)):
        ch = t.choices[k] if k >= 0 else None
        out.append(StateChoice(
            state=StateSpec(rate_bps=s.rate_bps, snr_db=s.snr_db, erasure_p=s.erasure_p, probability=s.probability),
            uplink_rate_bps=float(up[i]), cut=ch.cut if ch else None,
            cut_name=cut_name(ch.cut, t.num_blocks) if ch else "infeasible", wire_dtype=ch.wire if ch else None,
            latency_ms=float(ev.latency_ms[k, i]) if ch else None, energy_j=float(ev.energy_j[k, i]) if ch else None,
            objective=float(ev.objective[k, i]) if ch else None,
            quality=float(t.quality.native(ev.loss_mean[k, i])) if ch else None,
            quality_bound=float(t.quality.native(ev.loss_bound[k, i])) if ch else None,
        ))
    return out


def _static_choice(ev: StateEval, weights: np.ndarray) -> tuple[int, bool]:
    """The best single choice, and whether it meets the budgets at every state."""
    k = static_best(ev, weights)
    if k >= 0:
        return k, True
    use = weights > 0
    known = ~np.isnan(ev.loss_mean[:, use]).any(axis=1)
    if not known.any():
        return -1, False
    score = np.where(known, ev.feasible[:, use].sum(axis=1), -1)
    pool = np.flatnonzero(score == score.max())
    expected = (ev.objective[pool][:, use] * weights[use]).sum(axis=1)
    return int(pool[np.argmin(expected)]), False


@dataclass
class _Context:
    req: PlanRequest
    prep: Prepared
    spec: RobustSpec
    rob: RobustnessProfile
    models: dict[str, CostModel]
    table: CandidateTable
    ev: StateEval
    st: _States
    sev: np.ndarray
    up: np.ndarray
    base_wire: str
    freq: float


def _candidate(cx: _Context, k: int) -> Candidate:
    """Candidate ``k`` over the states' weights: costs at the rate 1 / E[1 / rate] equal the expected ones."""
    t, ev, w, link = cx.table, cx.ev, cx.st.weights, cx.req.link
    ch = t.choices[k]
    wire = ch.wire or cx.base_wire
    up_eff = 1.0 / float(np.sum(w / cx.up))
    at = Link(rate_bps=up_eff, downlink_rate_bps=link.downlink_rate_bps, rtt_ms=link.rtt_ms, wire_dtype=wire,
              tx_powers_w=link.tx_powers_w[-1:])
    c = cx.models[wire].evaluate(at, ch.cut, 0, cx.freq, None, cx.prep.objective, cx.req.budgets)
    use = w > 0
    loss = ev.loss_mean[k, use]
    quality = None if np.isnan(loss).any() else float(t.quality.native(np.sum(loss * w[use]) / np.sum(w[use])))
    violations = list(c.violations)
    bad = int((~ev.feasible[k, use]).sum())
    if bad:
        violations.append(f"breaks a budget (quality, latency, energy or memory) at {bad} of {int(use.sum())} states")
    return c.model_copy(update=dict(wire_dtype=ch.wire, quality=quality, violations=violations,
                                    feasible=not violations))


def _per_cut(cx: _Context) -> list[Candidate]:
    t, ev, w = cx.table, cx.ev, cx.st.weights
    out = []
    for cut in range(t.num_blocks + 3):
        ks = [k for k, c in enumerate(t.choices) if c.cut == cut]
        sub = StateEval(*(getattr(ev, f.name)[ks] for f in dataclasses.fields(StateEval)))
        k, _ = _static_choice(sub, w)
        out.append(_candidate(cx, ks[k] if k >= 0 else ks[0]))
    return out


def _exhaustive_evaluations(rob: RobustnessProfile, t: CandidateTable, sev: np.ndarray) -> int:
    """Estimate: every distinct state x crossing candidate, at the profile's draws and evaluations per draw."""
    figs = [p.perplexity_ratio if rob.metric == "perplexity_ratio" else p.pooled_cosine for p in rob.points]
    draws = [f.draws for f in figs if f is not None]
    impaired = [f.draws for f, p in zip(figs, rob.points, strict=True) if f is not None and not p.condition.deterministic]
    per_draw = rob.model_evaluations / max(1, sum(draws))
    crossing = sum(1 for c in t.choices if 0 < c.cut <= t.num_blocks + 1)
    return int(round(len(np.unique(sev)) * crossing * float(np.median(impaired or [1])) * per_draw))


def _one_wire(cx: _Context, bounds: tuple[float, float, float, float]) -> MethodRun:
    """The policy restricted to the base wire precision: what the paper's setting allows, on the same points."""
    t, ev, w = cx.table, cx.ev, cx.base_wire
    keep = np.array([c.wire in (None, w) for c in t.choices])
    sub = dataclasses.replace(t, thresholds=np.where(keep, t.thresholds, -np.inf))
    ev_sub = dataclasses.replace(ev, feasible=ev.feasible & keep[:, None])
    choices = policy_choices(build_policy(sub, *bounds), ev_sub, cx.sev, cx.up)
    return MethodRun(f"policy {w} only", "policy", choices, evaluations_of(cx.rob, points_for(t.impairment, w)),
                     f"the robustness profile's points at {w} (their share of its model evaluations)")


def _replay(cx: _Context, cells: list[PolicyCell], bounds: tuple[float, float, float, float]) -> ReplayReport:
    t, ev, rob, n = cx.table, cx.ev, cx.rob, len(cx.st.states)
    delay = cx.spec.switch_delay_ms if cx.spec.switch_delay_ms is not None else cx.req.link.rtt_ms
    switch_cost = delay if cx.prep.objective.kind != "energy" else 0.0
    profile_note = "the robustness profile's model evaluations"
    runs = [
        MethodRun("policy", "policy", policy_choices(cells, ev, cx.sev, cx.up), rob.model_evaluations, profile_note),
        _one_wire(cx, bounds),
        MethodRun("oracle", "oracle", oracle_choices(t, ev, switch_cost), rob.model_evaluations,
                  profile_note + ", read exhaustively at each step's exact state"),
        MethodRun("paper-reward", "paper_reward", paper_choices(t, ev, cx.base_wire),
                  evaluations_of(rob, points_for(t.impairment, cx.base_wire)),
                  f"the robustness profile's points at {cx.base_wire}; R maximised exactly per state"),
    ]
    if cx.spec.rl_timesteps:
        from coinfer.planner.rl_baseline import rl_run  # torch: only when asked

        runs.append(rl_run(t, ev, cx.sev, cx.up, cx.base_wire, rob, cx.spec.rl_timesteps, cx.spec.rl_seed))
    runs += fixed_runs(t, cx.base_wire, n)
    done = [account(t, ev, r, delay, PAPER_A, PAPER_B) for r in runs]
    trace_in = input_file("trace", cx.spec.trace)
    return ReplayReport(
        model=cx.prep.device.model, trace=trace_in, metric=rob.metric, impairment=t.impairment,
        switch_delay_ms=delay, t_s=[float(s.t_s) for s in cx.st.states], uplink_rate_bps=[float(u) for u in cx.up],
        level=[s.level for s in cx.st.states], summary=[d[0] for d in done], methods=[d[1] for d in done],
    )


def _infeasible(cx: _Context) -> InfeasibleError:
    t, ev = cx.table, cx.ev
    quality_ok = t.limit_loss is None or bool((np.nan_to_num(ev.loss_bound, nan=np.inf) <= t.limit_loss).any())
    if not quality_ok:
        return InfeasibleError("no cut and wire precision meets the quality budget at this channel state")
    return InfeasibleError("no cut and wire precision meets the latency, energy or memory budget together with the "
                           "quality budget at this channel state")


def _context(req: PlanRequest) -> _Context:
    spec = req.robust
    _refuse_unsupported(req)
    prep = prepare(req)
    if prep.server is None:
        raise UserInputError("give --server PROFILE, or --server-speedup X")
    rob = load_document(spec.robustness, RobustnessProfile)
    _check_profile(rob, prep.device, spec)
    prep.inputs.append(input_file("robustness", spec.robustness))
    st = _load_states(spec)
    if st.path is not None:
        prep.inputs.append(input_file(st.source, st.path))
    quality = QualityModel(rob)
    impairment = common_impairment(st.states)
    if impairment != "none" and quality.max_severity(impairment) == -np.inf:
        other = {"awgn": "an erasure probability (coinfer trace --erasure-model maps SNR to erasure)",
                 "erasure": "an SNR"}[impairment]
        raise UserInputError(f"the robustness profile has no {impairment} points: give {other}")
    base_wire = req.link.wire_dtype
    models = wire_models(prep.device, prep.server, prep.workload, quality, base_wire, prep.notes)
    freq = float(prep.freqs[0])
    table = build_table(models, base_wire, req.link, quality, impairment, prep.objective, req.budgets, spec.limit, freq)
    sev = severity(impairment, [s.level or 0.0 for s in st.states])
    up, _ = state_rates(st.states, req.link)
    ev = evaluate_states(table, sev, up)
    return _Context(req, prep, spec, rob, models, table, ev, st, sev, up, base_wire, freq)


def robust_plan(req: PlanRequest) -> RobustResult:
    """The whole ``coinfer plan --robustness`` as one call (see the module note).

    Raises:
        UserInputError: Inconsistent options, or states the profile cannot judge.
        SchemaError: Files of the wrong kind or version, a robustness profile of another model,
            bad traces (missing or non-monotonic timestamps, values out of range).
        InfeasibleError: A fixed state at which nothing meets the budgets.
    """
    cx = _context(req)
    t, ev, st = cx.table, cx.ev, cx.st
    lo, hi = _severity_range(t.impairment, cx.sev, t.quality, st.source)
    x = 1.0 / cx.up
    bounds = (lo, hi, float(x.min()), float(x.max()))
    cells = build_policy(t, *bounds)
    ks = np.array([lookup(cells, float(s), float(xx)) for s, xx in zip(cx.sev, x, strict=True)])
    k_best, _ = (int(ks[0]), True) if st.source == "fixed" else _static_choice(ev, st.weights)
    if k_best < 0:
        raise _infeasible(cx)
    replay = _replay(cx, cells, bounds) if st.source == "trace" else None
    return RobustResult(_assemble(cx, cells, ks, k_best, replay), replay)


def _assemble(cx: _Context, cells: list[PolicyCell], ks: np.ndarray, k_best: int, replay: ReplayReport | None) -> Plan:
    t, ev, st, req, prep = cx.table, cx.ev, cx.st, cx.req, cx.prep
    best = _candidate(cx, k_best)
    ends = {c: _candidate(cx, t.index(c, None)) for c in (0, t.num_blocks + 2)}
    # What the shards must hold: a fixed state's choice, else every choice the table may make over the states' range.
    picked = ks[ks >= 0] if st.source == "fixed" else np.unique([k for c in cells for *_, k in c.segments if k >= 0])
    used = sorted({t.choices[k].cut for k in picked})
    obj = ev.objective[ks, np.arange(len(ks))] if (ks >= 0).all() else None
    n_st = t.num_blocks + 2
    nominal = [cx.models[cx.base_wire].evaluate(req.link, c, 0, cx.freq, None, prep.objective, req.budgets)
               for c in range(n_st + 1)]
    budget = None if cx.spec.limit is None else QualityBudget(metric=cx.rob.metric, limit=cx.spec.limit)
    policy = Policy(
        metric=cx.rob.metric, quality_budget=budget, impairment=t.impairment, source=st.source,
        wires=[w for w in t.quality.wires if w in cx.models], rows=policy_rows(t, cells),
        states=_state_choices(t, ev, st, cx.up, ks) if st.source != "trace" else [],
        expected_objective=float(np.sum(obj * st.weights)) if obj is not None else None,
        static_expected_objective=float(np.sum(ev.objective[k_best] * st.weights)),
        cuts_used=used, device_memory_bytes=int(round(max(t.device_mem[picked], default=0))),
        server_memory_bytes=int(round(max(t.server_mem[picked], default=0))),
        switch_delay_ms=replay.switch_delay_ms if replay else None, model_evaluations=cx.rob.model_evaluations,
        exhaustive_evaluations=_exhaustive_evaluations(cx.rob, t, cx.sev), replay=replay.summary if replay else [],
        notes=QUALITY_NOTES + _policy_notes(cx),
    )

    def gain(base: Candidate) -> float | None:
        return base.objective / best.objective if best.objective > 0 else None

    link = req.link.describe(req.link.tx_powers_w[-1] if req.link.tx_powers_w else None)
    return Plan(
        model=prep.device.model, inputs=prep.inputs, link=link.model_copy(update={"wire_dtype": best.wire_dtype or cx.base_wire}),
        objective=prep.objective.kind,
        energy_weight_ms_per_j=prep.objective.energy_weight_ms_per_j if prep.objective.kind == "weighted" else None,
        prompt_tokens=prep.workload.prompt_tokens, new_tokens=prep.workload.new_tokens, budgets=req.budgets.as_dict(),
        freq_scales=[cx.freq], ratios=[0.0], best=best, all_device=ends[n_st], all_server=ends[0],
        gain_over_all_device=gain(ends[n_st]), gain_over_all_server=gain(ends[0]), candidates=_per_cut(cx),
        nominal=nominal, policy=policy, notes=prep.notes,
    )


def _policy_notes(cx: _Context) -> list[str]:
    notes = []
    if cx.st.source != "fixed":
        notes.append("Plan.best is the best single choice over the states (feasible at every state when one is); its "
                     "latency and energy are the expected ones (evaluated at the rate 1 / E[1 / rate])")
    if cx.st.source == "trace":
        notes.append("replay: one request per trace step; a change of cut costs the switching delay (a change of wire "
                     "precision alone is free); shards hold every stage their side may run (memory per method)")
    if cx.table.quality.skipped:
        notes.append(f"{cx.table.quality.skipped} robustness points lack the {cx.rob.metric} figure; left out")
    return notes


def robust_spec_from_cli(
    *,
    robustness: str | None,
    max_ppl_ratio: float | None = None,
    min_cosine: float | None = None,
    erasure: str | None = None,
    snr_db: str | None = None,
    states: str | None = None,
    trace: str | None = None,
    switch_delay: str | None = None,
    rl_timesteps: int = 0,
    rl_seed: int = 0,
) -> RobustSpec | None:
    """Parse and check the ``--robustness`` family of `coinfer plan` options (None when not used).

    Raises:
        UserInputError: The first bad option, in one line (e.g. an erasure probability outside
            [0, 1], an SNR that is not a number, a channel option without --robustness).
    """
    # --max-ppl-ratio alone bounds pruning's perplexity (the prune report's evaluation text).
    extra = [o for o, v in (("--min-cosine", min_cosine), ("--erasure", erasure),
                            ("--snr-db", snr_db), ("--states", states), ("--trace", trace),
                            ("--switch-delay", switch_delay), ("--rl-timesteps", rl_timesteps or None)) if v is not None]
    if robustness is None:
        if extra:
            raise UserInputError(f"{extra[0]} needs --robustness FILE (a robustness profile from coinfer channel)")
        return None
    return RobustSpec(
        robustness=robustness, max_ppl_ratio=max_ppl_ratio, min_cosine=min_cosine,
        erasure_p=parse_erasure(erasure) if erasure is not None else None,
        snr_db=parse_snr_db(snr_db) if snr_db is not None else None, states=states, trace=trace,
        switch_delay_ms=parse_duration_ms(switch_delay, "--switch-delay") if switch_delay is not None else None,
        rl_timesteps=rl_timesteps, rl_seed=rl_seed,
    )
