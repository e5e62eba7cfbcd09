"""encode_message: the one JSON shape of the webhook, MQTT and JSON lines sinks."""

from __future__ import annotations

import json

import pytest
from visionrpc.server.analytics.types import AnalyticsEvent, AnalyticsEventKind
from visionrpc.server.sinks import Content
from visionrpc.server.sinks.encoding import encode_message
from visionrpc.server.streams.types import FrameResult, StreamEnd, StreamMessage, StreamStatus


def decoded(
    message: StreamMessage, content: Content, include_status: bool = True
) -> dict[str, object] | None:
    data = encode_message("gate", message, content=content, include_status=include_status)
    return None if data is None else json.loads(data)


def events_of(frame: FrameResult) -> tuple[AnalyticsEvent, ...]:
    return frame.analytics.events if frame.analytics else ()


def frames(messages: tuple[StreamMessage, ...], *, with_events: bool) -> list[FrameResult]:
    return [
        m
        for m in messages
        if isinstance(m, FrameResult) and m.analytics and bool(m.analytics.events) == with_events
    ]


def test_a_frame_with_events_carries_them_in_order_with_its_position_and_states(
    messages: tuple[StreamMessage, ...],
) -> None:
    frame = next(f for f in frames(messages, with_events=True) if any(e.direction for e in events_of(f)))
    assert frame.analytics is not None
    payload = decoded(frame, Content.EVENTS)
    assert payload is not None
    assert {k: payload[k] for k in ("type", "pipeline", "source_index", "sequence_number", "cursor")} == {
        "type": "frame",
        "pipeline": "gate",
        "source_index": 0,
        "sequence_number": frame.sequence_number,
        "cursor": frame.cursor,
    }
    assert payload["timestamp_ms"] == pytest.approx(frame.timestamp_ms)
    assert payload["capture_time"] == pytest.approx(frame.capture_time, abs=1e-3)
    events = payload["events"]
    assert isinstance(events, list)
    expected = frame.analytics.events
    assert [(e["kind"], e["name"], e["track_id"]) for e in events] == [
        (e.kind.value, e.name, e.track_id) for e in expected
    ]
    index, crossing = next((i, e) for i, e in enumerate(events) if e["kind"] == "line_crossed")
    assert crossing["direction"] == expected[index].direction.value and "dwell_ms" not in crossing  # type: ignore[union-attr]
    assert crossing["box"] == pytest.approx(list(expected[index].box.as_tuple()), abs=0.01)
    assert payload["lines"] == [
        {
            "name": "gate",
            "source_index": 0,
            "left_to_right": frame.analytics.lines[0].left_to_right,
            "right_to_left": frame.analytics.lines[0].right_to_left,
        }
    ]
    zones = payload["zones"]
    assert isinstance(zones, list) and zones[0]["name"] == "yard"
    assert zones[0]["count"] == frame.analytics.zones[0].count
    assert "detections" not in payload


def test_every_frame_with_frames_content_and_its_detections(messages: tuple[StreamMessage, ...]) -> None:
    quiet = next(
        f for f in frames(messages, with_events=False) if any(d.track_id for d in f.prediction.detections)
    )
    assert decoded(quiet, Content.EVENTS) is None
    payload = decoded(quiet, Content.FRAMES)
    assert payload is not None and payload["events"] == []
    detections = payload["detections"]
    assert isinstance(detections, list)
    assert [(d["class_name"], d["track_id"]) for d in detections] == [
        (d.class_name, d.track_id) for d in quiet.prediction.detections
    ]


def test_an_exit_carries_its_dwell_time(messages: tuple[StreamMessage, ...]) -> None:
    frame = next(
        f
        for f in frames(messages, with_events=True)
        if any(e.kind is AnalyticsEventKind.ZONE_EXITED for e in events_of(f))
    )
    payload = decoded(frame, Content.EVENTS)
    assert payload is not None
    exits = [e for e in payload["events"] if e["kind"] == "zone_exited"]  # type: ignore[union-attr]
    assert exits and all(e["dwell_ms"] > 0 and "direction" not in e for e in exits)


@pytest.mark.parametrize("content", list(Content), ids=[c.value for c in Content])
def test_status_and_end_unless_left_out(messages: tuple[StreamMessage, ...], content: Content) -> None:
    started, ended = (m for m in messages if isinstance(m, StreamStatus))
    assert decoded(started, content) == {
        "type": "status",
        "pipeline": "gate",
        "event": "started",
        "source_index": 0,
        "sources": [{"index": 0, "width": 640, "height": 272, "fps": 25.0, "frame_count": 250}],
        "attempt": 0,
        "reason": "",
        "cursor": 1,
    }
    assert decoded(ended, content) is not None
    assert decoded(StreamEnd("boom"), content) == {"type": "end", "pipeline": "gate", "error": "boom"}
    for message in (started, ended, StreamEnd()):
        assert decoded(message, content, include_status=False) is None
