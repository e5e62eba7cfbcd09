"""Latency summaries: percentiles over measured samples, in milliseconds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["TIMING_FIELDS", "latency_summary", "median_timings"]

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
