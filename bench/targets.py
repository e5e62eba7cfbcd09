"""The issue's targets, each read from this run's own measurements, with its spread and a met/missed verdict.

Every ratio comes from pairs of short alternating segments (paired.py): the figure is the median of the
per-pair ratios (or differences, for c=1 latency), and a target's verdict is that median against the limit.
The 95% interval of the median is shown beside it: a verdict whose interval straddles the limit is "met" or
"missed" by less than this run can tell, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["RECORDED_POSTPROCESS_MS", "Target", "evaluate_targets"]

# Issue 15's targets (ratios in one run, against the in-process pipeline measured alongside).
UNARY_P50_OVERHEAD_MS = 1.5  # over the network path
SHM_P50_OVERHEAD_MS = 0.5  # with shared-memory input
THROUGHPUT_RATIO = 0.98
STREAM_RATIO = 1.0
FANOUT_CPU_RATIO = 1.15
RSS_AFTER_WARMUP_MB = 300.0
RSS_GROWTH_MB = 10.0
POSTPROCESS_RATIO = 0.5  # halved, at the same detections
# The responses' postprocess p50 at c=1 before this round of work (42ce114, 2-core AMD EPYC,
# bench/RESULTS.json): the reference when no --baseline-ref server is measured alongside.
RECORDED_POSTPROCESS_MS = 0.56


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: str  # the measurement, in words and units
    target: str
    ratio: float  # measured against the limit, oriented so that <= 1.0 always means met
    met: bool | None  # None: not measured in this run
    spread: str = ""  # the figure's interval and quartiles, in words
    figure: float | None = None  # the ratio two runs must agree on (--repeat), where it is one
    decided: bool = True  # False when the median's 95% interval holds the limit


def _interval(summary: dict[str, Any], unit: str = "") -> str:
    ci = summary["ci95"]
    ci_text = "n/a (too few pairs)" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}{unit}"
    return (
        f"95% CI {ci_text}; IQR {summary['q1']:.3f}-{summary['q3']:.3f}{unit}; "
        f"min-max {summary['min']:.3f}-{summary['max']:.3f}{unit} ({summary['pairs']} pairs)"
    )


def _decided(summary: dict[str, Any], limit: float) -> bool:
    ci = summary["ci95"]
    return ci is not None and not (ci[0] <= limit <= ci[1])


def _latency(name: str, pairs: dict[str, Any], limit_ms: float, floor: dict[str, Any] | None) -> Target:
    difference, ratio = pairs["difference_ms"], pairs["ratio"]
    floor_text = "" if floor is None else f"; gRPC's own floor here +{floor['outside_handler_p50_ms']:.2f} ms"
    return Target(
        name,
        f"median pair difference {difference['median']:+.2f} ms (served p50 "
        f"{pairs['served']['p50_ms']:.2f} vs in-process {pairs['in_process']['p50_ms']:.2f} ms; pair ratio "
        f"{ratio['median']:.3f}); CPU per image: server {pairs['server_cpu_ms_per_image']:.1f} ms, "
        f"in-process {pairs['in_process_cpu_ms_per_image']:.1f} ms{floor_text}",
        f"<= in-process + {limit_ms} ms",
        max(difference["median"], 0.0) / limit_ms,
        difference["median"] <= limit_ms,
        _interval(difference, " ms"),
        ratio["median"],
        _decided(difference, limit_ms),
    )


def _throughput(name: str, paired: dict[str, Any]) -> Target:
    local, served, ratio = paired["in_process"], paired["served"], paired["ratio"]
    median = ratio["median"]
    return Target(
        name,
        f"median pair ratio {median:.3f} (totals {served['requests_per_s_total']:.1f} vs "
        f"{local['images_per_s_total']:.1f} img/s, in-process batch {local['batch']}, {local['threads']} "
        f"thread(s)); CPU per image: server {served['cpu_ms_per_image']:.1f} ms, in-process "
        f"{local['cpu_ms_per_image']:.1f} ms",
        f">= {THROUGHPUT_RATIO} x in-process best",
        THROUGHPUT_RATIO / median,
        median >= THROUGHPUT_RATIO,
        _interval(ratio),
        median,
        _decided(ratio, THROUGHPUT_RATIO),
    )


def _stream(paired: dict[str, Any]) -> Target:
    local, served, ratio = paired["in_process"], paired["served"], paired["ratio"]
    median = ratio["median"]
    return Target(
        "stream frames/s, every-frame delivery",
        f"median pair ratio {median:.3f} (totals {served['fps_total']:.1f} vs {local['fps_total']:.1f} fps); "
        f"CPU per frame: server {served['cpu_ms_per_frame']:.1f} ms, "
        f"in-process {local['cpu_ms_per_frame']:.1f} ms",
        f">= {STREAM_RATIO} x in-process decode + infer loop",
        STREAM_RATIO / median,
        median >= STREAM_RATIO,
        _interval(ratio),
        median,
        _decided(ratio, STREAM_RATIO),
    )


def _fanout(paired: dict[str, Any]) -> Target:
    one, many, ratio = paired["1"], paired["8"], paired["ratio"]
    median = ratio["median"]
    return Target(
        "fan-out: server CPU per frame, 8 subscribers vs 1",
        f"median pair ratio {median:.3f} ({many['server_cpu_ms_per_frame']:.1f} vs "
        f"{one['server_cpu_ms_per_frame']:.1f} ms/frame)",
        f"<= {FANOUT_CPU_RATIO} x",
        median / FANOUT_CPU_RATIO,
        median <= FANOUT_CPU_RATIO,
        _interval(ratio),
        median,
        _decided(ratio, FANOUT_CPU_RATIO),
    )


def _memory(memory: dict[str, Any], full: bool) -> list[Target]:
    first, last = memory["checkpoints"]
    growth, warm = memory["growth_mb"], memory["warmup"]["rss_mb"]
    return [
        Target(
            "server RSS after warm-up, default model",
            f"{warm:.1f} MB ({memory['warmup']['requests']} requests at c={memory['concurrency']})",
            f"<= {RSS_AFTER_WARMUP_MB:.0f} MB",
            warm / RSS_AFTER_WARMUP_MB,
            warm <= RSS_AFTER_WARMUP_MB,
        ),
        Target(
            f"server RSS growth, {first['requests']:,} -> {last['requests']:,} requests",
            f"{growth:+.1f} MB ({first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB)",
            f"<= {RSS_GROWTH_MB:.0f} MB" + ("" if full else " (defined for 1k -> 10k)"),
            max(growth, 0.0) / RSS_GROWTH_MB,
            growth <= RSS_GROWTH_MB,
        ),
    ]


def _postprocess(results: dict[str, Any]) -> Target:
    name = "post-processing per image (responses' postprocess, c=1)"
    limit = f"<= {POSTPROCESS_RATIO} x before, same detections"
    compared = results.get("comparison", {}).get("postprocess")
    if compared is not None:
        ratio, ref = compared["ratio"], results["comparison"]["previous"]["ref"]
        median, same = ratio["median"], compared["same_detections"]
        return Target(
            name,
            f"{compared['current_ms']:.3f} vs {compared['previous_ms']:.3f} ms at {ref}: median pair ratio "
            f"{median:.3f}; detections per request {compared['detections']['current']} vs "
            f"{compared['detections']['previous']}",
            limit,
            median / POSTPROCESS_RATIO,
            median <= POSTPROCESS_RATIO and same,
            _interval(ratio),
            median,
            _decided(ratio, POSTPROCESS_RATIO),
        )
    current = results["unary"]["c1"]["server_pipeline_p50_ms"]["postprocess_ms"]
    ratio_value = current / RECORDED_POSTPROCESS_MS
    return Target(
        name,
        f"{current:.3f} ms vs {RECORDED_POSTPROCESS_MS} ms recorded at 42ce114 on another machine (run with "
        "--baseline-ref to measure both side by side)",
        limit,
        ratio_value / POSTPROCESS_RATIO,
        ratio_value <= POSTPROCESS_RATIO,
        "recorded reference on another machine: indicative, no interval",
        None,
    )


def _not_measured(name: str, target: str, reason: str) -> Target:
    return Target(name, f"not measured: {reason}", target, 0.0, None, decided=False)


def evaluate_targets(results: dict[str, Any]) -> list[Target]:
    """The issue's targets from one run's results (see the module docstring)."""
    paired, shm = results["paired"], results.get("shared_memory", {"measured": False, "reason": "not run"})
    targets = [
        _latency("unary p50 latency, c=1", paired["latency"], UNARY_P50_OVERHEAD_MS, results.get("floor")),
        _throughput("unary throughput, c=16", paired["throughput"]),
    ]
    shm_names = ("unary p50 latency, c=1, shared-memory input", "unary throughput, c=16, shared-memory input")
    if shm["measured"]:
        targets.append(_latency(shm_names[0], shm["latency"], SHM_P50_OVERHEAD_MS, None))
        targets.append(_throughput(shm_names[1], shm["throughput"]))
    else:
        targets.append(
            _not_measured(shm_names[0], f"<= in-process + {SHM_P50_OVERHEAD_MS} ms", shm["reason"])
        )
        targets.append(_not_measured(shm_names[1], f">= {THROUGHPUT_RATIO} x in-process best", shm["reason"]))
    targets += [
        _stream(paired["stream"]),
        _fanout(paired["fanout"]),
        *_memory(results["memory"], results["mode"] == "full"),
        _postprocess(results),
    ]
    return targets
