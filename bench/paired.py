"""A/B comparisons for the targets: in-process and served, interleaved in the same minutes.

The machine's speed drifts between phases (on the 2-core CI machine the same model takes ~27.5 ms for a
while, then ~31 ms), by more than the 5% the targets allow. So each target's two sides are measured in
alternation while both are loaded — the in-process predictor in this process, the server in its own — and the
ratio is taken over the interleaved samples: single requests for latency, blocks (rounds) for the rest, the
order flipping every round so that neither side always goes first. Each call or block starts once both
processes are idle (`procstat.quiesce`): an engine that keeps working after a run (ONNX Runtime's pool threads
spin for ~40 ms by default) would otherwise slow down whichever side runs next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc.aio as aio

from . import procstat
from .inprocess import Baseline
from .server_process import ServerProcess
from .stats import latency_summary
from .streams import fanout_cpu, stream_fps
from .unary import CHANNEL_OPTIONS, INFER_METHOD, run_load

__all__ = ["paired_fanout", "paired_latency", "paired_stream", "paired_throughput"]


async def _paired_latency(
    baseline: Baseline, address: str, requests: Sequence[bytes], pairs: int, server_pid: int
) -> tuple[list[float], list[float], list[float]]:
    local: list[float] = []
    served: list[float] = []
    waits: list[float] = []
    async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        for i in range(4):  # connection and first-call costs stay out of the samples
            await infer(requests[i % len(requests)], timeout=60.0)
        for i in range(pairs):
            for side in (0, 1) if i % 2 == 0 else (1, 0):
                # Both processes idle first: neither side pays for the other's leftover work (spinning).
                waits.append(procstat.quiesce(server_pid))
                start = time.perf_counter()
                if side == 0:
                    baseline.predict_one(i)  # blocks the event loop: nothing else runs meanwhile
                    local.append(time.perf_counter() - start)
                else:
                    await infer(requests[i % len(requests)], timeout=60.0)
                    served.append(time.perf_counter() - start)
    return local, served, waits


def paired_latency(
    baseline: Baseline, server: ServerProcess, requests: Sequence[bytes], pairs: int
) -> dict[str, Any]:
    """Single-image latency, one in-process call then one Infer (order alternating), same image each pair,
    each call starting with both processes idle.

    `requests[i]` must be `baseline.images[i]` as a serialised InferRequest.
    """
    local, served, waits = asyncio.run(_paired_latency(baseline, server.address, requests, pairs, server.pid))
    differences = sorted(s - loc for s, loc in zip(served, local, strict=True))
    return {
        "pairs": pairs,
        "in_process": latency_summary(local),
        "served": latency_summary(served),
        "median_pair_difference_ms": round(differences[len(differences) // 2] * 1000.0, 3),
        "median_idle_wait_ms": round(sorted(waits)[len(waits) // 2] * 1000.0, 3),
    }


def _rounds(
    rounds: int, local: Callable[[], dict[str, Any]], served: Callable[[], dict[str, Any]], server_pid: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs `rounds` rounds of both sides, the order flipping every round, each from idle processes."""
    local_runs: list[dict[str, Any]] = []
    served_runs: list[dict[str, Any]] = []
    for i in range(rounds):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            procstat.quiesce(server_pid)
            (local_runs if side == 0 else served_runs).append(local() if side == 0 else served())
    return local_runs, served_runs


def _rate(runs: Sequence[dict[str, Any]], count: str) -> float:
    return round(sum(float(r[count]) for r in runs) / sum(float(r["seconds"]) for r in runs), 2)


def paired_throughput(
    baseline: Baseline,
    server: ServerProcess,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    images: int,
    rounds: int,
) -> dict[str, Any]:
    """In-process throughput at the sweep's best (batch, threads) vs Infer at `concurrency`."""
    best = baseline.best
    local, served = _rounds(
        rounds,
        lambda: baseline.throughput(int(best["batch"]), int(best["threads"]), images),
        lambda: run_load(server.address, requests, concurrency=concurrency, count=images).summary(),
        server.pid,
    )
    return {
        "rounds": rounds,
        "in_process": {
            "batch": best["batch"],
            "threads": best["threads"],
            "images_per_s": _rate(local, "images"),
        },
        "served": {"concurrency": concurrency, "requests_per_s": _rate(served, "requests")},
        "served_rounds": [r["requests_per_s"] for r in served],
        "in_process_rounds": [r["images_per_s"] for r in local],
    }


def paired_stream(
    baseline: Baseline, server: ServerProcess, video: Path, frames: int | None, rounds: int
) -> dict[str, Any]:
    """The in-process decode + infer loop vs one every-frame subscriber of the same file (`video`'s name
    below the server's media root)."""
    local, served = _rounds(
        rounds,
        lambda: baseline.video_loop(video, frames),
        lambda: stream_fps(server.address, video.name, frames),
        server.pid,
    )
    return {
        "rounds": rounds,
        "in_process": {"fps": _rate(local, "frames"), "runs": local},
        "served": {"fps": _rate(served, "frames"), "runs": served},
    }


def paired_fanout(
    server: ServerProcess,
    media_path: str,
    frames: int | None,
    rounds: int,
    linger_s: float,
    subscribers: int = 8,
) -> dict[str, Any]:
    """Server CPU per frame: `subscribers` subscribers on one pipeline vs 1, alternating."""

    def run(count: int) -> Callable[[], dict[str, Any]]:
        def once() -> dict[str, Any]:
            time.sleep(linger_s + 0.5)  # a cancelled pipeline must be gone, or identical requests join it
            return fanout_cpu(server.address, media_path, count, frames, server.cpu_seconds)

        return once

    one, many = _rounds(rounds, run(1), run(subscribers), server.pid)

    def per_frame(runs: Sequence[dict[str, Any]]) -> float:
        cpu = sum(float(r["server_cpu_s"]) for r in runs)
        return round(cpu / sum(int(r["frames"]) for r in runs) * 1000.0, 3)

    return {
        "rounds": rounds,
        "1": {"subscribers": 1, "server_cpu_ms_per_frame": per_frame(one), "runs": one},
        str(subscribers): {
            "subscribers": subscribers,
            "server_cpu_ms_per_frame": per_frame(many),
            "runs": many,
        },
    }
