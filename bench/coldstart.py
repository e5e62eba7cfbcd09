"""Cold start: a fresh server process from exec to SERVING on the health service, and its first request.

The model is already installed in the repository (the main server installed it), so this is a restart on
a warm disk, as a replica rescheduled by an orchestrator sees it: Python start-up and imports, the model's
session and warm-up, the listening port. The first `Infer` goes out on a fresh channel the moment the
health service says SERVING, so its latency includes the connection (what the first client of a new replica
waits for); the second call on that channel shows the steady state beside it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc.aio as aio
import numpy as np

from .server_process import ServerProcess
from .unary import CHANNEL_OPTIONS, INFER_METHOD

__all__ = ["measure_cold_start"]


async def _first_calls(address: str, request: bytes) -> tuple[float, float]:
    async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            await infer(request, timeout=60.0)
            times.append(time.perf_counter() - start)
    return times[0], times[1]


def _one(settings: Mapping[str, Any], request: bytes, log: Path) -> dict[str, float]:
    with ServerProcess(settings, log) as server:
        server.wait_ready(poll_s=0.01)
        ready = time.perf_counter() - server.started
        rss = server.rss_mb()
        first, second = asyncio.run(_first_calls(server.address, request))
        status = server.stop()
    if status != 0:
        raise RuntimeError(f"the cold-start server exited with {status} after SIGTERM")
    return {
        "exec_to_serving_s": round(ready, 3),
        "first_request_ms": round(first * 1000.0, 2),
        "second_request_ms": round(second * 1000.0, 2),
        "rss_mb_at_serving": round(rss, 1),
    }


def measure_cold_start(
    settings: Mapping[str, Any], requests: Sequence[bytes], starts: int, root: Path
) -> dict[str, Any]:
    """`starts` fresh servers one after another, each timed from exec to SERVING, then its first two
    requests; the medians and every start."""
    runs = [_one(settings, requests[0], root / f"cold-start-{i}.log") for i in range(starts)]

    def median(key: str) -> float:
        return round(float(np.median([run[key] for run in runs])), 3)

    return {
        "starts": starts,
        "exec_to_serving_s": median("exec_to_serving_s"),
        "first_request_ms": median("first_request_ms"),
        "second_request_ms": median("second_request_ms"),
        "rss_mb_at_serving": median("rss_mb_at_serving"),
        "runs": runs,
    }
