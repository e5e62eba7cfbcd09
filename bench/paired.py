"""A/B comparisons for the targets: in-process and served, in many short alternating segments.

The VM's speed drifts by ±20% from one minute to the next (two full runs 50 minutes apart once gave c=16
0.749 then 1.017), far more than the few percent the targets allow. So neither side gets a phase of its own:
each target is measured in pairs of short segments, one in-process (the predictor in this process) and one
served (the server in its own process), back to back, the order flipping from pair to pair, each segment
starting with both processes idle (`procstat.quiesce`; ONNX Runtime's pool threads used to spin after a run).
The figure is the **median of the per-pair ratios** (or differences), which a drift slower than one pair
cancels, with the median's distribution-free 95% interval and the quartiles as its spread
(`stats.spread_summary`).

CPU time per image sits beside wall time for every measure: this process's CPU (`time.process_time`, all
its threads) for the in-process side, the server's (`/proc/<pid>/task/*/schedstat`, nanoseconds) for the
served side. Wall time drifts with the VM; CPU time much less so.

- latency, c=1: pairs of single calls (one in-process `infer`, one `Infer`, same image);
- throughput: pairs of `seconds`-long segments: the sweep's best (batch, threads) in-process against
  closed-loop workers at c=16 (`compare.throughput_segment`: the window opens once the queue is full);
- stream: pairs of the in-process decode + infer loop and one every-frame subscriber, `frames` each;
- fan-out: pairs of 1 and 8 lossy subscribers on one shared pipeline, server CPU per frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc.aio as aio

from . import procstat
from .compare import throughput_segment
from .inprocess import Baseline
from .server_process import ServerProcess
from .stats import latency_summary, spread_summary
from .streams import fanout_cpu, stream_fps
from .unary import CHANNEL_OPTIONS, INFER_METHOD

__all__ = ["paired_fanout", "paired_latency", "paired_stream", "paired_throughput"]


def _server_cpu(pid: int) -> float:
    return procstat.precise_cpu_seconds(pid)


async def _paired_latency(
    baseline: Baseline, address: str, requests: Sequence[bytes], pairs: int, server_pid: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"local": [], "served": [], "local_cpu": [], "served_cpu": [], "waits": []}
    async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        for i in range(4):  # connection and first-call costs stay out of the samples
            await infer(requests[i % len(requests)], timeout=60.0)
        for i in range(pairs):
            for side in (0, 1) if i % 2 == 0 else (1, 0):
                # Both processes idle first: neither side pays for the other's leftover work (spinning).
                out["waits"].append(procstat.quiesce(server_pid))
                start, cpu = time.perf_counter(), time.process_time()
                if side == 0:
                    baseline.predict_one(i)  # blocks the event loop: nothing else runs meanwhile
                    out["local"].append(time.perf_counter() - start)
                    out["local_cpu"].append(time.process_time() - cpu)
                else:
                    server_cpu = _server_cpu(server_pid)
                    await infer(requests[i % len(requests)], timeout=60.0)
                    out["served"].append(time.perf_counter() - start)
                    out["served_cpu"].append(_server_cpu(server_pid) - server_cpu)
    return out


def paired_latency(
    baseline: Baseline, server: ServerProcess, requests: Sequence[bytes], pairs: int
) -> dict[str, Any]:
    """Single-image latency, one in-process call then one Infer (order alternating), same image each pair,
    each call starting with both processes idle. The figure: the median of the per-pair differences
    (served - in-process, ms), with its interval; the per-pair ratios beside it.

    `requests[i]` must be `baseline.images[i]` as a serialised InferRequest.
    """
    runs = asyncio.run(_paired_latency(baseline, server.address, requests, pairs, server.pid))
    local, served = runs["local"], runs["served"]
    differences = [(s - loc) * 1000.0 for s, loc in zip(served, local, strict=True)]
    return {
        "pairs": pairs,
        "in_process": latency_summary(local),
        "served": latency_summary(served),
        "difference_ms": spread_summary(differences, digits=3),
        "ratio": spread_summary([s / loc for s, loc in zip(served, local, strict=True)]),
        "median_pair_difference_ms": round(float(sorted(differences)[len(differences) // 2]), 3),
        "in_process_cpu_ms_per_image": round(sum(runs["local_cpu"]) / pairs * 1000.0, 3),
        "server_cpu_ms_per_image": round(sum(runs["served_cpu"]) / pairs * 1000.0, 3),
        "median_idle_wait_ms": round(sorted(runs["waits"])[len(runs["waits"]) // 2] * 1000.0, 3),
    }


def _pairs(
    pairs: int,
    local: Callable[[], dict[str, Any]],
    served: Callable[[], dict[str, Any]],
    quiet: Callable[[], object],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs `pairs` pairs of segments, the order flipping every pair, each from idle processes."""
    local_runs: list[dict[str, Any]] = []
    served_runs: list[dict[str, Any]] = []
    for i in range(pairs):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            quiet()
            (local_runs if side == 0 else served_runs).append(local() if side == 0 else served())
    return local_runs, served_runs


def _with_cpu(run: Callable[[], dict[str, Any]], cpu: Callable[[], float]) -> Callable[[], dict[str, Any]]:
    """`run` with the CPU seconds `cpu` counted across it added as "cpu_s" (unless `run` measured its own)."""

    def measured() -> dict[str, Any]:
        start = cpu()
        out = run()
        out.setdefault("cpu_s", round(cpu() - start, 4))
        return out

    return measured


def _side(runs: Sequence[dict[str, Any]], rate: str, count: str, per: str) -> dict[str, Any]:
    done = sum(float(r[count]) for r in runs)
    return {
        f"{rate}_total": round(done / sum(float(r["seconds"]) for r in runs), 3),
        f"cpu_ms_per_{per}": round(sum(float(r["cpu_s"]) for r in runs) / done * 1000.0, 3),
        "segments": list(runs),
    }


def paired_throughput(
    baseline: Baseline,
    server: ServerProcess,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    pairs: int,
    seconds: float,
    warm_s: float,
) -> dict[str, Any]:
    """In-process throughput at the sweep's best (batch, threads) vs Infer at `concurrency`, in `pairs`
    pairs of segments of about `seconds` each; the figure is the median of served / in-process."""
    best = baseline.best
    batch, threads = int(best["batch"]), int(best["threads"])
    # Count-based in-process segments, sized from the sweep's rate to last about `seconds`.
    images = max(batch * threads, round(float(best["images_per_s"]) * seconds))

    def served() -> dict[str, Any]:
        run = asyncio.run(_served_window(server, requests, concurrency, warm_s, seconds))
        return {**run, "cpu_s": run["server_cpu_s"]}

    local, remote = _pairs(
        pairs,
        _with_cpu(lambda: baseline.throughput(batch, threads, images), time.process_time),
        served,
        lambda: procstat.quiesce(server.pid),
    )
    ratios = [
        float(s["requests_per_s"]) / float(loc["images_per_s"]) for loc, s in zip(local, remote, strict=True)
    ]
    return {
        "pairs": pairs,
        "segment_s": seconds,
        "in_process": {"batch": batch, "threads": threads, **_side(local, "images_per_s", "images", "image")},
        "served": {"concurrency": concurrency, **_side(remote, "requests_per_s", "requests", "image")},
        "ratio": spread_summary(ratios),
    }


async def _served_window(
    server: ServerProcess, requests: Sequence[bytes], concurrency: int, warm_s: float, seconds: float
) -> dict[str, Any]:
    async with aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        return await throughput_segment(infer, requests, concurrency, warm_s, seconds, server.pid)


def paired_stream(
    baseline: Baseline,
    server: ServerProcess,
    video: Path,
    frames: int | None,
    pairs: int,
    linger_s: float,
) -> dict[str, Any]:
    """The in-process decode + infer loop vs one every-frame subscriber of the same file (`video`'s name
    below the server's media root), `frames` frames (None: the whole file) per segment."""

    def served() -> dict[str, Any]:
        time.sleep(linger_s + 0.2)  # the previous pipeline must be gone, or this request joins it midway
        procstat.quiesce(server.pid)
        return stream_fps(server.address, video.name, frames)

    local, remote = _pairs(
        pairs,
        _with_cpu(lambda: baseline.video_loop(video, frames), time.process_time),
        _with_cpu(served, lambda: _server_cpu(server.pid)),
        lambda: procstat.quiesce(server.pid),
    )
    ratios = [float(s["fps"]) / float(loc["fps"]) for loc, s in zip(local, remote, strict=True)]
    return {
        "pairs": pairs,
        "in_process": _side(local, "fps", "frames", "frame"),
        "served": _side(remote, "fps", "frames", "frame"),
        "ratio": spread_summary(ratios),
    }


def paired_fanout(
    server: ServerProcess,
    media_path: str,
    frames: int | None,
    pairs: int,
    linger_s: float,
    subscribers: int = 8,
) -> dict[str, Any]:
    """Server CPU per frame: `subscribers` subscribers on one pipeline vs 1, alternating; the figure is the
    median of the per-pair ratios (many / one)."""

    def run(count: int) -> Callable[[], dict[str, Any]]:
        def once() -> dict[str, Any]:
            time.sleep(linger_s + 0.5)  # a cancelled pipeline must be gone, or identical requests join it
            return fanout_cpu(server.address, media_path, count, frames, server.cpu_seconds)

        return once

    one, many = _pairs(pairs, run(1), run(subscribers), lambda: procstat.quiesce(server.pid))

    def per_frame(runs: Sequence[dict[str, Any]]) -> float:
        cpu = sum(float(r["server_cpu_s"]) for r in runs)
        return round(cpu / sum(int(r["frames"]) for r in runs) * 1000.0, 3)

    ratios = [
        float(m["server_cpu_ms_per_frame"]) / float(o["server_cpu_ms_per_frame"])
        for o, m in zip(one, many, strict=True)
    ]
    return {
        "pairs": pairs,
        "1": {"subscribers": 1, "server_cpu_ms_per_frame": per_frame(one), "runs": one},
        str(subscribers): {
            "subscribers": subscribers,
            "server_cpu_ms_per_frame": per_frame(many),
            "runs": many,
        },
        "ratio": spread_summary(ratios),
    }
