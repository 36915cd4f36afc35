"""Predicted phase latencies for a run: from a plan, or (when it lands) the planner's cost model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coinfer.errors import UserInputError
from coinfer.reports.plan import Candidate, PhaseBreakdown, Plan


@dataclass(frozen=True)
class Prediction:
    """Predicted latency of the prefill and of one decode step, with where it came from.

    A chain plan predicts only the whole request: then ``prefill`` is None and ``total_ms`` set.
    """

    prefill: PhaseBreakdown | None
    per_token: PhaseBreakdown | None
    source: str
    total_ms: float | None = None


def _plain(c: Candidate) -> bool:
    return c.ratio == 0 and c.freq_scale == 1.0


def from_plan(plan: Plan, cut: int, wire_dtype: str, plan_path: str) -> tuple[Prediction | None, list[str]]:
    """The plan's prediction for ``cut``.

    Its ``best`` when that is the cut (unpruned, at full frequency, as ``coinfer run`` runs it),
    else the plan's nominal candidate at that cut (unpruned, frequency scale 1).

    Returns:
        (prediction or None, notes explaining any mismatch).
    """
    notes: list[str] = []
    cand: Candidate | None = None
    src = ""
    best = plan.best
    if best is not None and best.cut == cut and _plain(best):
        cand, src = best, f"plan {plan_path}: best"
    else:
        pool = [c for c in (*plan.nominal, *plan.candidates) if c.cut == cut and _plain(c)]
        if pool:
            cand, src = pool[0], f"plan {plan_path}: nominal at cut {cut}"
            if best is not None and best.cut == cut:
                notes.append(f"the plan's best is pruned (ratio {best.ratio:g}) or frequency-scaled "
                             f"({best.freq_scale:g}); unpruned shards ran at full speed, predicted by the nominal candidate")
            else:
                notes.append(f"the run's cut {cut} is not the plan's best; predictions are the plan's at that cut")
    if cand is None:
        notes.append(f"the plan has no unpruned prediction for cut {cut}")
        return None, notes
    if plan.link.wire_dtype != wire_dtype:
        notes.append(f"the plan assumed wire dtype {plan.link.wire_dtype}, the run used {wire_dtype}")
    return Prediction(cand.prefill, cand.per_token, src), notes


def chain_from_plan(plan: Plan, plan_path: str) -> tuple[list[int], Prediction]:
    """Cut positions and the predicted whole-request latency of a chain plan."""
    assert plan.chain is not None
    cuts = []
    for seg in plan.chain.segments[:-1]:
        cuts.append(seg.first_stage + seg.num_stages)
    return cuts, Prediction(None, None, f"plan {plan_path}: chain ({' -> '.join(plan.chain.members)})",
                            total_ms=plan.chain.total_latency_ms)


def from_profiles(
    device_profile: str, server_profile: str | None, cut: int, *, rate_bps: float, rtt_ms: float, wire_dtype: str,
    prompt_tokens: int, new_tokens: int,
) -> tuple[Prediction, list[str], Any]:
    """Predict ``cut`` from profiles and the link with the planner's cost model.

    Args:
        device_profile: Path of the device's profile.
        server_profile: Path of the server's profile; None uses the device's (both roles on one
            machine, as in a local run).
        cut: Stages on the device.
        rate_bps: Link rate, both directions.
        rtt_ms: Round-trip time.
        wire_dtype: Activation dtype on the wire.
        prompt_tokens: Prompt length.
        new_tokens: Decode steps.

    Returns:
        (prediction, notes, the device Profile).

    Raises:
        SchemaError: A profile is malformed, or the two are of different models.
        UserInputError: The planner's predictor is missing.
    """
    from coinfer.reports.io import load_document
    from coinfer.reports.profile import Profile

    try:
        from coinfer.planner.cost import evaluate
        from coinfer.planner.link import Link
    except ImportError:
        raise UserInputError(
            "--device-profile needs the planner's cost model (coinfer.planner.cost), which this build lacks; "
            "give --plan instead"
        ) from None
    dev = load_document(device_profile, Profile)
    srv = load_document(server_profile, Profile) if server_profile else dev
    notes = [] if server_profile else ["no server profile: the device profile predicts the server too (one machine)"]
    link = Link(rate_bps=rate_bps, downlink_rate_bps=rate_bps, rtt_ms=rtt_ms, wire_dtype=wire_dtype)
    cand = evaluate(dev, srv, link, cut, prompt_tokens=prompt_tokens, new_tokens=new_tokens, wire_dtype=wire_dtype)
    src = f"planner cost model: {device_profile}" + (f" + {server_profile}" if server_profile else "")
    return Prediction(cand.prefill, cand.per_token, src), notes, dev
