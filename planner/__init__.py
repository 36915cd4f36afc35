"""coinfer.planner: cost model, link models, exact search, rate sweeps and chain DP (no torch).

Public API (what `coinfer run` and the README use):

* :func:`coinfer.planner.predict.predict_cut` - a cut's prediction from profile paths and a link
  (what `coinfer run --cut K` uses without a plan).
* :func:`coinfer.planner.cost.evaluate` - the predicted costs of one configuration (cut, ratio,
  frequency, power) from profiles and a link: the same figures the search uses.
* :func:`coinfer.planner.cost.derive_server_profile` - a server profile X times faster than a device's.
* :class:`coinfer.planner.link.Link` / :func:`coinfer.planner.link.wireless_link` - the link.
* :func:`coinfer.planner.plan.make_plan` - the whole `coinfer plan` as one call.
* :func:`coinfer.planner.search.search`, :func:`coinfer.planner.search.sweep_rates`,
  :func:`coinfer.planner.chain.solve_chain` - the optimisers.
* :mod:`coinfer.planner.tables` - the per-stage and per-cut tables the cost model, search and chain share.
"""

from coinfer.planner.cost import (
    Budgets,
    CostModel,
    Objective,
    Workload,
    build_cost_model,
    derive_server_profile,
    evaluate,
)
from coinfer.planner.link import Link, shannon_rate_bps, wireless_link
from coinfer.planner.plan import PlanRequest, make_plan
from coinfer.planner.predict import predict_cut

__all__ = [
    "Budgets",
    "CostModel",
    "Link",
    "Objective",
    "PlanRequest",
    "Workload",
    "build_cost_model",
    "derive_server_profile",
    "evaluate",
    "make_plan",
    "predict_cut",
    "shannon_rate_bps",
    "wireless_link",
]
