"""The SDK's analytics types: what they send (a table of declarations against the contract's messages) and
what comes back typed through a real server (frames of bikes.mp4 streamed and pushed)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import cv2
import pytest
from media import media
from visionrpc.client import (
    Analytics,
    Client,
    FrameAnalytics,
    Line,
    StreamFrame,
    Tracking,
    Zone,
)
from visionrpc.v1 import analytics_pb2

P = analytics_pb2.Point
GATE = Line("gate", start=(320, 0), end=(320, 272))


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        (Analytics(), analytics_pb2.StreamAnalytics()),
        (
            Analytics(tracking=True),
            analytics_pb2.StreamAnalytics(tracking=analytics_pb2.Tracking(enabled=True)),
        ),
        (
            Analytics(tracking=Tracking(activation_threshold=0.4, lost_track_frames=10)),
            analytics_pb2.StreamAnalytics(
                tracking=analytics_pb2.Tracking(enabled=True, activation_threshold=0.4, lost_track_frames=10)
            ),
        ),
        (
            Analytics(zones=[Zone("door", [(0, 0), (10, 0), (10, 10)], classes=["person", 2], sources=[1])]),
            analytics_pb2.StreamAnalytics(
                zones=[
                    analytics_pb2.Zone(
                        name="door",
                        polygon=[P(x=0, y=0), P(x=10, y=0), P(x=10, y=10)],
                        source_indexes=[1],
                        classes=analytics_pb2.ClassFilter(class_ids=[2], class_names=["person"]),
                        anchor=analytics_pb2.ANCHOR_BOTTOM_CENTER,
                    )
                ]
            ),
        ),
        (
            Analytics(lines=[Line("gate", (1, 2), (3, 4), anchor="center")]),
            analytics_pb2.StreamAnalytics(
                lines=[
                    analytics_pb2.Line(
                        name="gate",
                        start=P(x=1, y=2),
                        end=P(x=3, y=4),
                        classes=analytics_pb2.ClassFilter(),
                        anchor=analytics_pb2.ANCHOR_CENTER,
                    )
                ]
            ),
        ),
    ],
    ids=["nothing", "tracking", "tracking-settings", "zone", "line"],
)
def test_declarations_become_the_contracts_messages(
    declared: Analytics, expected: analytics_pb2.StreamAnalytics
) -> None:
    assert declared.to_proto() == expected


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Client]:
    with Client(server.address) as client:
        yield client


def test_streamed_frames_carry_typed_analytics_and_track_ids(client: Client) -> None:
    with client.stream(["bikes.mp4"], analytics=Analytics(lines=[GATE]), every_frame_delivery=True) as stream:
        frames = list(itertools.islice((m for m in stream if isinstance(m, StreamFrame)), 40))
    assert all(isinstance(f.analytics, FrameAnalytics) for f in frames)
    assert all([line.name for line in f.analytics.lines] == ["gate"] for f in frames if f.analytics)
    tracked = [d.track_id for f in frames for d in f.prediction.detections if d.track_id]
    assert tracked, "bikes.mp4's people and bicycles are tracked within 40 frames"


def test_pushed_frames_carry_typed_analytics(client: Client) -> None:
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    frames = [capture.read()[1] for _ in range(60)][::3]  # objects move a few pixels between these frames
    capture.release()
    results = list(client.infer_stream(frames, analytics=Analytics(tracking=True, lines=[GATE])))
    assert [r.sequence_number for r in results] == list(range(20))
    assert all(r.analytics is not None and r.analytics.lines[0].name == "gate" for r in results)
    assert any(d.track_id for r in results if r.prediction for d in r.prediction.detections)
