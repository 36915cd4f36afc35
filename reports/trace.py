"""Channel states for planning: a trace of time-stamped states, or a distribution of states. No torch.

A *channel state* is what the link looks like while one request is served: the uplink rate
(``rate_bps``), the signal-to-noise ratio (``snr_db``) and the element erasure probability
(``erasure_p``), each optional. ``coinfer trace`` writes traces; ``coinfer plan --trace`` and
``--states`` read them (JSON as below, or CSV with the same column names; see
:mod:`coinfer.planner.trace`).

Rules every file obeys (refused in one line otherwise): timestamps present and strictly
increasing; erasure probabilities in [0, 1]; SNRs and rates finite numbers (rates positive);
each column given in every row or in none (a trace never switches channel model halfway); every
row carries at least one of rate, SNR and erasure; probabilities of a distribution sum to 1.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from coinfer.reports.common import Document, Schema

# History: 1 - first version.
TRACE_SCHEMA_VERSION = 1
STATES_SCHEMA_VERSION = 1

STATE_COLUMNS = ("rate_bps", "snr_db", "erasure_p")


class StateValues(Schema):
    """The channel values of one state; None = not given."""

    rate_bps: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="uplink rate")
    snr_db: float | None = Field(default=None, allow_inf_nan=False, description="signal-to-noise ratio, dB")
    erasure_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False,
                                    description="probability that one activation element arrives as 0")

    def given(self) -> tuple[str, ...]:
        """The names of the columns this state carries."""
        return tuple(c for c in STATE_COLUMNS if getattr(self, c) is not None)


class TraceStep(StateValues):
    """One time-stamped state of a trace."""

    t_s: float = Field(allow_inf_nan=False, description="time the state begins, seconds")


class WeightedState(StateValues):
    """One state of a distribution with its probability."""

    probability: float = Field(ge=0, le=1, allow_inf_nan=False)


class TraceGenerator(Schema):
    """How a generated trace was made (``coinfer trace``): enough to make it again."""

    kind: Literal["rayleigh", "gauss-markov"]
    seed: int
    mean_snr_db: float
    block_s: float = Field(gt=0)
    duration_s: float = Field(gt=0)
    bandwidth_hz: float | None = Field(default=None, gt=0, description="rate = B log2(1 + SNR) when given")
    correlation: float | None = Field(default=None, description="gauss-markov: AR(1) coefficient per block")
    sigma_db: float | None = Field(default=None, description="gauss-markov: stationary standard deviation, dB")
    erasure_model: Literal["bpsk", "qpsk"] | None = Field(default=None, description="SNR -> erasure mapping")
    element_bits: int | None = Field(default=None, ge=1, description="bits per element for the erasure mapping")
    model_description: str = Field(description="the formulas, in words")


def _consistent_columns(rows: list[StateValues], what: str) -> None:
    if not rows:
        raise ValueError(f"a {what} needs at least one row")
    first = rows[0].given()
    for i, r in enumerate(rows):
        if not r.given():
            raise ValueError(f"row {i + 1}: no channel value (give rate_bps, snr_db or erasure_p)")
        if r.given() != first:
            raise ValueError(f"row {i + 1} gives {', '.join(r.given())} but row 1 gives {', '.join(first)} "
                             "(each column in every row or in none)")


class ChannelTrace(Document):
    """A versioned trace of channel states (``coinfer trace``; ``coinfer plan --trace``)."""

    kind: Literal["channel_trace"] = "channel_trace"
    schema_version: Literal[1] = TRACE_SCHEMA_VERSION
    generator: TraceGenerator | None = None
    steps: list[TraceStep]
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ChannelTrace:
        _consistent_columns(self.steps, "trace")
        for i in range(1, len(self.steps)):
            a, b = self.steps[i - 1].t_s, self.steps[i].t_s
            if not b > a:
                raise ValueError(f"row {i + 1}: t_s {b:g} does not come after {a:g} (timestamps must increase)")
        return self


class ChannelStates(Document):
    """A versioned distribution of channel states (``coinfer plan --states``)."""

    kind: Literal["channel_states"] = "channel_states"
    schema_version: Literal[1] = STATES_SCHEMA_VERSION
    states: list[WeightedState]
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ChannelStates:
        _consistent_columns(self.states, "distribution")
        total = math.fsum(s.probability for s in self.states)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"probabilities sum to {total:.6g}, not 1")
        return self
