"""Robust summaries of timed repeats: median and interquartile range (no numpy needed)."""

from __future__ import annotations

from collections.abc import Sequence

NOISY_IQR_OVER_MEDIAN = 0.10


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (numpy's default method).

    Args:
        samples: At least one value.
        q: In [0, 1].

    Returns:
        The interpolated quantile.
    """
    if not samples:
        raise ValueError("quantile of no samples")
    xs = sorted(samples)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    """(median, interquartile range) of ``samples``."""
    return quantile(samples, 0.5), quantile(samples, 0.75) - quantile(samples, 0.25)


def is_noisy(median: float, iqr: float, limit: float = NOISY_IQR_OVER_MEDIAN) -> bool:
    """True when the spread (IQR over median) exceeds ``limit``."""
    return median > 0 and iqr / median > limit
