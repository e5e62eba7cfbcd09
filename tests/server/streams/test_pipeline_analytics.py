"""A pipeline with analytics and in-process pixels: the real reader on bikes.mp4 and the real yolov3-tiny."""

from __future__ import annotations

import pytest
from visionrpc.server.analytics.types import Line, Point, StreamAnalytics, Tracking
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.pipeline import Pipeline
from visionrpc.server.streams.subscription import Subscription
from visionrpc.server.streams.types import FrameResult, SourceSpec, StreamEnd, StreamOptions

MODEL = "yolov3-tiny-coco"
BIKES_FRAMES = 250
FRAMES = 60  # the clip's first second has next to no detections; then people and cars come


def frame_results(subscription: Subscription, count: int) -> list[FrameResult]:
    results: list[FrameResult] = []
    while len(results) < count:
        message = subscription.get(timeout_s=60.0)
        assert message is not None and not isinstance(message, StreamEnd), message
        if isinstance(message, FrameResult):
            results.append(message)
    return results


@pytest.mark.parametrize(
    ("analytics", "keep_pixels"),
    [
        (StreamAnalytics(), False),
        (StreamAnalytics(tracking=Tracking(enabled=True)), True),
        (StreamAnalytics(lines=(Line("middle", Point(320, 0), Point(320, 272)),)), False),
    ],
)
def test_results_carry_analytics_and_pixels_but_the_ring_keeps_no_pixels(
    models: ModelManager,
    bikes: SourceSpec,
    decode_options: DecodeOptions,
    analytics: StreamAnalytics,
    keep_pixels: bool,
) -> None:
    options = StreamOptions(analytics=analytics)
    pipeline = Pipeline(
        [bikes],
        models.lease(ModelId.parse(MODEL)),
        decode_options,
        options,
        keep_pixels=keep_pixels,
        replay_messages=BIKES_FRAMES + 10,  # the resumed subscriber below finds every frame still there
    )
    try:
        live = frame_results(pipeline.subscribe(), FRAMES)
        for result in live:
            if keep_pixels:
                assert result.pixels is not None and result.pixels.shape == (272, 640, 3)
            else:
                assert result.pixels is None
            assert (result.analytics is not None) == analytics.active
        if analytics.lines:
            assert live[-1].analytics is not None
            assert [line.name for line in live[-1].analytics.lines] == ["middle"]
        if analytics.active:
            assert any(d.track_id for r in live[1:] for d in r.prediction.detections)
        # A resumed subscriber is served from the replay ring: the same results, never their pixels.
        replayed = frame_results(pipeline.subscribe(resume_after=0), FRAMES)
        assert [r.sequence_number for r in replayed] == [r.sequence_number for r in live]
        assert all(r.pixels is None for r in replayed)
        assert [r.analytics for r in replayed] == [r.analytics for r in live]
    finally:
        pipeline.close()
