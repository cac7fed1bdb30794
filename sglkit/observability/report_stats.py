"""Numbers for the summary, and how the page and obs.compare print them: pure functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

STATS = ("mean", "p50", "p99", "max")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    frac = pos - lo
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac)


def series_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """mean, p50, p99, max (and min, samples) of a metric's samples over the run."""
    if not values:
        return {"mean": None, "p50": None, "p99": None, "max": None, "min": None, "samples": 0}
    v = sorted(values)
    return {
        "mean": sum(v) / len(v),
        "p50": percentile(v, 0.5),
        "p99": percentile(v, 0.99),
        "max": v[-1],
        "min": v[0],
        "samples": len(v),
    }


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2e}"


def fmt(v: float | None) -> str:
    return _fmt(v)


def fmt_count(v: float | None) -> str:
    """Sample and observation counts: whole numbers (observations come from increase())."""
    return "-" if v is None else f"{round(v):,}"
