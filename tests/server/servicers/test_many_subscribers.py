"""Hundreds of stream subscribers hold no thread and do not starve unary calls or health checks.

The server runs as a process of its own with the default worker settings (its thread count is read from
/proc, and the test's own subscribers do not share its interpreter). 200 subscribers watch one pipeline and 20
more watch one pipeline each, all on the asyncio client in this process; meanwhile unary Infer is timed
against its idle figure and the liveness probe against 100 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import cache_root, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from media import media
from streaming import free_port
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

SHARED_SUBSCRIBERS = 200
SEPARATE_PIPELINES = 20
SHARED_FPS = 2.0  # the shared pipeline: 400 messages a second to its 200 subscribers
UNARY_SAMPLES = 40
HEALTH_SAMPLES = 10


@pytest.fixture
def server_process(tmp_path: Path, media_root: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(port),
        "--media-root", str(media_root), "--model-repository", str(tmp_path / "models"),
        "--cache-dir", str(cache_root() / "downloads"),
        # Room for the subscribers and pipelines; the worker settings stay at their defaults.
        "--max-subscribers", "256", "--max-pipelines", "32",
    ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        assert wait_for(lambda: health(address, "visionrpc.v1.InferenceService") is not None, 120), (
            log.read_text()
        )
        yield process, address
    finally:
        process.terminate()
        process.wait(30)


def health(address: str, service: str = "") -> float | None:
    """Seconds a SERVING answer took, or None when not serving."""
    request = health_pb2.HealthCheckRequest(service=service)
    start = time.perf_counter()
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    except grpc.RpcError:
        return None
    return time.perf_counter() - start if status == health_pb2.HealthCheckResponse.SERVING else None


def threads_of(process: subprocess.Popen[bytes]) -> int:
    return len(list(Path(f"/proc/{process.pid}/task").iterdir()))


def unary_p50_ms(stub: inference_pb2_grpc.InferenceServiceStub, request: inference_pb2.InferRequest) -> float:
    latencies = []
    for _ in range(UNARY_SAMPLES):
        start = time.perf_counter()
        stub.Infer(request, timeout=30)
        latencies.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(latencies)


def stream_request(max_fps: float) -> inference_pb2.StreamPredictionsRequest:
    return inference_pb2.StreamPredictionsRequest(
        sources=[inference_pb2.VideoSource(path="bikes.mp4")],
        stream_options=inference_pb2.StreamOptions(max_fps=max_fps),
    )


class Subscribers:
    """Stream calls on an asyncio client in a thread of its own; counts each call's messages."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = __import__("threading").Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._address = address
        self.received: list[int] = []
        self._calls: list[object] = []
        self._channels = self._run(self._open_channels())

    def _run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)  # type: ignore[arg-type]

    async def _open_channels(self) -> list[grpc.aio.Channel]:
        # Several connections, as many separate viewers would have.
        options = [("grpc.use_local_subchannel_pool", 1)]
        return [grpc.aio.insecure_channel(self._address, options=options) for _ in range(4)]

    def subscribe(self, requests: list[inference_pb2.StreamPredictionsRequest]) -> None:
        self._run(self._subscribe(requests))

    async def _subscribe(self, requests: list[inference_pb2.StreamPredictionsRequest]) -> None:
        channels: list[grpc.aio.Channel] = self._channels  # type: ignore[assignment]
        for request in requests:
            index = len(self.received)
            self.received.append(0)
            stub = inference_pb2_grpc.InferenceServiceStub(channels[index % len(channels)])
            call = stub.StreamPredictions(request)
            self._calls.append(asyncio.ensure_future(self._consume(call, index)))

    async def _consume(self, call: object, index: int) -> None:
        async for _ in call:  # type: ignore[attr-defined]
            self.received[index] += 1

    def close(self) -> None:
        async def cancel_all() -> None:
            for task in self._calls:
                task.cancel()  # type: ignore[attr-defined]
            await asyncio.gather(*self._calls, return_exceptions=True)  # type: ignore[arg-type]
            for channel in self._channels:  # type: ignore[attr-defined]
                await channel.close()

        self._run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.mark.slow
def test_hundreds_of_subscribers_hold_no_thread_and_starve_nothing(
    server_process: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, address = server_process
    photo = types_pb2.Image(encoded=media("coffee.png").read_bytes())
    request = inference_pb2.InferRequest(images=[photo])
    with grpc.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.Infer(request, timeout=30)  # warm
        idle_p50 = unary_p50_ms(stub, request)

        subscribers = Subscribers(address)
        try:
            # Separate pipelines (each its own rate, so its own key), and the first viewer of the shared one;
            # opened together so the server's bounded pools reach their size now.
            # Slow ones: they hold pipelines open, not load the engine (20 x 0.1 fps beside the shared 2 fps),
            # so the unary figure measures starvation, not the model's queue.
            separate = [stream_request(0.1 + 0.002 * i) for i in range(SEPARATE_PIPELINES)]
            subscribers.subscribe([*separate, stream_request(SHARED_FPS)])
            assert wait_for(lambda: all(subscribers.received), timeout_s=60), subscribers.received
            threads_before = threads_of(process)

            subscribers.subscribe([stream_request(SHARED_FPS)] * (SHARED_SUBSCRIBERS - 1))
            total = SEPARATE_PIPELINES + SHARED_SUBSCRIBERS
            assert wait_for(lambda: sum(1 for n in subscribers.received if n) == total, timeout_s=60)
            threads_after = threads_of(process)

            loaded_p50 = unary_p50_ms(stub, request)
            health_ms = [1000.0 * (health(address) or float("inf")) for _ in range(HEALTH_SAMPLES)]
            # Still flowing to everyone: the shared pipeline's subscribers keep receiving.
            counts = list(subscribers.received)
            assert wait_for(lambda: all(n > c for n, c in zip(subscribers.received, counts, strict=True)), 30)
        finally:
            subscribers.close()
    print(
        f"\n{total} subscribers ({SHARED_SUBSCRIBERS} on one pipeline, {SEPARATE_PIPELINES} on their own): "
        f"unary p50 {idle_p50:.1f} ms idle -> {loaded_p50:.1f} ms loaded ({loaded_p50 / idle_p50:.2f}x); "
        f"health {sorted(round(h, 1) for h in health_ms)} ms; "
        f"server threads {threads_before} -> {threads_after}"
    )
    assert threads_after <= threads_before, "the server's thread count grew with its subscribers"
    assert loaded_p50 <= 2.0 * idle_p50
    assert max(health_ms) < 100.0
