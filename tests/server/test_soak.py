"""Soak and chaos in CI (issue 11): a server process under mixed load while things go wrong around it.

For SOAK_SECONDS (default 50; ~60 s in all) on loopback: two clients call Infer in a loop; one subscribes
to a file stream and cancels it after a few frames, again and again; one does the same on a live RTSP
source; one sends a bad request of every kind the hardening closed (an amplification request, a truncated
JPEG, malformed protobuf, a 10,000-name class filter, a 5,000-character model id, over-long paths, a URL to
a host not allowed, an unknown model). Meanwhile the RTSP server goes away and comes back, the model is
unloaded and reloaded, and the server is paused (SIGSTOP) and resumed (SIGCONT).

Asserts: the server never dies; every call ends with a response or a clear status (never UNKNOWN or
INTERNAL), each bad request with its own code; afterwards threads, file descriptors and RSS come back within
THREADS_SLACK, FDS_SLACK and RSS_SLACK_MB of the warmed-up baseline. Prints its figures.
"""

from __future__ import annotations

import collections
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import pytest
from conftest import wait_for
from media import media
from server_process import ServerProcess, Usage
from streaming import RtspServer, running_rtsp_server
from visionrpc.client import Client, ResumePolicy, StreamFrame, VisionRpcError
from visionrpc.v1 import inference_pb2, types_pb2

SECONDS = float(os.environ.get("SOAK_SECONDS", "50"))
MODEL = "yolov3-tiny-coco"
THREADS_SLACK = 6  # pools that grow on demand (gRPC polling, executors) settle a few threads above baseline
FDS_SLACK = 12
RSS_SLACK_MB = 250.0  # allocator arenas and ONNX Runtime's buffers after concurrent batches
CLEAR_CODES = {
    "OK",
    "CANCELLED",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
}


def single_colour_png(width: int, height: int) -> bytes:
    row = b"\x00" + b"\x80\x40\x20" * width
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Outcomes:
    """Every call's ending, by kind of call: a status code name, or "client:<exception>" for anything else."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def record(self, kind: str, call: Callable[[], object]) -> None:
        try:
            call()
            code = "OK"
        except VisionRpcError as exc:
            code = exc.code.name
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
        except Exception as exc:  # a client-side failure is a finding too
            code = f"client:{type(exc).__name__}: {exc}"[:200]
        with self._lock:
            self.by_kind[kind][code] += 1

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.by_kind.values())


def bad_requests(
    address: str, media_name: str, rtsp_port: int
) -> dict[str, tuple[str, Callable[[], object]]]:
    """Each bad request the hardening closed: kind -> (the code it must get, the call)."""
    client = Client(address, timeout_s=30)
    channel = grpc.insecure_channel(address)
    raw_infer = channel.unary_unary("/visionrpc.v1.InferenceService/Infer")  # bytes in, bytes out
    amplification = inference_pb2.InferRequest(
        images=[types_pb2.Image(encoded=single_colour_png(6000, 6000))] * 16
    ).SerializeToString()
    jpeg = cv2.imencode(".jpg", cv2.imread(str(media("coffee.png"))))[1].tobytes()
    truncated = jpeg[: len(jpeg) // 2] + b"\xff\xd9"
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (model_id), a string, with invalid UTF-8

    def stream_first(*sources: str) -> Callable[[], object]:
        def call() -> object:
            with client.stream(list(sources), timeout_s=10, resume=ResumePolicy(enabled=False)) as stream:
                return next(iter(stream))

        return call

    return {
        "amplification": ("INVALID_ARGUMENT", lambda: raw_infer(amplification, timeout=30)),
        "truncated_jpeg": ("INVALID_ARGUMENT", lambda: client.infer(truncated)),
        "malformed_protobuf": ("INVALID_ARGUMENT", lambda: raw_infer(bad_utf8, timeout=30)),
        "class_filter_10000": (
            "INVALID_ARGUMENT",
            lambda: client.infer(jpeg, classes=[f"c{i}" for i in range(10_000)]),
        ),
        "long_model_id": ("INVALID_ARGUMENT", lambda: client.infer(jpeg, model="m" * 5000)),
        "unknown_model": ("NOT_FOUND", lambda: client.infer(jpeg, model="no-such-model")),
        "name_over_name_max": ("INVALID_ARGUMENT", stream_first("x" * 300 + "/" + media_name)),
        "path_640_kb": ("INVALID_ARGUMENT", stream_first("a/" * 327_680)),
        "url_host_not_allowed": ("PERMISSION_DENIED", stream_first(f"rtsp://127.0.0.2:{rtsp_port}/bikes")),
        "absolute_path": ("INVALID_ARGUMENT", stream_first("/etc/passwd")),
    }


@pytest.fixture
def rtsp() -> Iterator[RtspServer]:
    with running_rtsp_server(media("bikes.mp4")) as server:
        yield server


@pytest.mark.slow
def test_soak_with_chaos(tmp_path: Path, rtsp: RtspServer) -> None:
    media_root = tmp_path / "media"
    media_root.mkdir()
    shutil.copyfile(media("bikes.mp4"), media_root / "bikes.mp4")
    flags = [
        "--media-root", str(media_root), "--allowed-url-hosts", "127.0.0.1",
        "--pipeline-linger-s", "0.5",
        "--reconnect-initial-backoff-s", "0.2", "--reconnect-max-backoff-s", "1",
        "--source-open-timeout-s", "3", "--source-read-timeout-s", "3",
    ]  # fmt: skip
    outcomes = Outcomes()
    stop = threading.Event()
    image = media("coffee.png").read_bytes()
    with ServerProcess(tmp_path, *flags) as server, Client(server.address, timeout_s=30) as client:

        def infer() -> object:
            return client.infer(image, model=MODEL)

        def stream_some(source: str, frames: int) -> Callable[[], object]:
            def call() -> object:
                stream = client.stream([source], max_fps=5, timeout_s=20, resume=ResumePolicy(enabled=False))
                seen = 0
                try:
                    for event in stream:  # the client cancels mid-stream
                        seen += isinstance(event, StreamFrame)
                        if seen >= frames or stop.is_set():
                            break
                finally:
                    stream.cancel()
                return seen

            return call

        # Warm-up, then the baseline: a pipeline of each kind has run and stopped.
        outcomes.record("warmup", infer)
        outcomes.record("warmup", stream_some("bikes.mp4", 2))
        outcomes.record("warmup", stream_some(rtsp.url, 2))
        baseline = settle(server)
        baseline_names = thread_names(server.pid)

        bad = bad_requests(server.address, "bikes.mp4", rtsp.port)
        workers: list[tuple[str, Callable[[], object]]] = [
            ("infer", infer),
            ("infer", infer),
            ("file_stream", stream_some("bikes.mp4", 3)),
            ("rtsp_stream", stream_some(rtsp.url, 3)),
        ]

        def loop(kind: str, call: Callable[[], object]) -> None:
            while not stop.is_set():
                outcomes.record(kind, call)

        def bad_loop() -> None:
            while not stop.is_set():
                for kind, (_, call) in bad.items():
                    if stop.is_set():
                        return
                    outcomes.record(f"bad:{kind}", call)

        threads = [threading.Thread(target=loop, args=w, daemon=True) for w in workers]
        threads.append(threading.Thread(target=bad_loop, daemon=True))
        for thread in threads:
            thread.start()
        faults: list[str] = []
        start = time.monotonic()

        timeline: list[str] = []

        def at(offset: float) -> None:
            wait_for(lambda: time.monotonic() - start >= offset or not server.alive(), offset + 1)
            assert server.alive(), server.log()[-3000:]
            usage = server.usage()
            timeline.append(f"{offset:.0f} s: {usage.rss_mb:.0f} MB, {usage.threads} threads")

        at(SECONDS * 0.15)
        rtsp.stop()
        faults.append("rtsp source killed")
        at(SECONDS * 0.3)
        rtsp.restart()
        faults.append("rtsp source restarted")
        at(SECONDS * 0.45)
        outcomes.record("chaos:unload", lambda: client.unload_model(MODEL))
        outcomes.record("chaos:load", lambda: client.load_model(MODEL, timeout_s=120))
        faults.append("model unloaded and reloaded")
        at(SECONDS * 0.6)
        server.pause()
        faults.append("server paused 2 s (SIGSTOP)")
        time.sleep(2.0)  # the fault's length, not a wait for something
        server.resume()
        at(SECONDS * 0.75)
        outcomes.record("chaos:unload", lambda: client.unload_model(MODEL))
        faults.append("model unloaded under load (reloads on next use)")
        at(SECONDS)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a client call never ended"
        assert server.alive(), server.log()[-3000:]
        after = settle(server, baseline)
        grown = thread_names(server.pid) - baseline_names
        print(f"\nthreads started and still there: {dict(grown) or 'none'}")
        print(f"during the run: {'; '.join(timeline)}")
        assert client.health("visionrpc.v1.InferenceService") == "SERVING"

    report(outcomes, faults, baseline, after)
    unclear = {
        kind: {code: n for code, n in codes.items() if code not in CLEAR_CODES}
        for kind, codes in outcomes.by_kind.items()
    }
    assert not any(unclear.values()), unclear
    for kind, (expected, _) in bad.items():
        assert set(outcomes.by_kind[f"bad:{kind}"]) == {expected}, (kind, outcomes.by_kind[f"bad:{kind}"])
    for kind in ("infer", "file_stream", "rtsp_stream"):
        assert outcomes.by_kind[kind]["OK"] > 0, (kind, outcomes.by_kind[kind])
    assert after.threads <= baseline.threads + THREADS_SLACK
    assert after.fds <= baseline.fds + FDS_SLACK
    assert after.rss_mb <= baseline.rss_mb + RSS_SLACK_MB


def settle(server: ServerProcess, baseline: Usage | None = None, timeout_s: float = 30.0) -> Usage:
    """The server's usage once pipelines have stopped: within the slack of `baseline`, or as it is when
    nothing changes for a second (no baseline yet), or whatever it is at `timeout_s` (the asserts judge)."""
    if baseline is not None:
        wait_for(
            lambda: (
                (u := server.usage()).threads <= baseline.threads + THREADS_SLACK
                and u.fds <= baseline.fds + FDS_SLACK
            ),
            timeout_s,
        )
        return server.usage()
    last = server.usage()
    deadline = time.monotonic() + timeout_s
    steady_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - steady_since < 1.0:
        time.sleep(0.1)  # polling /proc
        now = server.usage()
        if (now.threads, now.fds) != (last.threads, last.fds):
            steady_since = time.monotonic()
        last = now
    return last


def thread_names(pid: int) -> collections.Counter[str]:
    names: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:  # the thread ended meanwhile
            continue
    return names


def report(outcomes: Outcomes, faults: list[str], baseline: Usage, after: Usage) -> None:
    print(f"\nsoak: {outcomes.total()} calls in {SECONDS:.0f} s; faults injected: {', '.join(faults)}")
    for kind, codes in sorted(outcomes.by_kind.items()):
        print(f"  {kind}: " + ", ".join(f"{code} {n}" for code, n in codes.most_common()))
    print(
        f"  threads {baseline.threads} -> {after.threads}, fds {baseline.fds} -> {after.fds}, "
        f"RSS {baseline.rss_mb:.0f} -> {after.rss_mb:.0f} MB (peak {after.peak_rss_mb:.0f} MB)"
    )
