"""The unary load generator: N concurrent asyncio workers over one grpc.aio channel, a fixed request count.

Requests are serialised once up front and responses kept as bytes (one is parsed per phase to check it), so
the generator spends almost no CPU of its own: on a small machine it shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import grpc.aio as aio
import numpy as np
import numpy.typing as npt
from visionrpc.v1 import inference_pb2, types_pb2

from .stats import TIMING_FIELDS, latency_summary, median_timings

__all__ = [
    "CHANNEL_OPTIONS",
    "INFER_METHOD",
    "LoadResult",
    "encoded_requests",
    "one_response",
    "raw_requests",
    "run_load",
]

INFER_METHOD = "/visionrpc.v1.InferenceService/Infer"
MIB = 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 16 * MIB),
    ("grpc.max_receive_message_length", 16 * MIB),
]


def raw_requests(images: Sequence[npt.NDArray[np.uint8]], model: str = "") -> list[bytes]:
    """One serialised InferRequest per image, as raw BGR pixels: the server decodes nothing."""
    return [
        inference_pb2.InferRequest(
            model_id=model,
            images=[
                types_pb2.Image(
                    raw=types_pb2.RawImage(
                        data=np.ascontiguousarray(image).tobytes(),
                        width=image.shape[1],
                        height=image.shape[0],
                        channel_order=types_pb2.CHANNEL_ORDER_BGR,
                    )
                )
            ],
        ).SerializeToString()
        for image in images
    ]


def encoded_requests(images: Sequence[npt.NDArray[np.uint8]], model: str = "") -> list[bytes]:
    """One serialised InferRequest per image, PNG-encoded: the server decodes each."""
    requests = []
    for image in images:
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise ValueError("PNG encoding failed")
        request = inference_pb2.InferRequest(model_id=model, images=[types_pb2.Image(encoded=png.tobytes())])
        requests.append(request.SerializeToString())
    return requests


@dataclass(frozen=True, slots=True)
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_s: tuple[float, ...]
    client_cpu_s: float
    detections: int  # in the first checked response: a sanity check that real work was done
    server_timings: tuple[dict[str, float], ...]  # each timed response's pipeline timings (first image)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests_per_s, 2),
            "latency": latency_summary(self.latencies_s),
            "client_cpu_ms_per_request": round(self.client_cpu_s / self.requests * 1000.0, 3),
            "detections_in_checked_response": self.detections,
            "server_pipeline_p50_ms": median_timings(self.server_timings),
            "outside_pipeline_p50_ms": round(self.outside_pipeline_ms(), 3),
        }

    def outside_pipeline_ms(self) -> float:
        """Median over requests of the client's latency minus the server's own pipeline total: transport,
        gRPC, protobuf and the servicer (at concurrency > 1 also the wait for a worker thread)."""
        outside = [
            latency * 1000.0 - timings["total_ms"]
            for latency, timings in zip(self.latencies_s, self.server_timings, strict=True)
        ]
        return float(np.median(outside))


async def _load(
    address: str,
    requests: Sequence[bytes],
    concurrency: int,
    count: int,
    warmup: int,
    timeout_s: float,
    stop_after_s: float | None,
) -> LoadResult:
    async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        # No serialisers: requests go out as the bytes built above, responses come back as bytes.
        infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
        next_index = 0
        latencies: list[float] = []
        responses: list[bytes] = []

        stop_at = float("inf")

        async def worker(limit: int, record: bool) -> None:
            nonlocal next_index
            while next_index < limit and time.perf_counter() < stop_at:
                index = next_index
                next_index += 1
                request = requests[index % len(requests)]
                start = time.perf_counter()
                response = await infer(request, timeout=timeout_s)
                if record:
                    latencies.append(time.perf_counter() - start)
                    responses.append(response)

        first = inference_pb2.InferResponse.FromString(await infer(requests[0], timeout=timeout_s))
        if len(first.predictions) != 1:
            raise RuntimeError(f"expected 1 prediction per request, got {len(first.predictions)}")
        detections = len(first.predictions[0].detections)
        if warmup:
            await asyncio.gather(*(worker(warmup, False) for _ in range(concurrency)))
        next_index = 0
        cpu_start, start = time.process_time(), time.perf_counter()
        if stop_after_s is not None:
            stop_at = start + stop_after_s
        await asyncio.gather(*(worker(count, True) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
    timings = tuple(_timings(response) for response in responses)  # parsed after the clock stopped
    return LoadResult(concurrency, len(latencies), seconds, tuple(latencies), cpu, detections, timings)


def _timings(response: bytes) -> dict[str, float]:
    timings = inference_pb2.InferResponse.FromString(response).predictions[0].timings
    return {name: float(getattr(timings, name)) for name in TIMING_FIELDS}


def one_response(address: str, request: bytes, timeout_s: float = 60.0) -> bytes:
    """The serialised InferResponse to one request."""

    async def call() -> bytes:
        async with aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
            response: bytes = await infer(request, timeout=timeout_s)
            return response

    return asyncio.run(call())


def run_load(
    address: str,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    count: int,
    warmup: int | None = None,
    timeout_s: float = 60.0,
    stop_after_s: float | None = None,
) -> LoadResult:
    """Sends `count` Infer requests (cycling through `requests`) from `concurrency` workers and times each.

    `warmup` untimed requests go first at the same concurrency (default: 2 per worker), so connection set-up
    and the server's thread pool warming up are not in the numbers. With `stop_after_s`, no request starts
    after that many seconds (fewer than `count` may be sent). Any failed RPC aborts the run.
    """
    if concurrency < 1 or count < 1:
        raise ValueError(f"expected concurrency and count >= 1, got {concurrency}, {count}")
    return asyncio.run(
        _load(
            address,
            requests,
            concurrency,
            count,
            2 * concurrency if warmup is None else warmup,
            timeout_s,
            stop_after_s,
        )
    )
