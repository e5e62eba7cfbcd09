"""Fixtures of the sink suites: the messages of a real pipeline run (real bikes.mp4 frames, real
yolov3-tiny-coco predictions) and the analytics it declares.

Track ids, zone and line states and events come from the real analytics (StreamAnalyzer, ByteTrack) over those
predictions, as a pipeline publishes them.
"""

from __future__ import annotations

import cv2
import pytest
from conftest import cache_root
from media import media
from visionrpc.server.analytics.analyzer import StreamAnalyzer
from visionrpc.server.analytics.types import (
    AnalyticsEventKind,
    Line,
    Point,
    StreamAnalytics,
    Zone,
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

FIRST, FRAMES = 24, 68  # of bikes.mp4 (640x272, 25 fps): a stretch where the yard and the gate see traffic
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
    started = StreamStatus(
        SourceEventKind.STARTED, 0, sources=(SourceInfo(0, WIDTH, HEIGHT, FPS, 250),), cursor=1
    )
    messages: list[StreamMessage] = [started]
    analyzer = StreamAnalyzer(ANALYTICS)
    for n, (image, prediction) in enumerate(zip(pixels, predictions, strict=True), start=FIRST):
        timestamp_ms, capture_time = n * 1000.0 / FPS, 1_765_000_000.0 + n / FPS
        tracked, analytics = analyzer.analyze(0, n, timestamp_ms, capture_time, prediction)
        messages.append(
            FrameResult(
                source_index=0,
                sequence_number=n,
                timestamp_ms=timestamp_ms,
                capture_time=capture_time,
                prediction=tracked,
                frames_skipped=0,
                results_dropped=0,
                cursor=n - FIRST + 2,
                analytics=analytics,
                pixels=image,
            )
        )
    messages.append(StreamStatus(SourceEventKind.ENDED, 0, cursor=FRAMES + 2))
    messages.append(StreamEnd())
    events = [e for f in messages if isinstance(f, FrameResult) and f.analytics for e in f.analytics.events]
    assert len(events) >= 10 and {e.kind for e in events} == set(AnalyticsEventKind), "a known busy stretch"
    return tuple(messages)
