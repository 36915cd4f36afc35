"""Rendering of a plan made with a robustness profile: best choice, policy table, states, replay."""

from __future__ import annotations

from rich import box
from rich.table import Table

from coinfer.cli.common import Output
from coinfer.reports.plan import Plan, Policy, PolicyRow
from coinfer.units import fmt_rate

_MAX_ROWS = 60
_METRIC = {"perplexity_ratio": "ppl ratio", "pooled_cosine": "cosine"}


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


def _level(pol: Policy, v: float | None, lower_end: bool) -> str:
    if pol.impairment == "none":
        return "clean"
    if v is None:
        return "+inf dB" if pol.impairment == "awgn" and lower_end else "-"
    return f"{v:.3g}" if pol.impairment == "erasure" else f"{v:.3g} dB"


def _rates_vary(rows: list[PolicyRow]) -> bool:
    return any(abs(r.rate_to_bps - r.rate_from_bps) > 1e-9 * r.rate_to_bps for r in rows)


def _rows_table(pol: Policy, rows: list[PolicyRow], objective: str, rates: bool) -> Table:
    what = {"erasure": "p", "awgn": "SNR", "none": "channel"}[pol.impairment]
    unit = {"latency": "ms", "energy": "J"}.get(objective, "")
    t = Table(title=f"policy: channel state -> cut and wire ({objective})", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True, show_edge=False)
    cols = [f"{what} from", f"{what} to"] + (["rate from", "rate to"] if rates else []) + [
        "cut", "device to", "wire", f"{objective[:3]} {unit}".strip() + ("*" if rates else ""), "bound"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("device to", "wire") else "right", no_wrap=True)
    for r in rows:
        obj = _num(r.objective_to)
        cells = [_level(pol, r.level_from, True), _level(pol, r.level_to, False)]
        cells += [fmt_rate(r.rate_from_bps), fmt_rate(r.rate_to_bps)] if rates else []
        cells += ["-" if r.cut is None else str(r.cut), r.cut_name, r.wire_dtype or ("ids" if r.cut == 0 else "-"),
                  obj, _num(r.quality_bound)]
        t.add_row(*cells)
    return t


def _states_table(plan: Plan) -> Table:
    pol = plan.policy
    t = Table(title="choice at each given state", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in ("prob", "rate", "SNR dB", "erasure p", "cut", "device to", "wire", "latency ms", "J",
                _METRIC[pol.metric]):
        t.add_column(col, justify="left" if col in ("device to", "wire") else "right", no_wrap=True)
    for s in pol.states:
        st = s.state
        t.add_row(_num(st.probability, ".3g"), fmt_rate(s.uplink_rate_bps), _num(st.snr_db, ".3g"),
                  _num(st.erasure_p, ".3g"), "-" if s.cut is None else str(s.cut), s.cut_name,
                  s.wire_dtype or "-", _num(s.latency_ms), _num(s.energy_j, ".3g"), _num(s.quality, ".5g"))
    return t


def _replay_table(pol: Policy) -> Table:
    t = Table(title="replay over the trace (one request per step)", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True, show_edge=False)
    for col in ("method", "R", "ms", "J", _METRIC[pol.metric].split()[0], "worst", "over", "sw", "evals"):
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
    for m in pol.replay:
        t.add_row(m.method, _num(m.mean_reward, ".3f"), _num(m.mean_latency_ms), _num(m.mean_energy_j, ".3g"),
                  _num(m.mean_quality, ".4g"), _num(m.worst_quality, ".4g"), str(m.budget_violations),
                  str(m.switches), f"{m.model_evaluations:,}")
    return t


def render_policy_plan(plan: Plan, out: Output) -> None:
    """Print a robustness plan: the best single choice, the policy, the states' choices, the replay."""
    pol, b = plan.policy, plan.best
    budget = pol.quality_budget
    limit = "no quality budget" if budget is None else (
        f"{_METRIC[budget.metric]} {'<=' if budget.metric == 'perplexity_ratio' else '>='} {budget.limit:g} "
        "(pessimistic end of the interval)")
    out.print(f"channel: {pol.source} ({pol.impairment}); {limit}; wires {', '.join(pol.wires)}", highlight=False)
    head = "best" if pol.source == "fixed" else "best single choice over the states"
    out.print(
        f"[bold]{head}[/]: cut {b.cut} ({b.cut_name}), wire {b.wire_dtype or '-'}: {b.total_latency_ms:,.4g} ms, "
        f"{b.energy.total_j:.4g} J, {_METRIC[pol.metric]} {_num(b.quality, '.5g')}"
        + ("" if b.feasible else f" (breaks: {'; '.join(b.violations)})"))
    rows = pol.rows
    rates = _rates_vary(rows)
    out.print(_rows_table(pol, rows[:_MAX_ROWS], plan.objective, rates))
    out.print(f"bound = the budgeted {_METRIC[pol.metric]} at the row's worst channel"
                  + ("; * at the row's top rate" if rates else ""), highlight=False)
    if len(rows) > _MAX_ROWS:
        out.print(f"({len(rows) - _MAX_ROWS} more rows in the plan file)")
    if pol.states and pol.source == "distribution":
        out.print(_states_table(plan))
    if pol.expected_objective is not None and pol.source != "fixed":
        out.print(f"expected {plan.objective}: policy {pol.expected_objective:.5g}, best single choice "
                      f"{pol.static_expected_objective:.5g}", highlight=False)
    out.print(f"cuts the policy may use {pol.cuts_used}: the device shard ({pol.device_memory_bytes / 1e6:,.2f} MB) "
                  f"and the server shard ({pol.server_memory_bytes / 1e6:,.2f} MB) hold every stage their side may run",
                  highlight=False)
    if pol.replay:
        out.print(_replay_table(pol))
        out.print("R = the paper's reward 10 (PPL_ref - PPL) / PPL_ref + (L - s) / L; over = steps over a budget "
                      "or of unknown quality; sw = switches of cut; evals = expensive model evaluations the method's decisions "
                      "needed",
                      highlight=False)
        out.print(f"switching delay {pol.switch_delay_ms:g} ms per change of cut; robustness profile: "
                      f"{pol.model_evaluations:,} model evaluations; an exact table over the trace's distinct states "
                      f"would need about {pol.exhaustive_evaluations:,}", highlight=False)
    for note in pol.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
