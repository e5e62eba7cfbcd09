"""Balancing and drain behind a real L7 gRPC proxy: nginx (grpc_pass) before two `visionrpc serve` replicas.

- unary calls spread over both replicas (counted from nginx's access log, which names each call's replica);
- subscriptions with the same pipeline key (x-visionrpc-pipeline-key, sent by the SDK) land on one replica
  and share its pipeline, while different keys spread;
- SIGTERM to a replica under steady unary load loses no call: its health turns NOT_SERVING (seen by the real
  grpc_health_probe), its in-flight calls finish, the rest go to the other replica, and its stream resumes
  there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import wait_for
from media import media
from mesh.conftest import StartReplicas, report
from mesh.nginx import NginxProxy
from mesh.tools import Tools
from server_process import ServerProcess
from visionrpc.client import Client, StreamEvent, StreamFrame, StreamStatus, pipeline_key
from visionrpc.client._stream import build_stream_request
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

INFER = "/visionrpc.v1.InferenceService/Infer"
STREAM = "/visionrpc.v1.InferenceService/StreamPredictions"
# What a client behind a proxy should do anyway: retry UNAVAILABLE (the one status safe to retry) a few times.
RETRYING = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "visionrpc.v1.InferenceService", "method": "Infer"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
HEALTH_SERVING, HEALTH_NOT_SERVING = 0, 4  # grpc_health_probe's exit codes


def infer_request() -> inference_pb2.InferRequest:
    image = types_pb2.Image(encoded=media("coffee.png").read_bytes())
    return inference_pb2.InferRequest(images=[image])


def retrying_stub(address: str) -> tuple[grpc.Channel, inference_pb2_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(address, options=[("grpc.service_config", RETRYING)])
    return channel, inference_pb2_grpc.InferenceServiceStub(channel)


def by_replica(proxy: NginxProxy, path: str) -> Counter[str]:
    return Counter(call.replica for call in proxy.calls(path) if call.grpc_status == "0")


def health(tools: Tools, address: str) -> int:
    """grpc_health_probe's exit code for the inference service (0 SERVING, 4 NOT_SERVING)."""
    command = [
        str(tools.health_probe), f"-addr={address}", "-service=visionrpc.v1.InferenceService",
        "-connect-timeout=1s", "-rpc-timeout=1s",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, timeout=10).returncode


def runs_stream(address: str, stream_id: str) -> bool:
    """Whether the replica at `address` runs this stream: joining it by id answers, or says NOT_FOUND."""
    with grpc.insecure_channel(address) as channel:
        call = inference_pb2_grpc.InferenceServiceStub(channel).StreamPredictions(
            inference_pb2.StreamPredictionsRequest(stream_id=stream_id), timeout=10
        )
        try:
            next(iter(call))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return False
        finally:
            call.cancel()
    return True


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, media_root: Path, tools: Tools) -> Iterator[NginxProxy]:
    """Two replicas behind nginx, shared by the tests that do not stop a replica."""
    workdir = tmp_path_factory.mktemp("pair")
    replicas = [ServerProcess(workdir, "--media-root", str(media_root)) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        with NginxProxy(tools.nginx, workdir / "nginx", [r.address for r in replicas]) as proxy:
            yield proxy
    finally:
        for replica in replicas:
            replica.stop()


def test_unary_calls_spread_over_both_replicas(pair: NginxProxy, capsys: pytest.CaptureFixture[str]) -> None:
    channel, stub = retrying_stub(pair.address)
    with channel:
        for _ in range(40):
            stub.Infer(infer_request(), timeout=30)
    assert wait_for(lambda: sum(by_replica(pair, INFER).values()) == 40, 10)
    counts = by_replica(pair, INFER)
    report(capsys, f"nginx round robin: 40 Infer calls per replica {dict(counts)}")
    assert len(counts) == 2 and min(counts.values()) >= 10, counts


def test_a_pipeline_key_sticks_to_one_replica(pair: NginxProxy, capsys: pytest.CaptureFixture[str]) -> None:
    # Keys as the proxy sees them: 16 distinct keys, each sent three times (requests with no source, which the
    # server refuses at once: only the routing matters here).
    channel, stub = retrying_stub(pair.address)
    with channel:
        for key in [f"key-{i}" for i in range(16)] * 3:
            with pytest.raises(grpc.RpcError) as refused:
                next(iter(stub.StreamPredictions(inference_pb2.StreamPredictionsRequest(), metadata=[
                    ("x-visionrpc-pipeline-key", key)
                ], timeout=10)))  # fmt: skip
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wait_for(lambda: len(pair.calls(STREAM)) == 48, 10)
    replicas_of: dict[str, set[str]] = {}
    for call in pair.calls(STREAM):
        replicas_of.setdefault(call.pipeline_key, set()).add(call.replica)
    keys_per_replica = Counter(next(iter(replicas)) for replicas in replicas_of.values())
    report(capsys, f"nginx consistent hash: 16 keys x 3 calls, keys per replica {dict(keys_per_replica)}")
    assert all(len(replicas) == 1 for replicas in replicas_of.values()), replicas_of
    assert len(keys_per_replica) == 2, "16 keys all hashed to one replica"

    # The SDK's own key: three identical subscriptions reach one replica and share its one pipeline.
    clients = [Client(pair.address) for _ in range(3)]
    streams = [client.stream(["bikes.mp4"], max_fps=5) for client in clients]
    stream_ids = {
        next(event.stream_id for event in stream if isinstance(event, StreamFrame)) for stream in streams
    }
    for stream, client in zip(streams, clients, strict=True):
        stream.cancel()
        client.close()
    expected_key = pipeline_key(
        build_stream_request(
            ["bikes.mp4"], model=None, stream_id=None, options=types_pb2.InferOptions(), max_fps=5,
            frame_policy=None, every_frame_delivery=False, frame_image=None, jpeg_quality=None,
        )
    )  # fmt: skip
    assert wait_for(lambda: sum(c.pipeline_key == expected_key for c in pair.calls(STREAM)) == 3, 10)
    replicas = {c.replica for c in pair.calls(STREAM) if c.pipeline_key == expected_key}
    report(
        capsys, f"SDK key {expected_key}: 3 subscriptions, replicas {replicas}, pipelines {len(stream_ids)}"
    )
    assert len(replicas) == 1 and len(stream_ids) == 1


class UnaryLoad:
    """Closed-loop Infer calls from a few threads through one retrying channel, until stopped."""

    def __init__(self, address: str, workers: int = 2) -> None:
        self._channel, self._stub = retrying_stub(address)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def start(self) -> UnaryLoad:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        request = infer_request()
        while not self._stop.is_set():
            try:
                self._stub.Infer(request, timeout=30)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failed.append(f"{exc.code()}: {exc.details()}")
            else:
                with self._lock:
                    self.ok += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self._channel.close()


@pytest.mark.slow
def test_sigterm_under_load_loses_no_call(
    tools: Tools, start_replicas: StartReplicas, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replicas = start_replicas(2)
    with (
        NginxProxy(tools.nginx, tmp_path / "nginx", [r.address for r in replicas]) as proxy,
        Client(proxy.address) as client,
    ):
        # A stream through the proxy (the SDK resumes it on UNAVAILABLE), and which replica runs it.
        stream = client.stream(["bikes.mp4"], max_fps=5)
        events: list[StreamFrame | StreamStatus] = []
        threading.Thread(target=lambda: events.extend(stream), daemon=True).start()
        assert wait_for(lambda: any(isinstance(e, StreamFrame) for e in events), 60)
        first_id = next(e.stream_id for e in events if isinstance(e, StreamFrame))
        holder = next(r for r in replicas if runs_stream(r.address, first_id))
        other = next(r for r in replicas if r is not holder)

        load = UnaryLoad(proxy.address).start()
        assert wait_for(lambda: len(by_replica(proxy, INFER)) == 2 and load.ok >= 20, 60), load.failed
        assert health(tools, holder.address) == HEALTH_SERVING

        os.kill(holder.pid, signal.SIGTERM)
        sigterm_at = time.time()
        # NOT_SERVING during the notice (3 s), while the replica still takes calls: seen only in that window.
        assert wait_for(lambda: health(tools, holder.address) == HEALTH_NOT_SERVING, 5.0), "no NOT_SERVING"
        flipped_after_s = time.time() - sigterm_at
        assert wait_for(lambda: not holder.alive(), 30), "the replica did not finish draining"
        exited_after_s = time.time() - sigterm_at
        ok_at_exit = load.ok
        assert wait_for(lambda: load.ok >= ok_at_exit + 20, 60), load.failed
        load.stop()

        # The stream went on on the other replica: a RESUMED status (restarted there), then frames again.
        def resumed_frames() -> list[StreamFrame]:
            at = next(
                (i for i, e in enumerate(events) if getattr(e, "event", None) is StreamEvent.RESUMED), None
            )
            return [] if at is None else [e for e in events[at:] if isinstance(e, StreamFrame)]

        assert wait_for(lambda: len(resumed_frames()) >= 3, 60), events[-5:]
        resumed = next(e for e in events if isinstance(e, StreamStatus) and e.event is StreamEvent.RESUMED)
        new_id = resumed_frames()[0].stream_id
        assert runs_stream(other.address, new_id)
        stream.cancel()

    calls = [c for c in proxy.calls(INFER)]
    served = Counter(c.replica for c in calls if c.grpc_status == "0")
    after_exit = Counter(
        c.replica for c in calls if c.grpc_status == "0" and c.finished_at > sigterm_at + exited_after_s
    )
    finished_while_draining = sum(
        1
        for c in calls
        if c.replica == holder.address and c.grpc_status == "0" and c.finished_at > sigterm_at
    )
    moved_by_nginx = sum(1 for c in calls if len(c.upstreams) > 1)
    report(
        capsys,
        f"drain behind nginx: calls ok {load.ok}, calls lost: {len(load.failed)}; "
        f"per replica {dict(served)}; "
        f"the draining replica ({holder.address}) finished {finished_while_draining} after SIGTERM, health "
        f"NOT_SERVING after {flipped_after_s:.2f} s, exited after {exited_after_s:.1f} s; after it exited: "
        f"{dict(after_exit)}; calls nginx moved to the other replica: {moved_by_nginx}; stream "
        f"{first_id} -> {resumed.resume.outcome if resumed.resume else '?'} as {new_id} on {other.address}",
    )
    assert load.failed == []
    assert set(after_exit) == {other.address}
    assert finished_while_draining > 0
