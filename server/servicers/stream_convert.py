"""Protobuf <-> domain conversion for StreamPredictions (kept apart from convert.py to keep both small)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from visionrpc.v1 import inference_pb2

from ..errors import InvalidArgumentError
from ..models.repository import ModelId
from ..streams.types import (
    Delivery,
    FrameImage,
    FramePolicy,
    FrameResult,
    ResumeGap,
    ResumeOutcome,
    ResumePoint,
    SourceEventKind,
    StreamOptions,
    StreamStatus,
)
from .convert import prediction_to_proto

__all__ = [
    "ResponseCache",
    "delivery_from_proto",
    "resume_point_from_proto",
    "resumed_status_to_proto",
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
_MAX_RESUME_SOURCES = 64


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
    return StreamOptions(
        max_fps=max_fps, frame_policy=policy, frame_image=image, jpeg_quality=options.jpeg_quality or 80
    )


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
        capture = timestamp_pb2.Timestamp()
        capture.FromNanoseconds(int(message.capture_time * 1e9))
        response.frame.CopyFrom(
            inference_pb2.FramePrediction(
                source_index=message.source_index,
                sequence_number=message.sequence_number,
                source_timestamp_ms=message.timestamp_ms,
                capture_time=capture,
                prediction=prediction_to_proto(message.prediction),
                drops=inference_pb2.DropCounters(
                    frames_skipped=message.frames_skipped, results_dropped=message.results_dropped
                ),
                frame_jpeg=message.frame_jpeg,
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


class ResponseCache:
    """Each stream message converted once, however many subscribers send it (a shared pipeline's hundreds of
    viewers would otherwise convert every frame hundreds of times). Keyed by (stream id, cursor), which names
    one message of one stream; bounded, newest kept. Used from the event loop only: no lock."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._responses: OrderedDict[tuple[str, int], inference_pb2.StreamPredictionsResponse] = OrderedDict()

    def response(
        self, message: FrameResult | StreamStatus, stream_id: str, model: ModelId
    ) -> inference_pb2.StreamPredictionsResponse:
        # Results a subscriber lost are counted per subscriber: such a message is its own.
        if message.cursor == 0 or (isinstance(message, FrameResult) and message.results_dropped):
            return stream_message_to_proto(message, stream_id, model)
        key = (stream_id, message.cursor)
        response = self._responses.get(key)
        if response is None:
            response = self._responses[key] = stream_message_to_proto(message, stream_id, model)
            if len(self._responses) > self._size:
                self._responses.popitem(last=False)
        return response
