"""StreamAnalyzer with synthetic detections through the real ByteTrack tracker: zones, lines, filters, events.

Each case moves objects' anchors (the bottom centre of a 40x80 box) along a path, one frame every 40 ms, and
checks the events the analyzer reports, in order. A track gets its id on its second frame (ByteTrack's
confirmation), so each path's first point is never counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from visionrpc.server.analytics.analyzer import StreamAnalyzer
from visionrpc.server.analytics.types import (
    AnalyticsEventKind,
    ClassFilter,
    CrossingDirection,
    FrameAnalytics,
    Line,
    Point,
    StreamAnalytics,
    Tracking,
    Zone,
)
from visionrpc.server.domain import BoundingBox, Detection, ImageSize, Prediction

FRAME_MS = 40.0
ENTERED, EXITED, CROSSED = (
    AnalyticsEventKind.ZONE_ENTERED,
    AnalyticsEventKind.ZONE_EXITED,
    AnalyticsEventKind.LINE_CROSSED,
)
L2R, R2L = CrossingDirection.LEFT_TO_RIGHT, CrossingDirection.RIGHT_TO_LEFT
# A horizontal line drawn left to right: LEFT_TO_RIGHT is a crossing downwards (y grows downwards).
GATE = Line("gate", Point(0, 200), Point(400, 200))
ROOM = Zone("room", (Point(100, 100), Point(300, 100), Point(300, 300), Point(100, 300)))


@dataclass(frozen=True)
class Thing:
    """An object on one frame: its anchor (bottom centre) and class."""

    x: float
    y: float
    class_name: str = "person"


def walk(x: float, ys: Sequence[float], class_name: str = "person") -> list[list[Thing]]:
    return [[Thing(x, y, class_name)] for y in ys]


def prediction(things: Sequence[Thing]) -> Prediction:
    classes = {"person": 0, "car": 2}
    return Prediction(
        ImageSize(640, 480),
        tuple(
            Detection(
                BoundingBox(t.x - 20, t.y - 80, t.x + 20, t.y), classes[t.class_name], t.class_name, 0.9
            )
            for t in things
        ),
    )


def run(
    spec: StreamAnalytics, frames: Sequence[Sequence[Thing]], source_index: int = 0
) -> list[FrameAnalytics]:
    analyzer = StreamAnalyzer(spec)
    results = []
    for number, things in enumerate(frames):
        _, analytics = analyzer.analyze(source_index, number, number * FRAME_MS, 1000.0, prediction(things))
        results.append(analytics)
    return results


def events_of(results: Sequence[FrameAnalytics]) -> list[tuple[object, ...]]:
    """(frame, kind, name, direction) of every event, in the order reported."""
    return [
        (e.sequence_number, e.kind, e.name, e.direction)
        if e.kind is CROSSED
        else (e.sequence_number, e.kind, e.name)
        for a in results
        for e in a.events
    ]


@pytest.mark.parametrize(
    ("case", "spec", "frames", "expected"),
    [
        (
            "crossing downwards",
            StreamAnalytics(lines=(GATE,)),
            walk(200, [150, 170, 190, 210, 230]),
            [(3, CROSSED, "gate", L2R)],
        ),
        (
            "crossing upwards",
            StreamAnalytics(lines=(GATE,)),
            walk(200, [250, 230, 210, 190, 170]),
            [(3, CROSSED, "gate", R2L)],
        ),
        (
            "touching the line and going back",
            StreamAnalytics(lines=(GATE,)),
            walk(200, [160, 180, 200, 180, 160]),
            [],
        ),
        (
            "touching the line and going on",
            StreamAnalytics(lines=(GATE,)),
            walk(200, [160, 180, 200, 220, 240]),
            [(3, CROSSED, "gate", L2R)],
        ),
        (
            "crossing beside the line's end",
            StreamAnalytics(lines=(GATE,)),
            walk(450, [150, 170, 190, 210, 230]),
            [],
        ),
        (
            "crossing there and back",
            StreamAnalytics(lines=(GATE,)),
            walk(200, [170, 185, 195, 210, 195, 185]),
            [(3, CROSSED, "gate", L2R), (4, CROSSED, "gate", R2L)],
        ),
        (
            "a line drawn the other way round",
            StreamAnalytics(lines=(Line("back", GATE.end, GATE.start),)),
            walk(200, [150, 170, 190, 210, 230]),
            [(3, CROSSED, "back", R2L)],
        ),
        (
            "entering and leaving a zone",
            StreamAnalytics(zones=(ROOM,)),
            walk(200, range(50, 351, 30)),
            [(2, ENTERED, "room"), (9, EXITED, "room")],
        ),
        (
            "leaving and entering again",
            StreamAnalytics(zones=(ROOM,)),
            walk(200, [250, 270, 290, 310, 320, 310, 290, 270]),
            [(1, ENTERED, "room"), (3, EXITED, "room"), (6, ENTERED, "room")],
        ),
        (
            "a class filter that admits the object",
            StreamAnalytics(
                zones=(Zone("cars", ROOM.polygon, classes=ClassFilter(class_names=frozenset({"car"}))),)
            ),
            walk(200, [70, 90, 110, 130, 150], "car"),
            [(2, ENTERED, "cars")],
        ),
        (
            "a class filter that does not",
            StreamAnalytics(
                zones=(Zone("cars", ROOM.polygon, classes=ClassFilter(class_ids=frozenset({2}))),)
            ),
            walk(200, [60, 80, 100, 120, 140], "person"),
            [],
        ),
        (
            "a line for cars only",
            StreamAnalytics(
                lines=(
                    Line("gate", GATE.start, GATE.end, classes=ClassFilter(class_names=frozenset({"car"}))),
                )
            ),
            walk(200, [150, 170, 190, 210, 230], "person"),
            [],
        ),
        (
            "zones before lines, in declared order",
            StreamAnalytics(zones=(ROOM,), lines=(GATE,)),
            walk(200, [150, 170, 190, 210, 230]),
            [(1, ENTERED, "room"), (3, CROSSED, "gate", L2R)],
        ),
        (
            "two objects, one frame apart",
            StreamAnalytics(lines=(GATE,)),
            [[Thing(50, y), Thing(350, y + 10)] for y in (150, 165, 180, 195, 210)],
            [(3, CROSSED, "gate", L2R), (4, CROSSED, "gate", L2R)],
        ),
    ],
)
def test_events(
    case: str, spec: StreamAnalytics, frames: list[list[Thing]], expected: list[tuple[object, ...]]
) -> None:
    assert events_of(run(spec, frames)) == expected, case


def test_events_of_one_frame_are_ordered_by_track_id() -> None:
    # Both cross on frame 3; from frame 2 on, the detector lists the second object first.
    frames = [[Thing(50, y), Thing(350, y)] for y in (150, 170)]
    frames += [[Thing(350, y), Thing(50, y)] for y in (190, 210, 230)]
    events = [e for a in run(StreamAnalytics(lines=(GATE,)), frames) for e in a.events]
    assert [(e.sequence_number, e.track_id, e.box.x_min) for e in events] == [(3, 1, 30.0), (3, 2, 330.0)]


@pytest.mark.parametrize(
    ("case", "zone_sources", "line_sources", "frame_source", "watched"),
    [
        ("every source", frozenset(), frozenset(), 1, True),
        ("the frame's source", frozenset({1}), frozenset({0, 1}), 1, True),
        ("another source", frozenset({0}), frozenset({0}), 1, False),
    ],
)
def test_source_filters(
    case: str, zone_sources: frozenset[int], line_sources: frozenset[int], frame_source: int, watched: bool
) -> None:
    spec = StreamAnalytics(
        zones=(Zone("room", ROOM.polygon, source_indexes=zone_sources),),
        lines=(Line("gate", GATE.start, GATE.end, source_indexes=line_sources),),
    )
    results = run(spec, walk(200, [150, 170, 190, 210, 230]), source_index=frame_source)
    assert [(z.name, z.source_index) for z in results[-1].zones] == ([("room", 1)] if watched else []), case
    assert [(ln.name, ln.source_index) for ln in results[-1].lines] == ([("gate", 1)] if watched else [])
    assert len(events_of(results)) == (2 if watched else 0)


def test_zone_state_counts_occupants_and_dwell() -> None:
    results = run(StreamAnalytics(zones=(ROOM,)), walk(200, range(50, 381, 30)))  # inside: 110 to 290
    counts = [a.zones[0].count for a in results]
    assert counts == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    inside = results[4].zones[0]
    assert [(o.track_id, o.dwell_ms) for o in inside.occupants] == [(1, 2 * FRAME_MS)]
    exited = [e for a in results for e in a.events if e.kind is EXITED]
    assert [(e.track_id, e.dwell_ms) for e in exited] == [(1, 7 * FRAME_MS)]  # entered on frame 2, out on 9
    assert (results[-1].zones[0].entered_total, results[-1].zones[0].exited_total) == (1, 1)


def test_a_track_lost_inside_a_zone_exits_once_when_retired() -> None:
    spec = StreamAnalytics(tracking=Tracking(lost_track_frames=3), zones=(ROOM,))
    frames = walk(200, [150, 160, 170, 180]) + [[] for _ in range(10)]
    results = run(spec, frames)
    events = [e for a in results for e in a.events]
    assert [e.kind for e in events] == [ENTERED, EXITED]
    entered, exited = events
    assert 4 <= exited.sequence_number <= 3 + 3 + 1  # retired within lost_track_frames of its last frame
    assert exited.dwell_ms == 2 * FRAME_MS  # from entering (frame 1) to last seen (frame 3)
    assert exited.track_id == entered.track_id == 1
    # While lost but not yet retired, it still counts as inside.
    assert results[4].zones[0].count == 1
    assert results[-1].zones[0].count == 0


def test_track_ids_fill_the_prediction_from_the_second_frame() -> None:
    analyzer = StreamAnalyzer(StreamAnalytics(tracking=Tracking(enabled=True)))
    ids = []
    for number, y in enumerate([100, 110, 120, 130]):
        tracked, analytics = analyzer.analyze(0, number, number * FRAME_MS, 0.0, prediction([Thing(200, y)]))
        ids.append([d.track_id for d in tracked.detections])
        assert analytics == FrameAnalytics()  # tracking only: no zones, lines or events
    assert ids == [[0], [1], [1], [1]]


def test_sources_are_tracked_apart() -> None:
    analyzer = StreamAnalyzer(StreamAnalytics(tracking=Tracking(enabled=True)))
    ids: dict[int, list[int]] = {0: [], 1: []}
    for number, y in enumerate([100, 110, 120]):
        for source in (0, 1):
            tracked, _ = analyzer.analyze(source, number, number * FRAME_MS, 0.0, prediction([Thing(200, y)]))
            ids[source] += [d.track_id for d in tracked.detections]
    assert ids == {0: [0, 1, 1], 1: [0, 1, 1]}  # same boxes, separate trackers: ids count per source
