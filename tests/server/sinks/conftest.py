"""Fixtures of the sink suites: the messages of a real pipeline run (real bikes.mp4 frames, real
yolov3-tiny-coco predictions) and the analytics it declares.

The analytics events are made here from the real detections (every third frame, the first detection crosses
the gate line and enters or leaves the yard), not by the analytics engine: the sinks only carry events, and
their tests need a known, dense sequence of them.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import pytest
from conftest import cache_root
from media import media
from visionrpc.server.analytics.types import (
    AnalyticsEvent,
    AnalyticsEventKind,
    CrossingDirection,
    FrameAnalytics,
    Line,
    LineState,
    Point,
    StreamAnalytics,
    Zone,
    ZoneOccupant,
    ZoneState,
)
from visionrpc.server.app import OnnxRuntimeEngineFactory
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import InputImage
from visionrpc.server.streams.types import (
    FrameResult,
    SourceEventKind,
    SourceInfo,
    StreamEnd,
    StreamMessage,
    StreamStatus,
)

FIRST, FRAMES = 104, 30  # of bikes.mp4 (640x272, 25 fps): a busy stretch for yolov3-tiny
WIDTH, HEIGHT, FPS = 640, 272, 25.0
YARD = Zone("yard", (Point(40, 150), Point(300, 150), Point(300, 260), Point(40, 260)))
GATE = Line("gate", Point(320, 0), Point(320, 272))
ANALYTICS = StreamAnalytics(zones=(YARD,), lines=(GATE,))


@pytest.fixture(scope="session")
def analytics() -> StreamAnalytics:
    return ANALYTICS


@pytest.fixture(scope="session")
def messages(tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamMessage, ...]:
    """One pipeline run as its sinks see it: STARTED, FRAMES frames of bikes.mp4 from FIRST (with pixels, real
    predictions given track ids, and analytics), SOURCE ENDED, the end. Inferred once per session."""
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    pixels = []
    for index in range(FIRST + FRAMES):
        ok, image = capture.read()
        assert ok, "bikes.mp4 has enough frames"
        if index >= FIRST:
            pixels.append(image)
    capture.release()
    repository = ModelRepository(
        tmp_path_factory.mktemp("sink-models"),
        cache_root() / "downloads" / "builtin-models",
        cache_root() / "downloads",
    )
    manager = ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 2), max_loaded=1)
    try:
        with manager.acquire(ModelId.parse("yolov3-tiny-coco")) as predictor:
            options = predictor.resolve_options(InferOptions())
            predictions = [
                predictor.infer([InputImage(image, ChannelOrder.BGR)], options).predictions[0]
                for image in pixels
            ]
    finally:
        manager.close()
    assert sum(len(p.detections) for p in predictions) > FRAMES, "bikes.mp4 shows people and cars"
    started = StreamStatus(
        SourceEventKind.STARTED, 0, sources=(SourceInfo(0, WIDTH, HEIGHT, FPS, 250),), cursor=1
    )
    messages: list[StreamMessage] = [started]
    crossed = [0, 0]
    entered = exited = 0
    for n, (image, prediction) in enumerate(zip(pixels, predictions, strict=True), start=FIRST):
        tracked = tuple(replace(d, track_id=i + 1) for i, d in enumerate(prediction.detections))
        prediction = replace(prediction, detections=tracked)
        events: list[AnalyticsEvent] = []
        timestamp_ms, capture_time = n * 1000.0 / FPS, 1_765_000_000.0 + n / FPS
        if tracked and n % 3 == 0:
            first = tracked[0]
            inward = entered == exited  # crossings alternate: in (entering the yard), then out (leaving it)
            direction = CrossingDirection.LEFT_TO_RIGHT if inward else CrossingDirection.RIGHT_TO_LEFT
            crossed[direction is CrossingDirection.RIGHT_TO_LEFT] += 1
            common = dict(
                source_index=0,
                sequence_number=n,
                source_timestamp_ms=timestamp_ms,
                capture_time=capture_time,
                track_id=first.track_id,
                class_id=first.class_id,
                class_name=first.class_name,
                box=first.box,
            )
            events.append(
                AnalyticsEvent(AnalyticsEventKind.LINE_CROSSED, "gate", direction=direction, **common)
            )
            if inward:
                entered += 1
                events.append(AnalyticsEvent(AnalyticsEventKind.ZONE_ENTERED, "yard", **common))
            else:
                exited += 1
                events.append(
                    AnalyticsEvent(AnalyticsEventKind.ZONE_EXITED, "yard", dwell_ms=120.0, **common)
                )
        occupants = tuple(ZoneOccupant(d.track_id, d.class_id, 40.0) for d in tracked[: entered - exited])
        analytics = FrameAnalytics(
            zones=(ZoneState("yard", 0, occupants, entered, exited),),
            lines=(LineState("gate", 0, crossed[0], crossed[1]),),
            events=tuple(events),
        )
        messages.append(
            FrameResult(
                source_index=0,
                sequence_number=n,
                timestamp_ms=timestamp_ms,
                capture_time=capture_time,
                prediction=prediction,
                frames_skipped=0,
                results_dropped=0,
                cursor=n - FIRST + 2,
                analytics=analytics,
                pixels=image,
            )
        )
    messages.append(StreamStatus(SourceEventKind.ENDED, 0, cursor=FRAMES + 2))
    messages.append(StreamEnd())
    assert sum(len(f.analytics.events) for f in messages if isinstance(f, FrameResult) and f.analytics) >= 10
    return tuple(messages)
