"""Subscribing to server-side video pipelines: `Client.stream(...)` returns a `PredictionStream`.

Example:
    with Client() as client, client.stream(["clips/bikes.mp4"], max_fps=10) as stream:
        for event in stream:
            if isinstance(event, StreamFrame):
                print(event.sequence_number, [d.class_name for d in event.prediction.detections])

Leaving the `with` block (or calling `cancel()`) cancels the RPC; the server frees the subscription at once.

A subscription whose call breaks (UNAVAILABLE: the connection was recycled, a proxy restarted, the server
drained) is resumed on a new call, by default: after a short backoff the same request is sent again with
"resume after the last cursor received", and the first event of the new call is a StreamStatus RESUMED whose
`resume` says whether anything was lost (docs/stream-resume.md).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from visionrpc.v1 import analytics_pb2, inference_pb2

from ._analytics import (
    Analytics,
    AnalyticsEvent,
    FrameAnalytics,
    analytics_event_from_proto,
    analytics_to_proto,
    frame_analytics_from_proto,
)
from ._convert import image_prediction_from_proto
from ._exceptions import CancelledError, UnavailableError, map_rpc_errors
from ._resume import Backoff, ResumePolicy, ResumeState
from ._types import ImagePrediction

__all__ = [
    "PredictionStream",
    "ResumeInfo",
    "SourceInfo",
    "StreamEvent",
    "StreamEvents",
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
    RESUMED = "resumed"


_EVENTS = {
    inference_pb2.STREAM_EVENT_STARTED: StreamEvent.STARTED,
    inference_pb2.STREAM_EVENT_RECONNECTING: StreamEvent.RECONNECTING,
    inference_pb2.STREAM_EVENT_RECONNECTED: StreamEvent.RECONNECTED,
    inference_pb2.STREAM_EVENT_SOURCE_ENDED: StreamEvent.SOURCE_ENDED,
    inference_pb2.STREAM_EVENT_ERROR: StreamEvent.ERROR,
    inference_pb2.STREAM_EVENT_RESUMED: StreamEvent.RESUMED,
}
_OUTCOMES = {
    inference_pb2.RESUME_OUTCOME_REPLAYED: "replayed",
    inference_pb2.RESUME_OUTCOME_PARTIAL: "partial",
    inference_pb2.RESUME_OUTCOME_RESTARTED: "restarted",
}


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    """How a broken subscription continued (the RESUMED status).

    outcome: "replayed" (nothing lost), "partial" (`messages_lost` messages lost) or "restarted" (the stream
    was started again, under a new stream id, on a server that did not know it: results in between are lost;
    files continue where they were).
    """

    outcome: str
    previous_stream_id: str
    messages_lost: int
    downtime_s: float  # from the break to the first message of the new call, measured here


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
    cursor: int = 0  # position of the message in its stream
    analytics: FrameAnalytics | None = None  # streams with analytics: zones and lines after it, its events


@dataclass(frozen=True, slots=True)
class StreamEvents:
    """The analytics events one frame caused (subscriptions with content="events")."""

    stream_id: str
    events: tuple[AnalyticsEvent, ...]
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class StreamStatus:
    stream_id: str
    event: StreamEvent
    source_index: int
    sources: tuple[SourceInfo, ...] = ()
    attempt: int = 0
    reason: str = ""
    cursor: int = 0
    resume: ResumeInfo | None = None  # RESUMED only


_FRAME_POLICIES = {
    None: inference_pb2.FRAME_POLICY_UNSPECIFIED,
    "every_frame": inference_pb2.FRAME_POLICY_EVERY_FRAME,
    "newest_frame": inference_pb2.FRAME_POLICY_NEWEST_FRAME,
}
_FACE_REDACTIONS = {
    None: inference_pb2.FACE_REDACTION_UNSPECIFIED,
    "blur": inference_pb2.FACE_REDACTION_BLUR,
    "pixelate": inference_pb2.FACE_REDACTION_PIXELATE,
}
_CONTENTS = {
    "frames": inference_pb2.STREAM_CONTENT_FRAMES,
    "events": inference_pb2.STREAM_CONTENT_EVENTS,
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
    pipeline: str | None = None,
    max_fps: float | None,
    frame_policy: Literal["every_frame", "newest_frame"] | None,
    every_frame_delivery: bool,
    frame_image: Literal["raw", "annotated"] | None,
    jpeg_quality: int | None,
    analytics: Analytics | analytics_pb2.StreamAnalytics | None = None,
    face_redaction: Literal["blur", "pixelate"] | None = None,
    content: Literal["frames", "events"] = "frames",
) -> inference_pb2.StreamPredictionsRequest:
    stream_options = inference_pb2.StreamOptions(
        frame_policy=_FRAME_POLICIES[frame_policy],
        delivery=inference_pb2.DELIVERY_EVERY_FRAME if every_frame_delivery else inference_pb2.DELIVERY_LOSSY,
        frame_image=_FRAME_IMAGES[frame_image],
        jpeg_quality=jpeg_quality or 0,
        face_redaction=_FACE_REDACTIONS[face_redaction],
    )
    if max_fps is not None:
        stream_options.max_fps = max_fps
    if analytics is not None:
        stream_options.analytics.CopyFrom(analytics_to_proto(analytics))
    return inference_pb2.StreamPredictionsRequest(
        stream_id=stream_id or "",
        model_id=model or "",
        sources=[_source(s) for s in sources],
        options=options,
        stream_options=stream_options,
        pipeline=pipeline or "",
        content=_CONTENTS[content],
    )


def stream_message_from_proto(
    message: inference_pb2.StreamPredictionsResponse, downtime_s: float = 0.0
) -> StreamFrame | StreamEvents | StreamStatus:
    payload = message.WhichOneof("payload")
    if payload == "events":
        return StreamEvents(
            stream_id=message.stream_id,
            events=tuple(analytics_event_from_proto(e) for e in message.events.events),
            cursor=message.cursor,
        )
    if payload == "frame":
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
            cursor=message.cursor,
            analytics=frame_analytics_from_proto(frame.analytics) if frame.HasField("analytics") else None,
        )
    status = message.status
    resume = None
    if status.event == inference_pb2.STREAM_EVENT_RESUMED:
        gap = status.resume
        resume = ResumeInfo(
            _OUTCOMES.get(gap.outcome, "restarted"), gap.previous_stream_id, gap.messages_lost, downtime_s
        )
    return StreamStatus(
        stream_id=message.stream_id,
        event=_EVENTS.get(status.event, StreamEvent.ERROR),
        source_index=status.source_index,
        sources=tuple(
            SourceInfo(s.source_index, s.width, s.height, s.fps, s.frame_count) for s in status.sources
        ),
        attempt=status.attempt,
        reason=status.reason,
        cursor=message.cursor,
        resume=resume,
    )


class PredictionStream:
    """An iterator over a subscription's frames and status events; ends when the server ends the stream.

    Errors surface from iteration as `VisionRpcError` subclasses; a break (UNAVAILABLE) is resumed first,
    as the `ResumePolicy` says. A cancelled stream simply stops iterating. One consumer thread; `cancel()`
    may come from any thread.
    """

    def __init__(
        self,
        open_call: Callable[[inference_pb2.StreamPredictionsRequest, float | None], Any],
        request: inference_pb2.StreamPredictionsRequest,
        *,
        timeout_s: float | None = None,
        resume: ResumePolicy | None = None,
    ) -> None:
        """`open_call(request, timeout_s)` starts one StreamPredictions call (the client's stub)."""
        self._open_call = open_call
        self._request = request
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._policy = resume or ResumePolicy()
        self._state = ResumeState()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._call = open_call(request, timeout_s)
        self._resumes = 0
        self._broke_at: float | None = None  # when the current break began (for the downtime reported)

    @property
    def resumes(self) -> int:
        """How many times the subscription was resumed on a new call."""
        return self._resumes

    @property
    def stream_id(self) -> str:
        """The stream's id as last received ("" before the first message)."""
        return self._state.stream_id

    def __iter__(self) -> Iterator[StreamFrame | StreamEvents | StreamStatus]:
        for message in self.messages():
            downtime = 0.0
            if message.HasField("status") and message.status.event == inference_pb2.STREAM_EVENT_RESUMED:
                downtime = time.monotonic() - (self._broke_at or time.monotonic())
                self._broke_at = None
            yield stream_message_from_proto(message, downtime)

    def messages(self) -> Iterator[inference_pb2.StreamPredictionsResponse]:
        """The raw StreamPredictionsResponse messages (for JSON output or forwarding), across resumes."""
        backoff = Backoff(self._policy)
        while True:
            try:
                with map_rpc_errors():
                    for message in self._call:
                        backoff.reset()
                        self._state.record(message)
                        yield message
                return
            except CancelledError:
                if self._cancelled.is_set():  # our own cancel() is a normal end, not an error
                    return
                raise
            except UnavailableError:
                if self._cancelled.is_set():
                    return
                delay = backoff.next_delay() if self._policy.enabled else None
                remaining = None if self._deadline is None else self._deadline - time.monotonic()
                if delay is None or (remaining is not None and remaining <= delay):
                    raise
                if self._broke_at is None:
                    self._broke_at = time.monotonic()
                if self._cancelled.wait(delay):
                    return
                self._reopen()

    def _reopen(self) -> None:
        request = self._state.resume_request(self._request)
        remaining = None if self._deadline is None else max(0.001, self._deadline - time.monotonic())
        with self._lock:
            if self._cancelled.is_set():
                return
            self._call = self._open_call(request, remaining)
            self._resumes += 1

    def cancel(self) -> None:
        """Cancels the subscription; the server frees it at once. Safe from any thread."""
        self._cancelled.set()
        with self._lock:
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
