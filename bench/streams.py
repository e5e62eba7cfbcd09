"""StreamPredictions through gRPC: one every-frame subscriber's frame rate, and the server's CPU per frame
with one subscriber vs many on one shared pipeline (fan-out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio as aio
from visionrpc.v1 import inference_pb2, inference_pb2_grpc

__all__ = ["fanout_cpu", "stream_fps", "stream_fps_async"]

_SOURCE_ENDED = inference_pb2.STREAM_EVENT_SOURCE_ENDED


def _request(path: str, every_frame: bool) -> inference_pb2.StreamPredictionsRequest:
    delivery = inference_pb2.DELIVERY_EVERY_FRAME if every_frame else inference_pb2.DELIVERY_LOSSY
    return inference_pb2.StreamPredictionsRequest(
        sources=[inference_pb2.VideoSource(path=path)],
        stream_options=inference_pb2.StreamOptions(delivery=delivery),
    )


async def stream_fps_async(address: str, path: str, max_frames: int | None) -> dict[str, float]:
    """`stream_fps` inside a running event loop."""
    async with aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        frames, dropped = 0, 0
        start = time.perf_counter()
        end = start
        call = stub.StreamPredictions(_request(path, every_frame=True), timeout=600.0)
        async for message in call:
            if message.WhichOneof("payload") == "frame":
                frames += 1
                dropped = message.frame.drops.results_dropped
                end = time.perf_counter()
                if max_frames is not None and frames >= max_frames:
                    call.cancel()
                    break
            elif message.status.event == _SOURCE_ENDED:
                break
    if frames == 0:
        raise RuntimeError(f"the stream of {path} delivered no frame")
    seconds = end - start
    fps = round(frames / seconds, 2)
    return {
        "frames": float(frames),
        "seconds": round(seconds, 3),
        "fps": fps,
        "results_dropped": float(dropped),
    }


def stream_fps(address: str, path: str, max_frames: int | None) -> dict[str, float]:
    """Frames per second delivered to one every-frame subscriber of `path` (below the server's media root),
    from the call until the last frame's result (`max_frames` of them, or the whole file)."""
    return asyncio.run(stream_fps_async(address, path, max_frames))


@dataclass
class _Window:
    """The measured stretch: from the moment every subscriber has a frame until `frames` more frames."""

    subscribers: int
    frames: int | None
    cpu_seconds: Callable[[], float]
    have_frame: set[int] = field(default_factory=set)
    stream_ids: set[str] = field(default_factory=set)
    dropped: dict[int, int] = field(default_factory=dict)
    delivered: dict[int, int] = field(default_factory=dict)
    start_seq: int = -1
    start_cpu: float = 0.0
    start_time: float = 0.0
    end_seq: int = -1
    end_cpu: float = 0.0
    end_time: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_frame(self, index: int, seq: int) -> None:
        self.have_frame.add(index)
        if index != 0 or self.done.is_set():
            return
        if self.start_seq < 0:
            if len(self.have_frame) == self.subscribers:
                self.start_seq, self.start_cpu, self.start_time = seq, self.cpu_seconds(), time.perf_counter()
        elif self.frames is not None and seq - self.start_seq >= self.frames:
            self.finish(seq)

    def finish(self, seq: int) -> None:
        if self.start_seq >= 0 and not self.done.is_set():
            self.end_seq, self.end_cpu, self.end_time = seq, self.cpu_seconds(), time.perf_counter()
        self.done.set()


async def _fanout(
    address: str, path: str, subscribers: int, frames: int | None, cpu_seconds: Callable[[], float]
) -> dict[str, Any]:
    window = _Window(subscribers, frames, cpu_seconds)
    request = _request(path, every_frame=False)  # identical lossy requests share one pipeline
    async with aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        calls = [stub.StreamPredictions(request, timeout=600.0) for _ in range(subscribers)]

        async def consume(index: int) -> None:
            last_seq = -1
            async for message in calls[index]:
                window.stream_ids.add(message.stream_id)
                if message.WhichOneof("payload") == "frame":
                    last_seq = message.frame.sequence_number
                    window.delivered[index] = window.delivered.get(index, 0) + 1
                    window.dropped[index] = message.frame.drops.results_dropped
                    window.on_frame(index, last_seq)
                elif message.status.event == _SOURCE_ENDED and index == 0:
                    window.finish(last_seq)

        tasks = [asyncio.create_task(consume(i)) for i in range(subscribers)]
        waiter = asyncio.create_task(window.done.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for call in calls:
            call.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
    failures = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if failures and not window.done.is_set():
        raise RuntimeError(f"a subscriber failed: {failures[0]!r}")
    measured = window.end_seq - window.start_seq
    if window.start_seq < 0 or measured <= 0:
        raise RuntimeError("the fan-out window measured no frame (did every subscriber receive one?)")
    cpu = window.end_cpu - window.start_cpu
    return {
        "subscribers": subscribers,
        "pipelines": len(window.stream_ids),
        "frames": measured,
        "seconds": round(window.end_time - window.start_time, 3),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_ms_per_frame": round(cpu / measured * 1000.0, 3),
        "fps": round(measured / (window.end_time - window.start_time), 2),
        "results_dropped_max": max(window.dropped.values(), default=0),
    }


def fanout_cpu(
    address: str, path: str, subscribers: int, frames: int | None, cpu_seconds: Callable[[], float]
) -> dict[str, Any]:
    """Server CPU per inferred frame while `subscribers` lossy subscribers watch one pipeline of `path`.

    The window opens when every subscriber has received a frame (so all of them are being fed) and closes
    `frames` frames later (None: at the end of the file); frames are counted by sequence number.
    """
    return asyncio.run(_fanout(address, path, subscribers, frames, cpu_seconds))
