"""Client.infer_stream against a real server: frames as arrays, bytes and InputFrames, per-frame errors as
exceptions in results, dropping, call errors raised, the caller's own exceptions surfaced, cancellation."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from media import media
from visionrpc.client import (
    CancelledError,
    Client,
    FrameResult,
    InputFrame,
    InvalidArgumentError,
    NotFoundError,
)
from visionrpc.v1 import analytics_pb2

FRAMES = 12


@functools.cache
def bikes_frames() -> tuple[npt.NDArray[np.uint8], ...]:
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    frames = []
    for _ in range(FRAMES * 5):
        ok, frame = capture.read()
        assert ok
        frames.append(frame)
    capture.release()
    return tuple(frames[::5])


def jpeg(frame: npt.NDArray[np.uint8]) -> bytes:
    return bytes(cv2.imencode(".jpg", frame)[1].tobytes())


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


def outcome(result: FrameResult) -> str:
    return "prediction" if result.prediction else "dropped" if result.dropped else "error"


@pytest.mark.parametrize("encode", [False, True], ids=["raw-arrays", "jpeg-bytes"])
def test_results_come_one_per_frame_in_order_with_infers_detections(client: Client, encode: bool) -> None:
    frames = [jpeg(f) if encode else f for f in bikes_frames()]
    results = list(client.infer_stream(frames, max_in_flight=4))
    assert [r.sequence_number for r in results] == list(range(FRAMES))
    unary = client.infer(frames).predictions
    for result, expected in zip(results, unary, strict=True):
        assert result.prediction is not None and result.model_name == "yolov3-tiny-coco"
        assert [d.class_name for d in result.prediction.detections] == [
            d.class_name for d in expected.detections
        ]
        for mine, theirs in zip(result.prediction.detections, expected.detections, strict=True):
            assert mine.box.as_tuple() == pytest.approx(theirs.box.as_tuple(), abs=1.0)


def test_input_frames_keep_their_numbering_and_sources(client: Client) -> None:
    frame = bikes_frames()[0]
    sent = [
        InputFrame(frame, 10),
        InputFrame(frame, source_index=2),
        InputFrame(frame, 11),
        InputFrame(frame),
    ]
    results = list(client.infer_stream(sent))
    # Unnumbered frames continue their source's numbering (source 0 after 11: 12; source 2 from 0).
    assert [(r.source_index, r.sequence_number) for r in results] == [(0, 10), (2, 0), (0, 11), (0, 12)]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(b"not an image", "UNSUPPORTED_IMAGE_FORMAT"), (b"\xff\xd8\xff\xe0" + bytes(40), "UNDECODABLE_IMAGE")],
    ids=["unknown-format", "truncated-jpeg"],
)
def test_a_refused_frame_carries_its_error_and_the_call_goes_on(
    client: Client, bad: bytes, reason: str
) -> None:
    good = jpeg(bikes_frames()[0])
    results = list(client.infer_stream([good, bad, good]))
    assert [outcome(r) for r in results] == ["prediction", "error", "prediction"]
    error = results[1].error
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == reason, error


def test_drop_answers_frames_past_the_bound_dropped(client: Client) -> None:
    frames = [jpeg(f) for f in bikes_frames()] * 3
    results = list(client.infer_stream(frames, max_in_flight=1, drop=True))
    assert [r.sequence_number for r in results] == list(range(len(frames)))
    assert {outcome(r) for r in results} == {"prediction", "dropped"}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"model": "no-such-model"}, NotFoundError),
        ({"confidence": 1.5}, InvalidArgumentError),
        ({"classes": ["unicorn"]}, InvalidArgumentError),
    ],
    ids=["unknown-model", "bad-confidence", "unknown-class"],
)
def test_call_errors_are_raised_from_iteration(
    client: Client, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        list(client.infer_stream([jpeg(bikes_frames()[0])], **options))


@pytest.mark.parametrize(
    ("bad", "error"),
    [(object(), TypeError), (np.zeros((4, 4), np.float32), ValueError)],
    ids=["not-an-image", "float-array"],
)
def test_the_callers_own_errors_are_raised_after_the_frames_before_them(
    client: Client, bad: object, error: type[Exception]
) -> None:
    good = jpeg(bikes_frames()[0])
    seen: list[FrameResult] = []
    with pytest.raises(error):
        seen.extend(client.infer_stream([good, good, bad, good]))  # type: ignore[list-item]
    assert [r.sequence_number for r in seen] == [0, 1]


def test_cancel_ends_an_endless_stream(client: Client) -> None:
    frame = jpeg(bikes_frames()[0])
    with client.infer_stream(itertools.repeat(frame), max_in_flight=2) as results:
        iterator = iter(results)
        assert next(iterator).prediction is not None
        results.cancel()
        with pytest.raises(CancelledError):
            list(iterator)


def test_analytics_come_with_each_result(client: Client) -> None:
    gate = analytics_pb2.StreamAnalytics(
        lines=[
            analytics_pb2.Line(
                name="gate", start=analytics_pb2.Point(x=320), end=analytics_pb2.Point(x=320, y=272)
            )
        ]
    )
    results = list(client.infer_stream(bikes_frames()[:3], analytics=gate))
    assert all(
        r.analytics is not None and [line.name for line in r.analytics.lines] == ["gate"] for r in results
    )
    (plain,) = list(client.infer_stream(bikes_frames()[:1]))
    assert plain.analytics is None
