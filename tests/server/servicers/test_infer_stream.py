"""InferStream through a real server and real stubs: order, parity with Infer, frame and call errors,
back-pressure (WAIT and DROP, seen from the server's side), cancellation."""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer, start_server, wait_for
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from media import media
from prometheus_client.parser import text_string_to_metric_families
from streaming import free_port
from visionrpc.server.analytics.analyzer import StreamAnalyzer
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import BoundingBox, Detection, ImageSize, Prediction
from visionrpc.server.servicers.stream_convert import stream_analytics_from_proto
from visionrpc.server.streams import pushed
from visionrpc.v1 import analytics_pb2, inference_pb2, inference_pb2_grpc, types_pb2

wait_for = functools.partial(wait_for, timeout_s=30.0)
FRAME_STEP = 6  # every 6th frame of bikes.mp4: 42 frames, people and cars, a few seconds of CPU


@functools.cache
def bikes_jpegs() -> tuple[bytes, ...]:
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    frames = []
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % FRAME_STEP == 0:
            frames.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
        index += 1
    capture.release()
    return tuple(frames)


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def config(**fields: object) -> inference_pb2.InferStreamRequest:
    return inference_pb2.InferStreamRequest(config=inference_pb2.InferStreamConfig(**fields))  # type: ignore[arg-type]


def frame(
    sequence_number: int, image: types_pb2.Image, source_index: int = 0
) -> inference_pb2.InferStreamRequest:
    return inference_pb2.InferStreamRequest(
        frame=inference_pb2.InputFrame(
            sequence_number=sequence_number, image=image, source_index=source_index
        )
    )


def jpeg_frames(jpegs: tuple[bytes, ...]) -> list[inference_pb2.InferStreamRequest]:
    return [frame(i, types_pb2.Image(encoded=data)) for i, data in enumerate(jpegs)]


def reason_of(status: object) -> str:
    for detail in status.details:  # type: ignore[attr-defined]
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def test_every_frame_is_answered_in_order_with_infers_detections(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    jpegs = bikes_jpegs()
    answers = list(stub.InferStream(iter([config(), *jpeg_frames(jpegs)]), timeout=300))
    assert [a.sequence_number for a in answers] == list(range(len(jpegs)))
    assert all(a.WhichOneof("outcome") == "prediction" for a in answers)
    assert {a.model_name for a in answers} == {"yolov3-tiny-coco"}
    seen = set()
    for answer, data in zip(answers, jpegs, strict=True):
        (unary,) = stub.Infer(
            inference_pb2.InferRequest(images=[types_pb2.Image(encoded=data)]), timeout=60
        ).predictions
        streamed = answer.prediction
        assert [d.class_name for d in streamed.detections] == [d.class_name for d in unary.detections]
        for mine, theirs in zip(streamed.detections, unary.detections, strict=True):
            assert mine.confidence == pytest.approx(theirs.confidence, abs=1e-3)
            for side in ("x_min", "y_min", "x_max", "y_max"):
                assert getattr(mine.box, side) == pytest.approx(getattr(theirs.box, side), abs=1.0)
        seen |= {d.class_name for d in streamed.detections}
    assert {"person", "car"} <= seen


def _raw(width: int, height: int, size: int) -> types_pb2.Image:
    return types_pb2.Image(
        raw=types_pb2.RawImage(
            data=bytes(size), width=width, height=height, channel_order=types_pb2.CHANNEL_ORDER_BGR
        )
    )


@pytest.mark.parametrize(
    ("bad", "reason", "field"),
    [
        (frame(3, types_pb2.Image(encoded=b"not an image")), "UNSUPPORTED_IMAGE_FORMAT", "frame.image"),
        (frame(3, types_pb2.Image()), "EMPTY_IMAGE", "frame.image"),
        (frame(3, _raw(64, 48, 100)), "RAW_SIZE_MISMATCH", "frame.image"),
        (frame(1, types_pb2.Image(encoded=b"")), "SEQUENCE_NOT_INCREASING", "frame.sequence_number"),
    ],
    ids=["undecodable", "empty", "raw-size-mismatch", "sequence-not-increasing"],
)
def test_a_bad_frame_gets_an_error_answer_and_the_call_goes_on(
    stub: inference_pb2_grpc.InferenceServiceStub,
    bad: inference_pb2.InferStreamRequest,
    reason: str,
    field: str,
) -> None:
    jpegs = bikes_jpegs()[:5]
    good = jpeg_frames(jpegs)
    # Frames 0, 1, 2, the bad one (numbered 3, or a repeated 1), then 4 and 5.
    requests = [config(), *good[:3], bad, frame(4, good[3].frame.image), frame(5, good[4].frame.image)]
    answers = list(stub.InferStream(iter(requests), timeout=120))
    assert [a.WhichOneof("outcome") for a in answers] == ["prediction"] * 3 + ["error"] + ["prediction"] * 2
    error = answers[3].error
    assert error.code == code_pb2.INVALID_ARGUMENT
    assert reason_of(error) == reason, error.message
    violations = error_details_pb2.BadRequest()
    assert any(d.Unpack(violations) for d in error.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    assert violations.field_violations[0].field.startswith(field)


@pytest.mark.parametrize(
    ("requests", "code", "reason"),
    [
        ([frame(0, types_pb2.Image())], grpc.StatusCode.INVALID_ARGUMENT, "CONFIG_EXPECTED"),
        ([config(), config()], grpc.StatusCode.INVALID_ARGUMENT, "CONFIG_REPEATED"),
        ([config(), inference_pb2.InferStreamRequest()], grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_MESSAGE"),
        ([config(model_id="no-such-model")], grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        ([config(model_id="../etc")], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_ID"),
        (
            [config(options=types_pb2.InferOptions(confidence_threshold=2.0))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_OPTION",
        ),
        (
            [config(options=types_pb2.InferOptions(class_names=["unicorn"]))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNKNOWN_CLASS",
        ),
        ([config(backpressure=99)], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION"),
    ],
    ids=[
        "frame-first",
        "config-twice",
        "empty-message",
        "unknown-model",
        "bad-model-id",
        "bad-option",
        "unknown-class",
        "bad-backpressure",
    ],
)
def test_call_errors_end_the_call_with_their_status(
    stub: inference_pb2_grpc.InferenceServiceStub,
    requests: list[inference_pb2.InferStreamRequest],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.InferStream(iter(requests), timeout=60))
    error = caught.value
    assert error.code() == code, error.details()  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and reason_of(status) == reason


def test_a_call_that_sends_nothing_ends_ok(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    assert list(stub.InferStream(iter([]), timeout=30)) == []
    assert list(stub.InferStream(iter([config()]), timeout=30)) == []


class LoadRecorder:
    """Records the server's sessions' loads (the public observation hook) while installed."""

    def __init__(self) -> None:
        self.loads: list[pushed.SessionLoad] = []

    def __enter__(self) -> LoadRecorder:
        pushed.LOAD_OBSERVERS.append(self.loads.append)
        return self

    def __exit__(self, *exc_info: object) -> None:
        pushed.LOAD_OBSERVERS.remove(self.loads.append)


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_wait_never_holds_more_than_max_in_flight_frames(
    stub: inference_pb2_grpc.InferenceServiceStub, max_in_flight: int
) -> None:
    jpegs = bikes_jpegs()[:24]
    requests = [config(max_in_flight=max_in_flight, backpressure=inference_pb2.BACKPRESSURE_WAIT)]
    with LoadRecorder() as recorder:
        # The client's iterator is drained by grpc as fast as the transport lets it: it never waits itself.
        answers = list(stub.InferStream(iter(requests + jpeg_frames(jpegs)), timeout=300))
    assert [a.sequence_number for a in answers] == list(range(len(jpegs)))
    assert all(a.WhichOneof("outcome") == "prediction" for a in answers)
    mine = [load for load in recorder.loads if load.settings.max_in_flight == max_in_flight]
    assert len(mine) == len(jpegs)
    assert max(load.unanswered for load in mine) == max_in_flight  # full, and never past it


def test_drop_answers_frames_past_the_bound_dropped_in_order(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    jpegs = bikes_jpegs()
    requests = [config(max_in_flight=1, backpressure=inference_pb2.BACKPRESSURE_DROP), *jpeg_frames(jpegs)]
    with LoadRecorder() as recorder:
        answers = list(stub.InferStream(iter(requests), timeout=300))
    assert [a.sequence_number for a in answers] == list(range(len(jpegs)))
    outcomes = [a.WhichOneof("outcome") for a in answers]
    assert set(outcomes) == {"prediction", "dropped"}, outcomes
    assert answers[0].WhichOneof("outcome") == "prediction"  # nothing was in flight yet
    mine = [load for load in recorder.loads if load.settings.drop]
    assert max(load.inferring for load in mine) == 1


def test_raw_frames_and_sources_are_answered_per_source(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    pixels = cv2.imdecode(np.frombuffer(bikes_jpegs()[0], np.uint8), cv2.IMREAD_COLOR)
    height, width = pixels.shape[:2]
    raw = types_pb2.Image(
        raw=types_pb2.RawImage(
            data=pixels.tobytes(), width=width, height=height, channel_order=types_pb2.CHANNEL_ORDER_BGR
        )
    )
    # Each source numbers its own frames: 5 after 7 is fine on another source.
    requests = [config(), frame(7, raw, source_index=0), frame(5, raw, source_index=1), frame(8, raw, 0)]
    answers = list(stub.InferStream(iter(requests), timeout=120))
    assert [(a.source_index, a.sequence_number) for a in answers] == [(0, 7), (1, 5), (0, 8)]
    assert all(a.prediction.image_size.width == width for a in answers)


def test_cancelling_mid_stream_frees_the_session(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    jpegs = bikes_jpegs()
    outgoing: queue.Queue[inference_pb2.InferStreamRequest | None] = queue.Queue()
    outgoing.put(config(max_in_flight=4))

    def requests() -> Iterator[inference_pb2.InferStreamRequest]:
        index = 0
        while (request := outgoing.get()) is not None:
            yield request
            outgoing.put(frame(index, types_pb2.Image(encoded=jpegs[index % len(jpegs)])))
            index += 1

    call = stub.InferStream(requests(), timeout=300)
    answered = threading.Event()

    def read() -> None:
        try:
            for _ in call:
                answered.set()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]

    reader = threading.Thread(target=read)
    reader.start()
    assert answered.wait(60)
    assert pushed.open_sessions() >= 1
    call.cancel()
    outgoing.put(None)
    reader.join(30)
    assert wait_for(lambda: pushed.open_sessions() == 0)


@functools.cache
def bikes_raw(count: int) -> tuple[types_pb2.Image, ...]:
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    images = []
    for _ in range(count):
        ok, pixels = capture.read()
        assert ok
        height, width = pixels.shape[:2]
        images.append(
            types_pb2.Image(
                raw=types_pb2.RawImage(
                    data=pixels.tobytes(),
                    width=width,
                    height=height,
                    channel_order=types_pb2.CHANNEL_ORDER_BGR,
                )
            )
        )
    capture.release()
    return tuple(images)


GATE = analytics_pb2.StreamAnalytics(
    lines=[
        analytics_pb2.Line(
            name="gate", start=analytics_pb2.Point(x=320, y=0), end=analytics_pb2.Point(x=320, y=272)
        )
    ],
    zones=[
        analytics_pb2.Zone(
            name="left",
            polygon=[analytics_pb2.Point(x=x, y=y) for x, y in ((0, 0), (320, 0), (320, 272), (0, 272))],
            classes=analytics_pb2.ClassFilter(class_names=["person"]),
        )
    ],
)


def domain_prediction(message: types_pb2.ImagePrediction) -> Prediction:
    return Prediction(
        image_size=ImageSize(message.image_size.width, message.image_size.height),
        detections=tuple(
            Detection(
                BoundingBox(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max),
                d.class_id,
                d.class_name,
                d.confidence,
            )
            for d in message.detections
        ),
    )


def test_analytics_equal_a_stream_analyzer_run_over_the_same_predictions(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    frames = [frame(i, image) for i, image in enumerate(bikes_raw(60))]
    # One frame in flight: every batch holds one frame, so both runs compute the very same predictions.
    plain = list(stub.InferStream(iter([config(max_in_flight=1), *frames]), timeout=300))
    tracked = list(stub.InferStream(iter([config(max_in_flight=1, analytics=GATE), *frames]), timeout=300))
    analyzer = StreamAnalyzer(stream_analytics_from_proto(GATE, "analytics"))
    expected = [
        analyzer.analyze(0, a.sequence_number, 40.0 * a.sequence_number, 0.0, domain_prediction(a.prediction))
        for a in plain
    ]
    assert [a.sequence_number for a in tracked] == list(range(len(frames)))
    assert any(d.track_id for a in tracked for d in a.prediction.detections)
    for answer, (prediction, analytics) in zip(tracked, expected, strict=True):
        assert [d.track_id for d in answer.prediction.detections] == [
            d.track_id for d in prediction.detections
        ]
        (line,) = answer.analytics.lines
        assert (line.name, line.left_to_right, line.right_to_left) == (
            "gate",
            analytics.lines[0].left_to_right,
            analytics.lines[0].right_to_left,
        )
        (zone,) = answer.analytics.zones
        assert (zone.entered_total, zone.exited_total) == (
            analytics.zones[0].entered_total,
            analytics.zones[0].exited_total,
        )
        assert [
            (analytics_pb2.AnalyticsEventKind.Name(e.kind), e.name, e.track_id)
            for e in answer.analytics.events
        ] == [(f"ANALYTICS_EVENT_KIND_{e.kind.name}", e.name, e.track_id) for e in analytics.events]
    assert any(a.analytics.events for a in tracked)  # something happened worth comparing


@pytest.mark.parametrize(
    ("analytics", "field"),
    [
        (
            analytics_pb2.StreamAnalytics(lines=[analytics_pb2.Line(name="", end=analytics_pb2.Point(x=1))]),
            "config.analytics.lines[0].name",
        ),
        (
            analytics_pb2.StreamAnalytics(
                zones=[
                    analytics_pb2.Zone(name="z", polygon=[analytics_pb2.Point(x=1), analytics_pb2.Point(y=1)])
                ]
            ),
            "config.analytics.zones[0].polygon",
        ),
        (
            analytics_pb2.StreamAnalytics(
                tracking=analytics_pb2.Tracking(enabled=True),
                lines=[
                    analytics_pb2.Line(
                        name="l",
                        end=analytics_pb2.Point(x=5, y=5),
                        classes=analytics_pb2.ClassFilter(class_names=["unicorn"]),
                    )
                ],
            ),
            "config.analytics.lines[0].classes",
        ),
    ],
    ids=["unnamed-line", "two-point-zone", "unknown-class"],
)
def test_bad_analytics_end_the_call(
    stub: inference_pb2_grpc.InferenceServiceStub, analytics: analytics_pb2.StreamAnalytics, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.InferStream(iter([config(analytics=analytics)]), timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None and reason_of(status) == "INVALID_ANALYTICS"
    violations = error_details_pb2.BadRequest()
    assert any(d.Unpack(violations) for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR))
    assert violations.field_violations[0].field.startswith(field), violations


def raw_infer_stream(channel: grpc.Channel) -> Any:
    """InferStream with requests sent as raw bytes, so malformed and oversized messages can be sent."""
    return channel.stream_stream(
        "/visionrpc.v1.InferenceService/InferStream",
        request_serializer=None,
        response_deserializer=inference_pb2.InferStreamResponse.FromString,
    )


@pytest.mark.parametrize(
    ("bad", "code", "reason"),
    [
        (b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        (
            frame(1, types_pb2.Image(encoded=bytes(17 * 1024 * 1024))).SerializeToString(),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "MESSAGE_TOO_LARGE",
        ),
    ],
    ids=["malformed", "too-large"],
)
def test_a_bad_message_ends_the_call_after_the_frames_before_it(
    server: RunningServer, bad: bytes, code: grpc.StatusCode, reason: str
) -> None:
    good = frame(0, types_pb2.Image(encoded=bikes_jpegs()[0])).SerializeToString()
    answers = []
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        for answer in raw_infer_stream(channel)(iter([config().SerializeToString(), good, bad]), timeout=60):
            answers.append(answer)
    assert [a.WhichOneof("outcome") for a in answers] == ["prediction"]
    assert caught.value.code() == code  # type: ignore[attr-defined]
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None and reason_of(status) == reason


@pytest.fixture(scope="module")
def keyed_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "api-keys").write_text("stream-key\n")
    running = start_server(
        dataclasses.replace(
            base_config, model_repository=folder / "models", api_keys_file=str(folder / "api-keys")
        )
    )
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong-key"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer stream-key"),), grpc.StatusCode.OK),
    ],
    ids=["no-key", "wrong-key", "right-key"],
)
def test_the_access_policy_applies(
    keyed_server: RunningServer, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    requests = [config(), frame(0, types_pb2.Image(encoded=bikes_jpegs()[0]))]
    with grpc.insecure_channel(keyed_server.address) as channel:
        call = inference_pb2_grpc.InferenceServiceStub(channel).InferStream(
            iter(requests), metadata=metadata, timeout=60
        )
        if code is grpc.StatusCode.OK:
            assert [a.WhichOneof("outcome") for a in call] == ["prediction"]
        else:
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
            assert caught.value.code() == code  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def metered_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = dataclasses.replace(
        base_config, model_repository=tmp_path_factory.mktemp("models"), metrics_port=free_port()
    )
    running = start_server(config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


def test_calls_are_counted_by_their_final_code(metered_server: RunningServer) -> None:
    with grpc.insecure_channel(metered_server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        list(
            stub.InferStream(
                iter([config(), frame(0, types_pb2.Image(encoded=bikes_jpegs()[0]))]), timeout=60
            )
        )
        with pytest.raises(grpc.RpcError):
            list(stub.InferStream(iter([config(model_id="no-such-model")]), timeout=60))
    url = f"http://127.0.0.1:{metered_server.server.metrics_port}/metrics"

    def counted() -> set[str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            sample.labels["code"]
            for family in text_string_to_metric_families(text)
            if family.name == "visionrpc_rpc_calls"
            for sample in family.samples
            if sample.labels.get("method") == "/visionrpc.v1.InferenceService/InferStream"
        }

    assert wait_for(lambda: {"OK", "NOT_FOUND"} <= counted())
