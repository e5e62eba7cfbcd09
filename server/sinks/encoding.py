"""The JSON the text sinks (webhook, MQTT, JSON lines) send: one object per message, the same for all three.
docs/sinks.md shows an example of each type.

    {"type": "frame", "pipeline": "gate", "source_index": 0, "sequence_number": 57, "timestamp_ms": 2280.0,
     "capture_time": 1765058400.123, "cursor": 58,
     "events": [{"kind": "line_crossed", "name": "gate", "track_id": 3, "class_id": 0, "class_name": "person",
                 "box": [10.5, 20.0, 60.2, 140.0], "direction": "left_to_right"}],
     "zones": [...], "lines": [{"name": "gate", "source_index": 0, "left_to_right": 4, "right_to_left": 1}]}
    {"type": "status", "pipeline": "gate", "event": "started", "source_index": 0, ...}
    {"type": "end", "pipeline": "gate", "error": ""}

With Content.FRAMES every frame is sent, with its "detections" too; with Content.EVENTS only frames that
caused events are. Keys are stable and snake_case, enum values lower-case (the domain's values).
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..analytics.types import AnalyticsEvent, FrameAnalytics, LineState, ZoneState
from ..domain import BoundingBox, Detection
from ..streams.types import FrameResult, SourceInfo, StreamEnd, StreamMessage, StreamStatus
from .config import Content

__all__ = ["encode_message"]


def encode_message(
    pipeline: str, message: StreamMessage, *, content: Content, include_status: bool = True
) -> bytes | None:
    """The UTF-8 JSON of one message, or None when this content does not send it.

    Args:
        pipeline: the declared pipeline's name, carried in every object.
        message: what the pipeline published.
        content: EVENTS sends only frames with analytics events; FRAMES sends every frame with detections.
        include_status: whether status messages (started, reconnecting, ended, error) and the end are sent.
    """
    payload: dict[str, Any] | None
    if isinstance(message, FrameResult):
        payload = _frame(pipeline, message, content)
    elif not include_status:
        payload = None
    elif isinstance(message, StreamStatus):
        payload = _status(pipeline, message)
    else:
        payload = _end(pipeline, message)
    if payload is None:
        return None
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _frame(pipeline: str, frame: FrameResult, content: Content) -> dict[str, Any] | None:
    analytics = frame.analytics or FrameAnalytics()
    if content is Content.EVENTS and not analytics.events:
        return None
    payload: dict[str, Any] = {
        "type": "frame",
        "pipeline": pipeline,
        "source_index": frame.source_index,
        "sequence_number": frame.sequence_number,
        "timestamp_ms": round(frame.timestamp_ms, 3),
        "capture_time": round(frame.capture_time, 3),
        "cursor": frame.cursor,
        "events": [_event(event) for event in analytics.events],
        "zones": [_zone(zone) for zone in analytics.zones],
        "lines": [_line(line) for line in analytics.lines],
    }
    if content is Content.FRAMES:
        payload["detections"] = [_detection(d) for d in frame.prediction.detections]
    return payload


def _box(box: BoundingBox) -> list[float]:
    return [round(v, 2) for v in box.as_tuple()]


def _event(event: AnalyticsEvent) -> dict[str, Any]:
    # The frame's position (source, sequence number, times) is the enclosing object's, not repeated here.
    out: dict[str, Any] = {
        "kind": event.kind.value,
        "name": event.name,
        "track_id": event.track_id,
        "class_id": event.class_id,
        "class_name": event.class_name,
        "box": _box(event.box),
    }
    if event.direction is not None:
        out["direction"] = event.direction.value
    if event.dwell_ms:
        out["dwell_ms"] = round(event.dwell_ms, 3)
    return out


def _zone(zone: ZoneState) -> dict[str, Any]:
    return {
        "name": zone.name,
        "source_index": zone.source_index,
        "count": zone.count,
        "entered_total": zone.entered_total,
        "exited_total": zone.exited_total,
        "occupants": [
            {"track_id": o.track_id, "class_id": o.class_id, "dwell_ms": round(o.dwell_ms, 3)}
            for o in zone.occupants
        ],
    }


def _line(line: LineState) -> dict[str, Any]:
    return {
        "name": line.name,
        "source_index": line.source_index,
        "left_to_right": line.left_to_right,
        "right_to_left": line.right_to_left,
    }


def _detection(detection: Detection) -> dict[str, Any]:
    return {
        "box": _box(detection.box),
        "class_id": detection.class_id,
        "class_name": detection.class_name,
        "confidence": round(detection.confidence, 4),
        "track_id": detection.track_id,
    }


def _source(info: SourceInfo) -> dict[str, Any]:
    return {
        "index": info.index,
        "width": info.width,
        "height": info.height,
        "fps": round(info.fps, 3) if math.isfinite(info.fps) else 0.0,  # JSON has no NaN
        "frame_count": info.frame_count,
    }


def _status(pipeline: str, status: StreamStatus) -> dict[str, Any]:
    return {
        "type": "status",
        "pipeline": pipeline,
        "event": status.event.value,
        "source_index": status.source_index,
        "sources": [_source(info) for info in status.sources],
        "attempt": status.attempt,
        "reason": status.reason,
        "cursor": status.cursor,
    }


def _end(pipeline: str, end: StreamEnd) -> dict[str, Any]:
    return {"type": "end", "pipeline": pipeline, "error": end.error}
