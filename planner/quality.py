"""Quality at a cut, wire precision and channel state, read from a robustness profile. No torch.

Every figure is a *loss* inside this module: the profile's metric times ``sign`` (+1 for the
perplexity ratio, -1 for pooled cosine), so larger is always worse; :meth:`QualityModel.native`
turns a loss back into the metric. Two figures per point: the **mean** over the draws and the
**bound**, the pessimistic end of the confidence interval (``ci_high`` of a perplexity ratio,
``ci_low`` of a cosine). Budgets are checked against the bound.

The channel's *severity* orders states from good to bad: the erasure probability, or minus the
SNR [dB] for AWGN. How a state between measurements is judged (never more optimistically than a
measurement allows):

* **Monotone in severity.** The measured points of one (cut, wire, impairment) are made
  non-decreasing in severity by a running maximum (a worse channel is never credited with a
  better figure than a better channel measured), then interpolated linearly between them.
* **Better than the best measured channel:** the clean point (wire precision alone) sits at
  erasure probability 0 when measured (fp32 alone is exact: the split reproduces the model);
  otherwise, and always for AWGN above the highest measured SNR, the best measured figure is held.
* **Worse than the worst measured channel:** unknown. Unknown is never planned for.
* **Unmeasured cuts** between two measured ones get the worse of their two neighbours at the
  same wire and state; cuts outside the measured ones are unknown. Exceptions, both exact: the
  cut after the head (all on the device, nothing crosses) keeps the clean model's quality, and
  cut 0 (token ids cross, no wire quantisation) is exact on a clean channel; under an impaired
  channel cut 0 is unknown (the profile measures activations only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coinfer.reports.robustness import RobustnessPoint, RobustnessProfile
from coinfer.vocab import WIRE_DTYPES

EXACT = 1.0  # the clean model's perplexity ratio and pooled cosine


def severity(impairment: str, level) -> np.ndarray:
    """Severity of states: erasure probability, minus the SNR for AWGN, 0 for a clean channel."""
    lv = np.asarray(level, dtype=float)
    if impairment == "erasure":
        return lv
    if impairment == "awgn":
        return -lv
    return np.zeros_like(lv)


def level_of(impairment: str, sev: float) -> float | None:
    """Inverse of :func:`severity` for one value (None for a clean channel or an unbounded end)."""
    if impairment == "none" or not np.isfinite(sev):
        return None
    return float(sev) if impairment == "erasure" else float(-sev)


class Curve:
    """Loss (mean and pessimistic bound) as a non-decreasing function of severity."""

    def at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, bound) at severities ``x``; NaN where unknown."""
        raise NotImplementedError

    def threshold(self, limit: float) -> float:
        """The largest severity whose bound is at most ``limit`` (-inf: none; inf: every one)."""
        raise NotImplementedError


@dataclass
class Constant(Curve):
    """The same figure at every severity (an exact cut, or a clean channel)."""

    mean: float
    bound: float

    def at(self, x):
        x = np.asarray(x, dtype=float)
        return np.full(x.shape, self.mean), np.full(x.shape, self.bound)

    def threshold(self, limit):
        return np.inf if self.bound <= limit else -np.inf


@dataclass
class Knots(Curve):
    """Measured points (severity ascending), enveloped; held below the first, unknown after the last."""

    xs: np.ndarray
    mean: np.ndarray
    bound: np.ndarray

    @classmethod
    def make(cls, xs, mean, bound) -> Knots:
        """Sort by severity, merge equal severities (worst wins) and apply the running maximum."""
        order = np.argsort(np.asarray(xs, dtype=float), kind="stable")
        x, m, b = (np.asarray(v, dtype=float)[order] for v in (xs, mean, bound))
        ux = np.unique(x)
        um = np.array([m[x == v].max() for v in ux])
        ub = np.array([b[x == v].max() for v in ux])
        return cls(ux, np.maximum.accumulate(um), np.maximum.accumulate(ub))

    def at(self, x):
        x = np.asarray(x, dtype=float)
        m = np.interp(x, self.xs, self.mean)
        b = np.interp(x, self.xs, self.bound)
        unknown = x > self.xs[-1]
        return np.where(unknown, np.nan, m), np.where(unknown, np.nan, b)

    def threshold(self, limit):
        b, xs = self.bound, self.xs
        if b[0] > limit:
            return -np.inf
        if b[-1] <= limit:
            return float(xs[-1])
        i = int(np.argmax(b > limit))
        return float(xs[i - 1] + (limit - b[i - 1]) / (b[i] - b[i - 1]) * (xs[i] - xs[i - 1]))


@dataclass
class WorseOf(Curve):
    """An unmeasured cut between two measured ones: the worse of the two."""

    a: Curve
    b: Curve

    def at(self, x):
        ma, ba = self.a.at(x)
        mb, bb = self.b.at(x)
        return np.maximum(ma, mb), np.maximum(ba, bb)  # NaN (unknown) wins

    def threshold(self, limit):
        return min(self.a.threshold(limit), self.b.threshold(limit))


def figure_of(profile: RobustnessProfile, p: RobustnessPoint):
    """The point's estimate of the profile's metric (None when it lacks one)."""
    return p.perplexity_ratio if profile.metric == "perplexity_ratio" else p.pooled_cosine


def points_for(impairment: str, wire: str):
    """A predicate on points: those that judge ``wire`` under ``impairment``.

    The impairment's own points, and the clean ones (they sit at erasure probability 0; the AWGN
    axis has no finite end for them).
    """
    def keep(p: RobustnessPoint) -> bool:
        imp = p.condition.impairment
        return p.condition.wire_dtype == wire and (imp == impairment or (imp == "none" and impairment != "awgn"))
    return keep


def evaluations_of(profile: RobustnessProfile, keep) -> int:
    """Model evaluations behind the points ``keep(point)`` selects: their share of the profile's draws."""
    figs = [(p, figure_of(profile, p)) for p in profile.points]
    total = sum(f.draws for _, f in figs if f is not None)
    mine = sum(f.draws for p, f in figs if f is not None and keep(p))
    return int(round(profile.model_evaluations * mine / max(1, total)))


def _ordered_wires(found: set[str]) -> list[str]:
    known = [w for w in WIRE_DTYPES if w in found]
    return known + sorted(found - set(known))


class QualityModel:
    """The robustness profile as curves per (cut, wire, impairment); see the module note."""

    def __init__(self, profile: RobustnessProfile):
        self.profile = profile
        self.metric = profile.metric
        self.sign = 1.0 if profile.metric == "perplexity_ratio" else -1.0
        self.num_blocks = profile.model.num_blocks
        self.num_stages = self.num_blocks + 2
        self.skipped = 0
        self._points: dict[tuple[int, str, str], list[tuple[float, float, float]]] = {}
        for p in profile.points:
            fig = self._figure(p)
            if fig is None:
                self.skipped += 1
                continue
            cond = p.condition
            lvl = {"erasure": cond.erasure_p, "awgn": cond.snr_db, "none": 0.0}[cond.impairment]
            key = (p.cut, cond.wire_dtype, cond.impairment)
            self._points.setdefault(key, []).append((float(severity(cond.impairment, lvl)), *fig))
        self.measured_cuts = sorted({k[0] for k in self._points if 1 <= k[0] < self.num_stages})
        self.wires = _ordered_wires({k[1] for k in self._points} | {"fp32"})
        self._payload = {}
        for p in profile.points:
            w = p.condition.wire_dtype
            self._payload[w] = max(self._payload.get(w, 0), p.payload_bytes_per_token)

    def _figure(self, p: RobustnessPoint) -> tuple[float, float] | None:
        est = figure_of(self.profile, p)
        if est is None:
            return None
        losses = [self.sign * est.mean, self.sign * est.ci_low, self.sign * est.ci_high]
        return losses[0], max(losses)

    def payload_per_token(self, wire: str) -> int | None:
        """Bytes one token's activation costs in ``wire`` as the profile recorded (largest seen)."""
        return self._payload.get(wire)

    def native(self, loss):
        """A loss back in the profile's metric (floats or arrays)."""
        return self.sign * loss

    def limit_loss(self, limit: float) -> float:
        """A budget on the metric as a bound on the loss."""
        return self.sign * limit

    def _clean(self, cut: int, wire: str) -> Constant | None:
        pts = self._points.get((cut, wire, "none"))
        if pts:
            return Constant(max(m for _, m, _ in pts), max(b for _, _, b in pts))
        if wire == "fp32":
            return Constant(self.sign * EXACT, self.sign * EXACT)
        return None

    def _measured(self, cut: int, wire: str, impairment: str) -> Curve | None:
        clean = self._clean(cut, wire)
        if impairment == "none":
            return clean
        pts = list(self._points.get((cut, wire, impairment), []))
        if not pts:
            return None
        if impairment == "erasure" and clean is not None and all(x > 0 for x, _, _ in pts):
            pts.append((0.0, clean.mean, clean.bound))
        xs, m, b = zip(*pts, strict=True)
        return Knots.make(xs, m, b)

    def curve(self, cut: int, wire: str, impairment: str) -> Curve | None:
        """The loss curve of one (cut, wire, impairment); None when unknown (see the module note)."""
        if cut == self.num_stages:
            return Constant(self.sign * EXACT, self.sign * EXACT)
        if cut == 0:
            return Constant(self.sign * EXACT, self.sign * EXACT) if impairment == "none" else None
        if cut in self.measured_cuts:
            return self._measured(cut, wire, impairment)
        below = [c for c in self.measured_cuts if c < cut]
        above = [c for c in self.measured_cuts if c > cut]
        if not below or not above:
            return None
        a = self._measured(below[-1], wire, impairment)
        b = self._measured(above[0], wire, impairment)
        return WorseOf(a, b) if a is not None and b is not None else None

    def max_severity(self, impairment: str) -> float:
        """The worst measured severity of an impairment (-inf when it was never measured)."""
        xs = [x for (c, w, imp), pts in self._points.items() if imp == impairment for x, _, _ in pts]
        return max(xs) if xs else -np.inf
