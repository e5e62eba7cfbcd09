"""Latency summaries: percentiles over measured samples, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["TIMING_FIELDS", "latency_summary", "median_ci", "median_timings"]

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
