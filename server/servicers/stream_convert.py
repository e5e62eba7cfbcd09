"""Protobuf <-> domain conversion for StreamPredictions (kept apart from convert.py to keep both small)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

from google.protobuf import timestamp_pb2
from visionrpc.v1 import analytics_pb2, inference_pb2, types_pb2

from ..analytics.types import (
    AnalyticsEvent,
    AnalyticsEventKind,
    Anchor,
    ClassFilter,
    CrossingDirection,
    FrameAnalytics,
    Line,
    Point,
    StreamAnalytics,
    Tracking,
    Zone,
)
from ..analytics.validation import MAX_CLASS_FILTER, MAX_REGIONS, MAX_VERTICES, validate_analytics
from ..errors import InvalidArgumentError
from ..models.repository import ModelId
from ..streams.types import (
    Delivery,
    FaceRedaction,
    FrameImage,
    FramePolicy,
    FrameResult,
    ResumeGap,
    ResumeOutcome,
    ResumePoint,
    SourceEventKind,
    StreamContent,
    StreamOptions,
    StreamStatus,
)
from .convert import prediction_to_proto

__all__ = [
    "ResponseCache",
    "analytics_event_to_proto",
    "content_from_proto",
    "delivery_from_proto",
    "frame_analytics_to_proto",
    "frame_events_to_proto",
    "resume_point_from_proto",
    "resumed_status_to_proto",
    "stream_analytics_from_proto",
    "stream_message_to_proto",
    "stream_options_from_proto",
]

_FRAME_POLICIES = {
    inference_pb2.FRAME_POLICY_UNSPECIFIED: FramePolicy.AUTO,
    inference_pb2.FRAME_POLICY_EVERY_FRAME: FramePolicy.EVERY_FRAME,
    inference_pb2.FRAME_POLICY_NEWEST_FRAME: FramePolicy.NEWEST_FRAME,
}
_DELIVERIES = {
    inference_pb2.DELIVERY_UNSPECIFIED: Delivery.LOSSY,
    inference_pb2.DELIVERY_LOSSY: Delivery.LOSSY,
    inference_pb2.DELIVERY_EVERY_FRAME: Delivery.EVERY_FRAME,
}
_FRAME_IMAGES = {
    inference_pb2.FRAME_IMAGE_UNSPECIFIED: FrameImage.NONE,
    inference_pb2.FRAME_IMAGE_NONE: FrameImage.NONE,
    inference_pb2.FRAME_IMAGE_RAW: FrameImage.RAW,
    inference_pb2.FRAME_IMAGE_ANNOTATED: FrameImage.ANNOTATED,
}
_EVENTS = {
    SourceEventKind.STARTED: inference_pb2.STREAM_EVENT_STARTED,
    SourceEventKind.RECONNECTING: inference_pb2.STREAM_EVENT_RECONNECTING,
    SourceEventKind.RECONNECTED: inference_pb2.STREAM_EVENT_RECONNECTED,
    SourceEventKind.ENDED: inference_pb2.STREAM_EVENT_SOURCE_ENDED,
    SourceEventKind.ERROR: inference_pb2.STREAM_EVENT_ERROR,
}
_OUTCOMES = {
    ResumeOutcome.REPLAYED: inference_pb2.RESUME_OUTCOME_REPLAYED,
    ResumeOutcome.PARTIAL: inference_pb2.RESUME_OUTCOME_PARTIAL,
    ResumeOutcome.RESTARTED: inference_pb2.RESUME_OUTCOME_RESTARTED,
}
_FACE_REDACTIONS = {
    inference_pb2.FACE_REDACTION_UNSPECIFIED: FaceRedaction.NONE,
    inference_pb2.FACE_REDACTION_NONE: FaceRedaction.NONE,
    inference_pb2.FACE_REDACTION_BLUR: FaceRedaction.BLUR,
    inference_pb2.FACE_REDACTION_PIXELATE: FaceRedaction.PIXELATE,
}
_CONTENTS = {
    inference_pb2.STREAM_CONTENT_UNSPECIFIED: StreamContent.FRAMES,
    inference_pb2.STREAM_CONTENT_FRAMES: StreamContent.FRAMES,
    inference_pb2.STREAM_CONTENT_EVENTS: StreamContent.EVENTS,
}
_ANCHORS = {
    analytics_pb2.ANCHOR_UNSPECIFIED: Anchor.BOTTOM_CENTER,
    analytics_pb2.ANCHOR_BOTTOM_CENTER: Anchor.BOTTOM_CENTER,
    analytics_pb2.ANCHOR_CENTER: Anchor.CENTER,
    analytics_pb2.ANCHOR_TOP_CENTER: Anchor.TOP_CENTER,
}
_EVENT_KINDS = {
    AnalyticsEventKind.ZONE_ENTERED: analytics_pb2.ANALYTICS_EVENT_KIND_ZONE_ENTERED,
    AnalyticsEventKind.ZONE_EXITED: analytics_pb2.ANALYTICS_EVENT_KIND_ZONE_EXITED,
    AnalyticsEventKind.LINE_CROSSED: analytics_pb2.ANALYTICS_EVENT_KIND_LINE_CROSSED,
}
_DIRECTIONS = {
    None: analytics_pb2.CROSSING_DIRECTION_UNSPECIFIED,
    CrossingDirection.LEFT_TO_RIGHT: analytics_pb2.CROSSING_DIRECTION_LEFT_TO_RIGHT,
    CrossingDirection.RIGHT_TO_LEFT: analytics_pb2.CROSSING_DIRECTION_RIGHT_TO_LEFT,
}
_MAX_RESUME_SOURCES = 64
_MAX_LOST_TRACK_FRAMES = 100_000  # about an hour at 30 fps: longer is a mistake, and memory held for nothing


_Value = TypeVar("_Value")


def _enum(table: Mapping[Any, _Value], value: int, field: str, enum_name: str) -> _Value:
    if value not in table:
        raise InvalidArgumentError.for_field(
            field, f"expected a known {enum_name} value, got {value}", reason="INVALID_OPTION"
        )
    return table[value]


def stream_options_from_proto(options: inference_pb2.StreamOptions) -> StreamOptions:
    field = "stream_options"
    max_fps: float | None = None
    if options.HasField("max_fps") and options.max_fps != 0:
        if math.isnan(options.max_fps) or options.max_fps < 0:
            raise InvalidArgumentError.for_field(
                f"{field}.max_fps", f"expected a positive rate or 0 (no cap), got {options.max_fps}",
                reason="INVALID_OPTION",
            )  # fmt: skip
        max_fps = options.max_fps
    if options.jpeg_quality > 100:
        raise InvalidArgumentError.for_field(
            f"{field}.jpeg_quality", f"expected 1-100 or 0 (default), got {options.jpeg_quality}",
            reason="INVALID_OPTION",
        )  # fmt: skip
    policy = _enum(_FRAME_POLICIES, options.frame_policy, f"{field}.frame_policy", "FramePolicy")
    image = _enum(_FRAME_IMAGES, options.frame_image, f"{field}.frame_image", "FrameImage")
    redaction = _enum(_FACE_REDACTIONS, options.face_redaction, f"{field}.face_redaction", "FaceRedaction")
    return StreamOptions(
        max_fps=max_fps,
        frame_policy=policy,
        frame_image=image,
        jpeg_quality=options.jpeg_quality or 80,
        analytics=stream_analytics_from_proto(options.analytics, f"{field}.analytics"),
        face_redaction=redaction,
    )


def content_from_proto(request: inference_pb2.StreamPredictionsRequest) -> StreamContent:
    return _enum(_CONTENTS, request.content, "content", "StreamContent")


def stream_analytics_from_proto(msg: analytics_pb2.StreamAnalytics, field: str) -> StreamAnalytics:
    """The analytics a request declares, checked for everything but the model's class names (which
    validate_analytics checks where the model is known). Errors name fields under `field`."""
    # Sizes are checked before anything is built: a request with a million zones costs only this check.
    if len(msg.zones) + len(msg.lines) > MAX_REGIONS:
        _invalid(
            field,
            f"expected at most {MAX_REGIONS} zones and lines together, got {len(msg.zones) + len(msg.lines)}",
        )
    for index, zone in enumerate(msg.zones):
        if len(zone.polygon) > MAX_VERTICES:
            _invalid(
                f"{field}.zones[{index}].polygon",
                f"expected 3 to {MAX_VERTICES} vertices, got {len(zone.polygon)}",
            )
        _check_filter_size(zone.classes, f"{field}.zones[{index}].classes")
    for index, line in enumerate(msg.lines):
        _check_filter_size(line.classes, f"{field}.lines[{index}].classes")
    spec = StreamAnalytics(
        tracking=_tracking_from_proto(msg.tracking, f"{field}.tracking"),
        zones=tuple(
            Zone(
                name=zone.name,
                polygon=tuple(Point(p.x, p.y) for p in zone.polygon),
                source_indexes=frozenset(zone.source_indexes),
                classes=_classes_from_proto(zone.classes),
                anchor=_enum(_ANCHORS, zone.anchor, f"{field}.zones[{index}].anchor", "Anchor"),
            )
            for index, zone in enumerate(msg.zones)
        ),
        lines=tuple(
            Line(
                name=line.name,
                start=Point(line.start.x, line.start.y),
                end=Point(line.end.x, line.end.y),
                source_indexes=frozenset(line.source_indexes),
                classes=_classes_from_proto(line.classes),
                anchor=_enum(_ANCHORS, line.anchor, f"{field}.lines[{index}].anchor", "Anchor"),
            )
            for index, line in enumerate(msg.lines)
        ),
    )
    validate_analytics(spec, (), field)
    return spec


def _tracking_from_proto(msg: analytics_pb2.Tracking, field: str) -> Tracking:
    defaults = Tracking()
    values: dict[str, float] = {}
    for name in ("activation_threshold", "minimum_iou"):
        if msg.HasField(name):
            value = getattr(msg, name)
            if not 0.0 <= value <= 1.0:  # NaN fails this too
                _invalid(f"{field}.{name}", f"expected a value in [0, 1], got {value}")
            values[name] = value
    lost = defaults.lost_track_frames
    if msg.HasField("lost_track_frames"):
        lost = msg.lost_track_frames
        if not 1 <= lost <= _MAX_LOST_TRACK_FRAMES:
            _invalid(f"{field}.lost_track_frames", f"expected 1 to {_MAX_LOST_TRACK_FRAMES}, got {lost}")
    return Tracking(
        enabled=msg.enabled,
        activation_threshold=values.get("activation_threshold", defaults.activation_threshold),
        lost_track_frames=lost,
        minimum_iou=values.get("minimum_iou", defaults.minimum_iou),
    )


def _check_filter_size(msg: analytics_pb2.ClassFilter, field: str) -> None:
    size = len(msg.class_ids) + len(msg.class_names)
    if size > MAX_CLASS_FILTER:
        _invalid(field, f"expected at most {MAX_CLASS_FILTER} class ids and names, got {size}")


def _classes_from_proto(msg: analytics_pb2.ClassFilter) -> ClassFilter:
    return ClassFilter(class_ids=frozenset(msg.class_ids), class_names=frozenset(msg.class_names))


def _invalid(field: str, message: str) -> NoReturn:
    raise InvalidArgumentError.for_field(field, message, reason="INVALID_ANALYTICS")


def frame_analytics_to_proto(a: FrameAnalytics) -> analytics_pb2.FrameAnalytics:
    return analytics_pb2.FrameAnalytics(
        zones=[
            analytics_pb2.ZoneState(
                name=zone.name,
                source_index=zone.source_index,
                count=zone.count,
                occupants=[
                    analytics_pb2.ZoneOccupant(track_id=o.track_id, class_id=o.class_id, dwell_ms=o.dwell_ms)
                    for o in zone.occupants
                ],
                entered_total=zone.entered_total,
                exited_total=zone.exited_total,
            )
            for zone in a.zones
        ],
        lines=[
            analytics_pb2.LineState(
                name=line.name,
                source_index=line.source_index,
                left_to_right=line.left_to_right,
                right_to_left=line.right_to_left,
            )
            for line in a.lines
        ],
        events=[analytics_event_to_proto(event) for event in a.events],
    )


def analytics_event_to_proto(event: AnalyticsEvent) -> analytics_pb2.AnalyticsEvent:
    box = event.box
    return analytics_pb2.AnalyticsEvent(
        kind=_EVENT_KINDS[event.kind],
        name=event.name,
        source_index=event.source_index,
        sequence_number=event.sequence_number,
        source_timestamp_ms=event.source_timestamp_ms,
        capture_time=_timestamp(event.capture_time),
        track_id=event.track_id,
        class_id=event.class_id,
        class_name=event.class_name,
        box=types_pb2.BoundingBox(x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max),
        direction=_DIRECTIONS[event.direction],
        dwell_ms=event.dwell_ms,
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def delivery_from_proto(options: inference_pb2.StreamOptions) -> Delivery:
    return _enum(_DELIVERIES, options.delivery, "stream_options.delivery", "Delivery")


def resume_point_from_proto(request: inference_pb2.StreamPredictionsRequest) -> ResumePoint | None:
    """The request's resume point, or None when it is not a resume."""
    if not request.HasField("resume"):
        return None
    resume = request.resume
    if not resume.stream_id:
        raise InvalidArgumentError.for_field(
            "resume.stream_id", "expected the id of the stream to resume", reason="INVALID_RESUME"
        )
    if len(resume.next_sequence_numbers) > _MAX_RESUME_SOURCES:
        raise InvalidArgumentError.for_field(
            "resume.next_sequence_numbers",
            f"expected at most one per source, got {len(resume.next_sequence_numbers)}",
            reason="INVALID_RESUME",
        )
    return ResumePoint(resume.stream_id, resume.after_cursor, tuple(resume.next_sequence_numbers))


def resumed_status_to_proto(
    gap: ResumeGap, stream_id: str, model: ModelId
) -> inference_pb2.StreamPredictionsResponse:
    """The RESUMED status a resumed subscription starts with (cursor 0: it is not one of the stream's)."""
    return inference_pb2.StreamPredictionsResponse(
        stream_id=stream_id,
        model_name=model.name,
        model_version=model.version or "",
        status=inference_pb2.StreamStatus(
            event=inference_pb2.STREAM_EVENT_RESUMED,
            resume=inference_pb2.ResumeGap(
                outcome=_OUTCOMES[gap.outcome],
                previous_stream_id=gap.previous_stream_id,
                messages_lost=gap.messages_lost,
            ),
        ),
    )


def stream_message_to_proto(
    message: FrameResult | StreamStatus, stream_id: str, model: ModelId
) -> inference_pb2.StreamPredictionsResponse:
    response = inference_pb2.StreamPredictionsResponse(
        stream_id=stream_id, model_name=model.name, model_version=model.version or "", cursor=message.cursor
    )
    if isinstance(message, FrameResult):
        response.frame.CopyFrom(
            inference_pb2.FramePrediction(
                source_index=message.source_index,
                sequence_number=message.sequence_number,
                source_timestamp_ms=message.timestamp_ms,
                capture_time=_timestamp(message.capture_time),
                prediction=prediction_to_proto(message.prediction),
                drops=inference_pb2.DropCounters(
                    frames_skipped=message.frames_skipped, results_dropped=message.results_dropped
                ),
                frame_jpeg=message.frame_jpeg,
                analytics=None if message.analytics is None else frame_analytics_to_proto(message.analytics),
            )
        )
    else:
        response.status.CopyFrom(
            inference_pb2.StreamStatus(
                event=_EVENTS[message.event],
                source_index=message.source_index,
                sources=[
                    inference_pb2.SourceInfo(
                        source_index=s.index,
                        width=s.width,
                        height=s.height,
                        fps=s.fps,
                        frame_count=s.frame_count,
                    )
                    for s in message.sources
                ],
                attempt=message.attempt,
                reason=message.reason,
            )
        )
    return response


def frame_events_to_proto(
    message: FrameResult, stream_id: str, model: ModelId
) -> inference_pb2.StreamPredictionsResponse | None:
    """A frame as an events-only subscriber sees it (StreamContent EVENTS): its analytics events under the
    frame's cursor, or None when it caused none."""
    if message.analytics is None or not message.analytics.events:
        return None
    return inference_pb2.StreamPredictionsResponse(
        stream_id=stream_id,
        model_name=model.name,
        model_version=model.version or "",
        cursor=message.cursor,
        events=analytics_pb2.AnalyticsEvents(
            events=[analytics_event_to_proto(event) for event in message.analytics.events]
        ),
    )


class ResponseCache:
    """Each stream message converted once, however many subscribers send it (a shared pipeline's hundreds of
    viewers would otherwise convert every frame hundreds of times). Keyed by (stream id, cursor, content),
    which names one message of one stream as one kind of subscriber sees it; bounded, newest kept. Used from
    the event loop only: no lock."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._responses: OrderedDict[
            tuple[str, int, StreamContent], inference_pb2.StreamPredictionsResponse | None
        ] = OrderedDict()

    def response(
        self, message: FrameResult | StreamStatus, stream_id: str, model: ModelId
    ) -> inference_pb2.StreamPredictionsResponse:
        # Results a subscriber lost are counted per subscriber: such a message is its own.
        if message.cursor == 0 or (isinstance(message, FrameResult) and message.results_dropped):
            return stream_message_to_proto(message, stream_id, model)
        response = self._cached(stream_id, message.cursor, StreamContent.FRAMES)
        if response is None:
            response = stream_message_to_proto(message, stream_id, model)
            self._keep(stream_id, message.cursor, StreamContent.FRAMES, response)
        return response

    def content_response(
        self, message: FrameResult | StreamStatus, stream_id: str, model: ModelId, content: StreamContent
    ) -> inference_pb2.StreamPredictionsResponse | None:
        """What a subscriber of `content` receives for `message`; None: nothing (an events-only subscriber
        and a frame without events). Status messages go to every subscriber."""
        if content is StreamContent.FRAMES or not isinstance(message, FrameResult):
            return self.response(message, stream_id, model)
        key = (stream_id, message.cursor, content)
        if key in self._responses:
            return self._responses[key]
        response = frame_events_to_proto(message, stream_id, model)
        if message.cursor:
            self._keep(stream_id, message.cursor, content, response)
        return response

    def _cached(
        self, stream_id: str, cursor: int, content: StreamContent
    ) -> inference_pb2.StreamPredictionsResponse | None:
        return self._responses.get((stream_id, cursor, content))

    def _keep(
        self,
        stream_id: str,
        cursor: int,
        content: StreamContent,
        response: inference_pb2.StreamPredictionsResponse | None,
    ) -> None:
        self._responses[(stream_id, cursor, content)] = response
        if len(self._responses) > self._size:
            self._responses.popitem(last=False)
