"""Summaries: latency percentiles in milliseconds, and the median of paired values with its spread."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TIMING_FIELDS", "agreement", "latency_summary", "median_ci", "median_timings", "spread_summary"]

# The pipeline's own per-image timings (Prediction.timings / the Timings message), in ms.
TIMING_FIELDS = ("decode_ms", "queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """count, p50, p90, p99, mean, min and max of `seconds`, in ms (p99 of few samples is near the max)."""
    if not seconds:
        raise ValueError("expected at least one latency sample")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": float(len(ms)),
        "p50_ms": round(float(p50), 3),
        "p90_ms": round(float(p90), 3),
        "p99_ms": round(float(p99), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def median_timings(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each pipeline timing over `rows` (one per image): where the time went, step by step."""
    return {name: round(float(np.median([row[name] for row in rows])), 3) for name in TIMING_FIELDS}


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the median of `values`: the k-th smallest and k-th
    largest, with k the largest rank such that the median lies outside with probability at most
    1 - `confidence` (binomial, p = 1/2). None when there are too few values (fewer than 6 for 95%)."""
    n = len(values)
    tail = (1.0 - confidence) / 2.0
    k, below = 0, 0.0
    for j in range(n):
        below += math.comb(n, j) / 2.0**n  # P(fewer than j + 1 values under the median)
        if below > tail:
            break
        k = j + 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def spread_summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """The median of per-pair `values` (ratios or differences) with its spread: quartiles, extremes, the
    median's distribution-free 95% interval (None with fewer than 6 values), and the relative half-width of
    the interquartile range (`iqr_half_width`: (q3 - q1) / 2 / |median|, a drift gauge for ratios)."""
    if not values:
        raise ValueError("expected at least one paired value")
    median = float(np.median(values))
    q1, q3 = (float(q) for q in np.percentile(values, [25, 75]))
    ci = median_ci(values)
    return {
        "pairs": len(values),
        "values": [round(v, digits) for v in values],
        "median": round(median, digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "ci95": None if ci is None else [round(ci[0], digits), round(ci[1], digits)],
        "iqr_half_width": round((q3 - q1) / 2.0 / abs(median), digits) if median else None,
    }


def agreement(first: float, second: float, tolerance: float = 0.03) -> dict[str, Any]:
    """Whether two runs' figures for one ratio agree within `tolerance`, relative to the first."""
    if first <= 0 or second <= 0:
        raise ValueError(f"expected positive figures, got {first} and {second}")
    change = second / first - 1.0
    # Rounded first: 0.97 / 1.0 - 1 is -0.030000000000000027 in floating point.
    agree = abs(round(change, 9)) <= tolerance
    return {"first": first, "second": second, "change": round(change, 4), "agree": agree}
