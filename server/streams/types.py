"""Protobuf-free values of the streaming side: sources, frames, source events, options and stream messages.

Data flow (one pipeline):

    SourceReader thread per source --Frame / SourceEvent--> FrameSink (the pipeline's per-source buffer)
      -> pipeline inference thread (predictor) -> StreamMessage fan-out -> one bounded queue per Subscription
      -> servicer generator -> StreamPredictionsResponse
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ..analytics.types import FrameAnalytics, StreamAnalytics
from ..domain import ImageArray, Prediction
from .url_policy import UrlPolicy

__all__ = [
    "Delivery",
    "FaceRedaction",
    "Frame",
    "FrameImage",
    "FramePolicy",
    "FrameResult",
    "FrameSink",
    "ReconnectPolicy",
    "ResumeGap",
    "ResumeOutcome",
    "ResumePoint",
    "SourceEvent",
    "SourceEventKind",
    "SourceInfo",
    "SourceKind",
    "SourceSpec",
    "StreamContent",
    "StreamEnd",
    "StreamMessage",
    "StreamOptions",
    "StreamStatus",
]


class SourceKind(enum.Enum):
    FILE = "file"  # a video file below the media root
    URL = "url"  # http(s) video or MJPEG, rtsp(s)
    DEVICE = "device"  # a local capture device (webcam)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A validated source: `location` is an absolute path (files), a URL, or the device index as text."""

    index: int
    kind: SourceKind
    location: str
    # Files: the first frame to process (a stream started again elsewhere continues where it broke off);
    # sequence numbers still count from the file's first frame. Live sources always start at their present.
    start_frame: int = 0
    # URLs: the allow-list every hop is checked against before each connection (url_preflight); not part of
    # the source's identity (identical requests still share a pipeline).
    urls: UrlPolicy | None = field(default=None, compare=False)

    @property
    def live(self) -> bool:
        """Live sources run in real time whether or not we read them; files wait for us."""
        if self.kind is SourceKind.URL:
            return not self.location.lower().startswith(("http://", "https://")) or _looks_like_live_http(
                self.location
            )
        return self.kind is SourceKind.DEVICE


def _looks_like_live_http(url: str) -> bool:
    # An http(s) URL is a recorded file unless it looks like a live MJPEG endpoint; "?live" forces live mode.
    lowered = url.lower()
    return "mjpg" in lowered or "mjpeg" in lowered or "live" in lowered.split("?", 1)[-1]


class FramePolicy(enum.Enum):
    AUTO = "auto"  # files: every frame; live sources: newest frame
    EVERY_FRAME = "every_frame"
    NEWEST_FRAME = "newest_frame"

    def resolve(self, spec: SourceSpec) -> FramePolicy:
        if self is not FramePolicy.AUTO:
            return self
        return FramePolicy.NEWEST_FRAME if spec.live else FramePolicy.EVERY_FRAME


class Delivery(enum.Enum):
    LOSSY = "lossy"  # bounded queue; a slow subscriber loses its own oldest results
    EVERY_FRAME = "every_frame"  # the pipeline waits for this (single, file-only) subscriber


class FrameImage(enum.Enum):
    NONE = "none"
    RAW = "raw"
    ANNOTATED = "annotated"


class FaceRedaction(enum.Enum):
    NONE = "none"
    BLUR = "blur"
    PIXELATE = "pixelate"


class StreamContent(enum.Enum):
    FRAMES = "frames"  # every processed frame, with its analytics
    EVENTS = "events"  # only frames' analytics events (AnalyticsEvents), for watching a busy camera cheaply


@dataclass(frozen=True, slots=True)
class StreamOptions:
    max_fps: float | None = None  # live sources skip frames to stay under it; files are paced to it
    frame_policy: FramePolicy = FramePolicy.AUTO
    frame_image: FrameImage = FrameImage.NONE
    jpeg_quality: int = 80
    analytics: StreamAnalytics = field(default_factory=StreamAnalytics)
    face_redaction: FaceRedaction = FaceRedaction.NONE

    def __post_init__(self) -> None:
        if self.max_fps is not None and not self.max_fps > 0:
            raise ValueError(f"expected max_fps > 0 or unset, got {self.max_fps}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"expected jpeg_quality in [1, 100], got {self.jpeg_quality}")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Exponential backoff for live sources: initial, initial*multiplier, ... capped at max_backoff_s."""

    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0
    max_attempts: int = 0  # 0: keep trying while anyone watches
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Backoff before reconnect attempt `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempt - 1))


@dataclass(frozen=True, slots=True)
class SourceInfo:
    index: int
    width: int
    height: int
    fps: float
    frame_count: int  # 0 when unknown (live)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; `sequence_number` counts every decoded frame of its source from 0, skipped too."""

    source_index: int
    sequence_number: int
    timestamp_ms: float  # presentation time in the source
    capture_time: float  # wall clock (time.time()) when read
    pixels: ImageArray  # HxWx3 BGR


class SourceEventKind(enum.Enum):
    STARTED = "started"
    RECONNECTING = "reconnecting"
    RECONNECTED = "reconnected"
    ENDED = "ended"  # a file reached its end (or a live source gave up after max_attempts)
    ERROR = "error"  # the source cannot be opened at all; the pipeline ends with an error


@dataclass(frozen=True, slots=True)
class SourceEvent:
    kind: SourceEventKind
    source_index: int
    info: SourceInfo | None = None  # STARTED and RECONNECTED
    attempt: int = 0  # RECONNECTING
    reason: str = ""


class FrameSink(Protocol):
    """Where a SourceReader delivers. Both calls come from the reader's thread."""

    def put_frame(self, frame: Frame) -> bool:
        """Takes a frame; may block (every-frame policy) until there is room. False: stop reading."""
        ...

    def put_event(self, event: SourceEvent) -> None: ...


# -- what subscribers receive ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameResult:
    source_index: int
    sequence_number: int
    timestamp_ms: float
    capture_time: float
    prediction: Prediction
    frames_skipped: int  # cumulative, this source, by the pipeline (newest-frame policy, max_fps)
    results_dropped: int  # cumulative, this subscriber
    frame_jpeg: bytes = b""
    cursor: int = 0  # the message's position in its stream, from 1 (stamped when the pipeline publishes it)
    analytics: FrameAnalytics | None = None  # streams that declare analytics
    # The frame itself (redacted where asked), for in-process consumers that need pixels (a declared
    # pipeline's video sink); never sent, and not kept in the replay ring.
    pixels: ImageArray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StreamStatus:
    event: SourceEventKind
    source_index: int
    sources: tuple[SourceInfo, ...] = ()  # STARTED: every source
    attempt: int = 0
    reason: str = ""
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last message of a subscription: the pipeline finished (all files ended) or failed."""

    error: str = ""  # empty: ended normally


StreamMessage = FrameResult | StreamStatus | StreamEnd


# -- resuming a broken subscription ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a client's broken subscription stopped (docs/stream-resume.md)."""

    stream_id: str
    after_cursor: int  # the last cursor received
    next_sequence_numbers: tuple[int, ...] = ()  # per source index: last frame received + 1


class ResumeOutcome(enum.Enum):
    REPLAYED = "replayed"  # same pipeline, everything after the cursor follows
    PARTIAL = "partial"  # same pipeline, the replay ring had lost `messages_lost` of them
    RESTARTED = "restarted"  # the pipeline was started again: results in between are lost


@dataclass(frozen=True, slots=True)
class ResumeGap:
    """How a resumed subscription continued; sent to its subscriber first."""

    outcome: ResumeOutcome
    previous_stream_id: str
    messages_lost: int = 0
