"""Current vs previous server (`--baseline-ref`): both running side by side, measured in many short
alternating segments.

The VM's speed drifts by up to ±20% from one minute to the next, more than any regression worth finding, so
neither server gets a phase of its own: each measure is taken in pairs of short segments, one per server, back
to back, the order flipping from pair to pair (ABBA...), and the measures themselves take turns in cycles so
every measure's pairs spread over the whole comparison. The result of a measure is the median of its
per-pair ratios (current / previous), with their spread and a distribution-free 95% confidence interval of
that median (binomial order statistics), so "within noise" means the interval holds 1.

Per pair, on the same request bytes and the same video:

- unary p50 at c=1: `latency_requests` calls one after another on a warm channel; the segment's p50;
- unary throughput at c=4 and c=16: that many closed-loop workers on a warm channel; requests per second
  over a window of `seconds` that opens once `warm_s` has passed and every worker has had an answer, each
  request counted as one spread evenly over its own lifetime (so a window cutting a batch of responses in two
  does not quantise the rate);
- stream frames/s: one every-frame subscriber of the file, from the call to the last result
  (`streams.stream_fps`, as the stream target measures it).

Every segment starts with both servers and this process idle (`procstat.quiesce`), and each server's CPU
time (`/proc/<pid>/stat`) is read around its own segments: server CPU per request or frame, beside the wall
time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc.aio as aio
import numpy as np

from . import procstat
from .modes import Mode
from .stats import latency_summary, median_ci
from .streams import stream_fps_async
from .unary import CHANNEL_OPTIONS, INFER_METHOD

__all__ = ["Side", "compare_servers", "summarise_pairs", "throughput_segment", "window_rate"]

SIDES = ("current", "previous")

Infer = Callable[..., Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Side:
    label: str  # "current" or "previous"
    address: str
    pid: int


def window_rate(spans: Sequence[tuple[float, float]], opened: float, closed: float) -> float:
    """Requests per second completed in [opened, closed], each request (start, end) counted as one spread
    evenly over its lifetime: a smooth estimate where whole batches of responses arrive at once."""
    if closed <= opened:
        raise ValueError(f"expected a window that closes after it opens, got [{opened}, {closed}]")
    done = sum(max(0.0, min(end, closed) - max(start, opened)) / (end - start) for start, end in spans)
    return done / (closed - opened)


async def _latency_segment(
    infer: Infer, requests: Sequence[bytes], count: int, first: int, pid: int
) -> dict[str, Any]:
    latencies: list[float] = []
    cpu = procstat.cpu_seconds(pid)
    for i in range(count):
        start = time.perf_counter()
        await infer(requests[(first + i) % len(requests)], timeout=60.0)
        latencies.append(time.perf_counter() - start)
    cpu = procstat.cpu_seconds(pid) - cpu
    return {
        "requests": count,
        "p50_ms": round(float(np.median(latencies)) * 1000.0, 3),
        "server_cpu_s": round(cpu, 3),
        "latencies_s": latencies,  # dropped from the report once summarised
    }


async def throughput_segment(
    infer: Infer, requests: Sequence[bytes], concurrency: int, warm_s: float, seconds: float, pid: int
) -> dict[str, Any]:
    """Closed-loop workers; the window opens after `warm_s` once every worker has had an answer (the
    server's queue is full), and closes `seconds` later; no request starts after that."""
    spans: list[tuple[float, float]] = []
    answered: set[int] = set()
    all_answered = asyncio.Event()
    closes_at = float("inf")
    marks: list[tuple[float, float]] = []  # (time, server CPU) when the window opens and when it closes

    async def clock() -> None:
        nonlocal closes_at
        await asyncio.sleep(warm_s)
        await all_answered.wait()
        marks.append((time.perf_counter(), procstat.cpu_seconds(pid)))
        closes_at = marks[0][0] + seconds
        await asyncio.sleep(max(0.0, closes_at - time.perf_counter()))
        marks.append((time.perf_counter(), procstat.cpu_seconds(pid)))

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < closes_at:
            start = time.perf_counter()
            await infer(requests[i % len(requests)], timeout=60.0)
            spans.append((start, time.perf_counter()))
            i += concurrency
            answered.add(k)
            if len(answered) == concurrency:
                all_answered.set()

    await asyncio.gather(clock(), *(worker(k) for k in range(concurrency)))
    (opened, cpu_open), (closed, cpu_close) = marks
    rate = window_rate(spans, opened, closed)
    in_window = [end - start for start, end in spans if opened <= end <= closed]
    return {
        "seconds": round(closed - opened, 3),
        "requests": round(rate * (closed - opened), 2),
        "requests_per_s": round(rate, 3),
        "latency_p50_ms": round(float(np.median(in_window)) * 1000.0, 3) if in_window else None,
        "server_cpu_s": round(cpu_close - cpu_open, 3),
    }


async def _stream_segment(address: str, path: str, frames: int | None, pid: int) -> dict[str, Any]:
    cpu = procstat.cpu_seconds(pid)
    run: dict[str, Any] = dict(await stream_fps_async(address, path, frames))
    run["server_cpu_s"] = round(procstat.cpu_seconds(pid) - cpu, 3)
    return run


def summarise_pairs(
    current: Sequence[float], previous: Sequence[float], *, higher_is_better: bool
) -> dict[str, Any]:
    """Per-pair ratios current / previous: their median, spread and the median's 95% confidence interval
    (None with fewer than 6 pairs); `change` is the median's relative change, > 0 meaning current is
    better."""
    ratios = [c / p for c, p in zip(current, previous, strict=True)]
    median = float(np.median(ratios))
    q1, q3 = (float(q) for q in np.percentile(ratios, [25, 75]))
    ci = median_ci(ratios)
    change = median - 1.0 if higher_is_better else 1.0 - median
    return {
        "pairs": len(ratios),
        "ratios": [round(r, 4) for r in ratios],
        "ratio_median": round(median, 4),
        "ratio_q1": round(q1, 4),
        "ratio_q3": round(q3, 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "ratio_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        "higher_is_better": higher_is_better,
        "current_better_by": round(change, 4),
        "within_noise": None if ci is None else ci[0] <= 1.0 <= ci[1],
    }


class _Comparison:
    """The segments of one comparison, by measure and server, and how to run each kind of segment."""

    def __init__(
        self, sides: Sequence[Side], infers: dict[str, Infer], requests: Sequence[bytes], linger_s: float
    ) -> None:
        self.sides = sides
        self.infers = infers
        self.requests = requests
        self.linger_s = linger_s
        self.segments: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.stream_ended: dict[str, float] = {side.label: 0.0 for side in sides}

    def quiesce(self) -> None:
        procstat.quiesce(*(side.pid for side in self.sides))

    async def pair(self, measure: str, run: Callable[[Side], Awaitable[dict[str, Any]]]) -> None:
        """One segment per server, the order flipping with each pair of this measure."""
        store = self.segments.setdefault(measure, {side.label: [] for side in self.sides})
        flip = len(store[self.sides[0].label]) % 2 == 1
        for side in reversed(self.sides) if flip else self.sides:
            self.quiesce()
            store[side.label].append(await run(side))

    def latency(self, first: int, count: int) -> Callable[[Side], Awaitable[dict[str, Any]]]:
        return lambda side: _latency_segment(self.infers[side.label], self.requests, count, first, side.pid)

    def throughput(
        self, concurrency: int, warm_s: float, seconds: float
    ) -> Callable[[Side], Awaitable[dict[str, Any]]]:
        return lambda side: throughput_segment(
            self.infers[side.label], self.requests, concurrency, warm_s, seconds, side.pid
        )

    def stream(self, path: str, frames: int | None) -> Callable[[Side], Awaitable[dict[str, Any]]]:
        async def run(side: Side) -> dict[str, Any]:
            # A cancelled pipeline lingers: an identical request must not join it half-way through the file.
            wait = self.stream_ended[side.label] + self.linger_s + 0.5 - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
                self.quiesce()
            result = await _stream_segment(side.address, path, frames, side.pid)
            self.stream_ended[side.label] = time.perf_counter()
            return result

        return run


async def _compare(
    sides: Sequence[Side], requests: Sequence[bytes], video: str, mode: Mode, linger_s: float
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    channels = [aio.insecure_channel(side.address, options=CHANNEL_OPTIONS) for side in sides]
    try:
        infers: dict[str, Infer] = {
            side.label: channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
            for side, channel in zip(sides, channels, strict=True)
        }
        run = _Comparison(sides, infers, requests, linger_s)
        # Warm-up, untimed: the connections, the batch shapes the scheduler forms under load, a stream.
        for side in sides:
            await run.latency(0, 4)(side)
            for concurrency, _ in mode.compare_throughput:
                await run.throughput(concurrency, 0.0, mode.compare_warm_s)(side)
            await run.stream(video, 10)(side)
        count = mode.compare_latency_requests
        for cycle in range(mode.compare_cycles):
            for k in range(mode.compare_latency_segments):
                first = (cycle * mode.compare_latency_segments + k) * count
                await run.pair("unary_p50_c1", run.latency(first, count))
            for concurrency, seconds in mode.compare_throughput:
                await run.pair(
                    f"unary_throughput_c{concurrency}",
                    run.throughput(concurrency, mode.compare_warm_s, seconds),
                )
            await run.pair("stream_fps", run.stream(video, mode.compare_stream_frames))
        return run.segments
    finally:
        for channel in channels:
            await channel.close(None)


def _measure(measure: str, segments: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One measure's per-pair comparison and each side's totals over all its segments."""
    sides: dict[str, Any] = {}
    if measure == "unary_p50_c1":
        values = {label: [s["p50_ms"] for s in segments[label]] for label in SIDES}
        for label in SIDES:
            latencies = [x for s in segments[label] for x in s.pop("latencies_s")]
            cpu = sum(s["server_cpu_s"] for s in segments[label])
            sides[label] = {
                "value": latency_summary(latencies)["p50_ms"],
                "latency": latency_summary(latencies),
                "server_cpu_ms_per_request": round(cpu / len(latencies) * 1000.0, 3),
                "segments": segments[label],
            }
        unit, per, higher = "ms", "request", False
    else:
        key, count, per = (
            ("fps", "frames", "frame")
            if measure == "stream_fps"
            else ("requests_per_s", "requests", "request")
        )
        values = {label: [float(s[key]) for s in segments[label]] for label in SIDES}
        for label in SIDES:
            done = sum(float(s[count]) for s in segments[label])
            sides[label] = {
                "value": round(done / sum(float(s["seconds"]) for s in segments[label]), 3),
                f"server_cpu_ms_per_{per}": round(
                    sum(float(s["server_cpu_s"]) for s in segments[label]) / done * 1000.0, 3
                ),
                "segments": segments[label],
            }
        unit, higher = ("fps" if measure == "stream_fps" else "req/s"), True
    cpu_key = f"server_cpu_ms_per_{per}"
    return {
        "unit": unit,
        **sides,
        **summarise_pairs(values["current"], values["previous"], higher_is_better=higher),
        "server_cpu_ratio": round(sides["current"][cpu_key] / sides["previous"][cpu_key], 4),
        "server_cpu_per": per,
    }


def compare_servers(
    current: Side, previous: Side, requests: Sequence[bytes], video: str, mode: Mode, linger_s: float
) -> dict[str, Any]:
    """Both servers, interleaved (see the module docstring); `video` is a path below both media roots and
    `linger_s` the longest a cancelled stream pipeline outlives its subscriber on either server."""
    started = time.perf_counter()
    segments = asyncio.run(_compare((current, previous), requests, video, mode, linger_s))
    return {
        "cycles": mode.compare_cycles,
        "seconds": round(time.perf_counter() - started, 1),
        "measures": {measure: _measure(measure, by_side) for measure, by_side in segments.items()},
    }
