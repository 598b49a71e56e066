"""Summaries of repeated measurements and the side-by-side comparison of two of them.

Pure functions over lists of floats, so they can be checked without running anything. A
comparison reports the ratio and the difference of the medians (the figures the targets are
stated in) and a bootstrap interval for the difference, because a 2-core machine shared with
other work is noisy and a verdict should say how sure it is.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0..100) by linear interpolation, like numpy's default."""
    if not values:
        raise ValueError("percentile of no values")
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * pct / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """n, median, p5/p25/p75/p95, min, max and mean of ``values`` (all None when empty)."""
    if not values:
        return {"n": 0, "median": None, "p5": None, "p25": None, "p75": None, "p95": None,
                "min": None, "max": None, "mean": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p5": percentile(values, 5),
        "p25": percentile(values, 25),
        "p75": percentile(values, 75),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def bootstrap_diff_ci(
    base: Sequence[float],
    subject: Sequence[float],
    stat: Callable[[Sequence[float]], float] = statistics.median,
    *,
    rounds: int = 400,
    confidence: float = 0.90,
    seed: int = 6,
) -> tuple[float, float] | None:
    """A percentile-bootstrap interval for ``stat(subject) - stat(base)`` (None if too few)."""
    if len(base) < 3 or len(subject) < 3:
        return None
    rng = random.Random(seed)
    diffs = []
    for _ in range(rounds):
        b = rng.choices(base, k=len(base))
        s = rng.choices(subject, k=len(subject))
        diffs.append(stat(s) - stat(b))
    tail = (1 - confidence) / 2 * 100
    return percentile(diffs, tail), percentile(diffs, 100 - tail)


def p95(values: Sequence[float]) -> float:
    return percentile(values, 95)


def compare(
    base: Sequence[float], subject: Sequence[float], stat: str = "median"
) -> dict[str, Any]:
    """Ratio and difference of ``stat`` (median or p95) of subject vs base, with a CI."""
    fn: Callable[[Sequence[float]], float] = statistics.median if stat == "median" else p95
    if not base or not subject:
        return {"stat": stat, "base": None, "subject": None, "ratio": None, "diff": None,
                "diff_ci90": None}
    b, s = fn(base), fn(subject)
    ci = bootstrap_diff_ci(base, subject, fn)
    return {
        "stat": stat,
        "base": b,
        "subject": s,
        "ratio": (s / b) if b else None,
        "diff": s - b,
        "diff_ci90": list(ci) if ci else None,
    }
