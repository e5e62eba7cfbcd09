"""StreamPredictions through a real server and real stubs: files, HTTP, sharing, cancellation, refusals."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer, start_server, wait_for
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from visionrpc.client import Client, ResumePolicy, StreamEvents, StreamFrame, StreamStatus
from visionrpc.server.config import ServerConfig
from visionrpc.server.models.repository import ModelId
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

BIKES_FRAMES = 250
wait_for = functools.partial(wait_for, timeout_s=20.0)  # streams start and stop in seconds


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def frames_of(events: list[StreamFrame | StreamEvents | StreamStatus]) -> list[StreamFrame]:
    return [e for e in events if isinstance(e, StreamFrame)]


def test_a_file_stream_yields_every_frame_then_ends_ok(server: RunningServer) -> None:
    with Client(server.address) as client:
        events = list(client.stream(["bikes.mp4"], timeout_s=300))
    statuses = [e for e in events if isinstance(e, StreamStatus)]
    frames = frames_of(events)
    assert statuses[0].event.value == "started"
    assert (statuses[0].sources[0].width, statuses[0].sources[0].height) == (640, 272)
    assert statuses[-1].event.value == "source_ended"
    assert [f.sequence_number for f in frames] == list(range(BIKES_FRAMES))
    assert len({f.stream_id for f in events}) == 1
    timestamps = [f.source_timestamp_ms for f in frames]
    assert timestamps == sorted(timestamps)
    found = {d.class_name for f in frames for d in f.prediction.detections}
    assert {"person", "car"} <= found
    assert all(f.results_dropped == 0 and f.frames_skipped == 0 for f in frames)


def test_frames_can_carry_raw_and_annotated_jpeg(server: RunningServer) -> None:
    with (
        Client(server.address) as client,
        client.stream(["bikes.mp4"], frame_image="annotated", max_fps=50, timeout_s=120) as stream,
    ):
        for event in stream:
            if isinstance(event, StreamFrame):
                image = cv2.imdecode(np.frombuffer(event.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (272, 640, 3)
                break


def test_subscribers_of_the_same_request_share_one_pipeline(server: RunningServer) -> None:
    results: dict[int, list[int]] = {}

    def watch(index: int) -> None:
        with Client(server.address) as client:
            results[index] = [
                f.sequence_number for f in frames_of(list(client.stream(["bikes.mp4"], max_fps=60)))
            ]

    assert wait_for(
        lambda: not server.server.streams.pipelines()
    )  # earlier tests' pipelines have lingered out
    threads = [threading.Thread(target=watch, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: sum(p.subscriber_count for p in server.server.streams.pipelines()) == 3)
    assert len(server.server.streams.pipelines()) == 1  # one decoder, one inference per frame for all three
    for thread in threads:
        thread.join(120)
    assert len(results) == 3
    # Subscribers that joined a little later may miss the first frames, never the rest.
    for sequence in results.values():
        assert sequence == list(range(sequence[0], BIKES_FRAMES))


def test_join_by_stream_id(server: RunningServer) -> None:
    assert wait_for(lambda: not server.server.streams.pipelines())
    with Client(server.address) as client, client.stream(["bikes.mp4"], max_fps=10) as first:
        iterator = iter(first)
        stream_id = next(iterator).stream_id
        with Client(server.address) as other, other.stream(stream_id=stream_id) as second:
            joined = next(iter(second))
            assert joined.stream_id == stream_id
            assert isinstance(joined, StreamStatus) and joined.event.value == "started"
            assert len(server.server.streams.pipelines()) == 1


def test_cancel_frees_the_subscription_and_the_pipeline(server: RunningServer) -> None:
    assert wait_for(lambda: not server.server.streams.pipelines())
    threads_before = threading.active_count()
    with Client(server.address) as client:
        stream = client.stream(["bikes.mp4"], max_fps=5)
        for event in stream:
            if isinstance(event, StreamFrame):
                break
        assert len(server.server.streams.pipelines()) == 1
        stream.cancel()
    assert wait_for(lambda: not server.server.streams.pipelines())
    assert wait_for(lambda: threading.active_count() <= threads_before)


def test_deadline_frees_the_subscription(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub
) -> None:
    request = inference_pb2.StreamPredictionsRequest(
        sources=[inference_pb2.VideoSource(path="bikes.mp4")],
        stream_options=inference_pb2.StreamOptions(max_fps=5),
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamPredictions(request, timeout=1.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for(lambda: not server.server.streams.pipelines())


@pytest.fixture(scope="module")
def http_url(media_root: Path) -> Iterator[str]:
    from streaming import HttpFileServer

    with HttpFileServer(media_root) as http:
        yield f"http://127.0.0.1:{http.port}/bikes.mp4"


def test_an_http_url_source_streams_the_video(server: RunningServer, http_url: str) -> None:
    with Client(server.address) as client:
        frames = frames_of(list(client.stream([http_url], frame_policy="every_frame", timeout_s=300)))
    assert [f.sequence_number for f in frames] == list(range(BIKES_FRAMES))


# -- refusals ----------------------------------------------------------------------------------------------

REFUSALS = {
    "no-sources": (
        inference_pb2.StreamPredictionsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SOURCE_COUNT"
    ),
    "empty-source": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource()]),
        grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_SOURCE",
    ),
    "parent-directory": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(path="../bikes.mp4")]),
        grpc.StatusCode.INVALID_ARGUMENT, None,
    ),
    "absolute-path": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(path="/etc/passwd")]),
        grpc.StatusCode.INVALID_ARGUMENT, None,
    ),
    "missing-file": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(path="nope.mp4")]),
        grpc.StatusCode.NOT_FOUND, "SOURCE_NOT_FOUND",
    ),
    "host-not-allowed": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(url="rtsp://example.com/x")]),
        grpc.StatusCode.PERMISSION_DENIED, "URL_HOST_NOT_ALLOWED",
    ),
    "scheme-not-allowed": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(url="file:///etc/passwd")]),
        grpc.StatusCode.PERMISSION_DENIED, "URL_SCHEME_NOT_ALLOWED",
    ),
    "devices-disabled": (
        inference_pb2.StreamPredictionsRequest(sources=[inference_pb2.VideoSource(device=0)]),
        grpc.StatusCode.PERMISSION_DENIED, "DEVICES_DISABLED",
    ),
    "unknown-model": (
        inference_pb2.StreamPredictionsRequest(
            model_id="nope", sources=[inference_pb2.VideoSource(path="bikes.mp4")]
        ),
        grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND",
    ),
    "negative-max-fps": (
        inference_pb2.StreamPredictionsRequest(
            sources=[inference_pb2.VideoSource(path="bikes.mp4")],
            stream_options=inference_pb2.StreamOptions(max_fps=-1),
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION",
    ),
    "bad-confidence": (
        inference_pb2.StreamPredictionsRequest(
            sources=[inference_pb2.VideoSource(path="bikes.mp4")],
            options={"confidence_threshold": 2.0},
        ),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION",
    ),
    "unknown-stream-id": (
        inference_pb2.StreamPredictionsRequest(stream_id="no-such-stream"),
        grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refusals_carry_status_and_reason(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub, name: str
) -> None:
    request, code, reason = REFUSALS[name]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamPredictions(request, timeout=30))
    assert info.value.code() == code, info.value.details()
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None
    if reason is not None:
        error_info = error_details_pb2.ErrorInfo()
        assert any(d.Unpack(error_info) for d in status.details if d.Is(error_info.DESCRIPTOR))
        assert error_info.reason == reason
    # The server keeps serving streams.
    assert not server.server.streams.pipelines() or wait_for(lambda: not server.server.streams.pipelines())


def test_a_file_that_is_not_a_video_ends_the_stream_with_an_error(
    server: RunningServer, media_root: Path
) -> None:
    (media_root / "not-a-video.mp4").write_bytes(b"this is text, not a video")
    with Client(server.address) as client, pytest.raises(Exception) as info:
        list(client.stream(["not-a-video.mp4"], timeout_s=60))
    assert getattr(info.value, "code", None) == grpc.StatusCode.FAILED_PRECONDITION


def test_limits_answer_resource_exhausted_with_retry_info(base_config: ServerConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(
        base_config, model_repository=tmp_path / "models", preload_default_model=False, max_pipelines=1
    )
    running = start_server(config)
    try:
        with Client(running.address) as client, client.stream(["bikes.mp4"], max_fps=5) as first:
            next(iter(first))
            with pytest.raises(Exception) as info:
                list(client.stream(["bikes.mp4"], max_fps=6, timeout_s=30))
            error = info.value
            assert getattr(error, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert getattr(error, "retry_after_s", None)
    finally:
        running.server.stop(grace_s=0.5)


# -- RTSP: a real GStreamer RTSP server on loopback -------------------------------------------------------


@pytest.fixture
def rtsp(media_root: Path) -> Iterator[object]:
    from streaming import running_rtsp_server

    with running_rtsp_server(media_root / "bikes.mp4") as server:
        yield server


def test_two_clients_of_one_rtsp_stream_get_the_same_frames_from_one_decoder(
    server: RunningServer, rtsp: object
) -> None:
    assert wait_for(lambda: not server.server.streams.pipelines())
    url = rtsp.url  # type: ignore[attr-defined]
    seen: dict[int, list[int]] = {0: [], 1: []}
    with Client(server.address) as client, client.stream([url], timeout_s=120) as first:
        first_events = iter(first)
        while len(seen[0]) < 5:  # the first client is watching before the second arrives
            event = next(first_events)
            if isinstance(event, StreamFrame):
                seen[0].append(event.sequence_number)
        with client.stream([url], timeout_s=120) as second:
            second_events = iter(second)
            while len(seen[1]) < 15:
                event = next(second_events)
                if isinstance(event, StreamFrame):
                    seen[1].append(event.sequence_number)
            while not seen[0] or seen[0][-1] < seen[1][-1]:
                event = next(first_events)
                if isinstance(event, StreamFrame):
                    seen[0].append(event.sequence_number)
            pipelines = server.server.streams.pipelines()
            assert len(pipelines) == 1 and pipelines[0].subscriber_count == 2
    # One decoder: the second client's frames are a subset of the first's, with identical sequence numbers.
    assert set(seen[1]) <= set(seen[0])
    assert seen[1] == sorted(seen[1]) and seen[0] == sorted(seen[0])


def test_an_rtsp_stream_survives_its_server_restarting(server: RunningServer, rtsp: object) -> None:
    url = rtsp.url  # type: ignore[attr-defined]
    events: list[str] = []
    with Client(server.address) as client, client.stream([url], timeout_s=120) as stream:
        frames_before = frames_after = 0
        for event in stream:
            if isinstance(event, StreamStatus):
                events.append(event.event.value)
                if event.event.value == "reconnecting" and "restarted" not in events:
                    rtsp.restart()  # type: ignore[attr-defined]
                    events.append("restarted")
            elif "restarted" not in events:
                frames_before += 1
                if frames_before == 10:
                    rtsp.stop()  # type: ignore[attr-defined]
            elif "reconnected" in events:
                frames_after += 1
                if frames_after == 10:
                    break
    assert events[0] == "started"
    assert events.index("reconnecting") < events.index("restarted") < events.index("reconnected")
    assert frames_before >= 10 and frames_after == 10


def test_server_shutdown_ends_streams_with_unavailable(base_config: ServerConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(
        base_config, model_repository=tmp_path / "models", preload_default_model=False
    )
    running = start_server(config)
    # Without resuming, to see the server's own status (the SDK would otherwise resume elsewhere).
    no_resume = ResumePolicy(enabled=False)
    with (
        Client(running.address) as client,
        client.stream(["bikes.mp4"], max_fps=5, resume=no_resume) as stream,
    ):
        events = iter(stream)
        assert next(events).stream_id
        stopper = threading.Thread(target=running.server.stop, kwargs={"grace_s": 5.0})
        stopper.start()
        with pytest.raises(Exception) as info:
            for _ in events:
                pass
        stopper.join(30)
    assert getattr(info.value, "code", None) == grpc.StatusCode.UNAVAILABLE
    assert getattr(info.value, "reason", None) == "SHUTTING_DOWN"


def test_unary_infer_is_served_while_a_stream_runs(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub
) -> None:
    ok, jpeg = cv2.imencode(".jpg", np.full((240, 320, 3), 90, np.uint8))
    assert ok
    photo = types_pb2.Image(encoded=jpeg.tobytes())
    with Client(server.address) as client, client.stream(["bikes.mp4"]) as stream:
        events = iter(stream)
        next(events)
        for _ in range(5):
            response = stub.Infer(inference_pb2.InferRequest(images=[photo]), timeout=30)
            assert response.predictions[0].image_size.width == 320
        pipelines = server.server.streams.pipelines()
        # The stream kept inferring (its lossy queue overflows while we do not read) while Infer was answered.
        assert pipelines and pipelines[0].running and pipelines[0].frames_inferred > 0
        # Both went through the model's one batch scheduler.
        with server.server.models.acquire(ModelId.parse(server.config.default_model)) as predictor:
            stats = predictor.scheduler_stats()
        assert stats.unary_images >= 5 and stats.stream_images > 0
