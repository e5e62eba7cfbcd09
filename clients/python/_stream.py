"""Subscribing to server-side video pipelines: `Client.stream(...)` returns a `PredictionStream`.

Example:
    with Client() as client, client.stream(["clips/bikes.mp4"], max_fps=10) as stream:
        for event in stream:
            if isinstance(event, StreamFrame):
                print(event.sequence_number, [d.class_name for d in event.prediction.detections])

Leaving the `with` block (or calling `cancel()`) cancels the RPC; the server frees the subscription at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from visionrpc.v1 import inference_pb2

from ._convert import image_prediction_from_proto
from ._exceptions import CancelledError, map_rpc_errors
from ._types import ImagePrediction

__all__ = [
    "PredictionStream",
    "SourceInfo",
    "StreamEvent",
    "StreamFrame",
    "StreamStatus",
    "build_stream_request",
]


class StreamEvent(enum.Enum):
    STARTED = "started"
    RECONNECTING = "reconnecting"
    RECONNECTED = "reconnected"
    SOURCE_ENDED = "source_ended"
    ERROR = "error"


_EVENTS = {
    inference_pb2.STREAM_EVENT_STARTED: StreamEvent.STARTED,
    inference_pb2.STREAM_EVENT_RECONNECTING: StreamEvent.RECONNECTING,
    inference_pb2.STREAM_EVENT_RECONNECTED: StreamEvent.RECONNECTED,
    inference_pb2.STREAM_EVENT_SOURCE_ENDED: StreamEvent.SOURCE_ENDED,
    inference_pb2.STREAM_EVENT_ERROR: StreamEvent.ERROR,
}


@dataclass(frozen=True, slots=True)
class SourceInfo:
    source_index: int
    width: int
    height: int
    fps: float
    frame_count: int  # 0 when unknown (live sources)


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """The predictions for one processed frame."""

    stream_id: str
    source_index: int
    sequence_number: int  # position of the frame in its source, skipped frames counted
    source_timestamp_ms: float
    capture_time: float  # seconds since the epoch
    prediction: ImagePrediction
    frames_skipped: int  # cumulative: frames the pipeline skipped on this source to stay live
    results_dropped: int  # cumulative: results this subscriber lost by falling behind
    frame_jpeg: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class StreamStatus:
    stream_id: str
    event: StreamEvent
    source_index: int
    sources: tuple[SourceInfo, ...] = ()
    attempt: int = 0
    reason: str = ""


_FRAME_POLICIES = {
    None: inference_pb2.FRAME_POLICY_UNSPECIFIED,
    "every_frame": inference_pb2.FRAME_POLICY_EVERY_FRAME,
    "newest_frame": inference_pb2.FRAME_POLICY_NEWEST_FRAME,
}
_FRAME_IMAGES = {
    None: inference_pb2.FRAME_IMAGE_UNSPECIFIED,
    "raw": inference_pb2.FRAME_IMAGE_RAW,
    "annotated": inference_pb2.FRAME_IMAGE_ANNOTATED,
}


def _source(source: str | int) -> inference_pb2.VideoSource:
    if isinstance(source, int):
        return inference_pb2.VideoSource(device=source)
    if "://" in source:
        return inference_pb2.VideoSource(url=source)
    return inference_pb2.VideoSource(path=source)


def build_stream_request(
    sources: Iterable[str | int],
    *,
    model: str | None,
    stream_id: str | None,
    options: Any,
    max_fps: float | None,
    frame_policy: Literal["every_frame", "newest_frame"] | None,
    every_frame_delivery: bool,
    frame_image: Literal["raw", "annotated"] | None,
    jpeg_quality: int | None,
) -> inference_pb2.StreamPredictionsRequest:
    stream_options = inference_pb2.StreamOptions(
        frame_policy=_FRAME_POLICIES[frame_policy],
        delivery=inference_pb2.DELIVERY_EVERY_FRAME if every_frame_delivery else inference_pb2.DELIVERY_LOSSY,
        frame_image=_FRAME_IMAGES[frame_image],
        jpeg_quality=jpeg_quality or 0,
    )
    if max_fps is not None:
        stream_options.max_fps = max_fps
    return inference_pb2.StreamPredictionsRequest(
        stream_id=stream_id or "",
        model_id=model or "",
        sources=[_source(s) for s in sources],
        options=options,
        stream_options=stream_options,
    )


def stream_message_from_proto(message: inference_pb2.StreamPredictionsResponse) -> StreamFrame | StreamStatus:
    if message.WhichOneof("payload") == "frame":
        frame = message.frame
        return StreamFrame(
            stream_id=message.stream_id,
            source_index=frame.source_index,
            sequence_number=frame.sequence_number,
            source_timestamp_ms=frame.source_timestamp_ms,
            capture_time=frame.capture_time.ToNanoseconds() / 1e9,
            prediction=image_prediction_from_proto(frame.prediction),
            frames_skipped=frame.drops.frames_skipped,
            results_dropped=frame.drops.results_dropped,
            frame_jpeg=frame.frame_jpeg,
        )
    status = message.status
    return StreamStatus(
        stream_id=message.stream_id,
        event=_EVENTS.get(status.event, StreamEvent.ERROR),
        source_index=status.source_index,
        sources=tuple(
            SourceInfo(s.source_index, s.width, s.height, s.fps, s.frame_count) for s in status.sources
        ),
        attempt=status.attempt,
        reason=status.reason,
    )


class PredictionStream:
    """An iterator over a subscription's frames and status events; ends when the server ends the stream.

    Errors surface from iteration as `VisionRpcError` subclasses. A cancelled stream simply stops iterating.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[StreamFrame | StreamStatus]:
        for message in self.messages():
            yield stream_message_from_proto(message)

    def messages(self) -> Iterator[inference_pb2.StreamPredictionsResponse]:
        """The raw StreamPredictionsResponse messages (for JSON output or forwarding)."""
        try:
            with map_rpc_errors():
                yield from self._call
        except CancelledError:
            if self._cancelled:  # our own cancel() is a normal end, not an error
                return
            raise

    def cancel(self) -> None:
        """Cancels the subscription; the server frees it at once. Safe from any thread."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> PredictionStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    @property
    def done(self) -> bool:
        return bool(self._call.done())

    def code(self) -> grpc.StatusCode | None:
        code: grpc.StatusCode | None = self._call.code() if self._call.done() else None
        return code
