"""Reading video sources: `SourceReader` decodes one source on its own thread and feeds a `FrameSink`.

What a request may read is decided before this module is involved (source_policy.resolve_source); a reader
only ever gets a validated SourceSpec. Each reader runs one daemon thread that decodes with OpenCV's FFmpeg
backend and hands every frame and every state change to its sink:

    files      STARTED, frame, frame, ..., ENDED                 (or ERROR when it cannot be opened at all)
    live       STARTED, frames, RECONNECTING(1), RECONNECTING(2), ..., RECONNECTED, frames, ...
               (ENDED only after ReconnectPolicy.max_attempts > 0 failed attempts in a row)

Event reasons reach clients: they name files without server paths and URLs without credentials (`redact_url`).

Frames are grabbed (demuxed and decoded by FFmpeg) and only then, for the ones that will be processed,
retrieved (converted to a BGR array): frames skipped for max_fps, frames before a resumed file's start and,
on live newest-frame sources, frames the pipeline would only replace (`FrameDemand`) are never converted.
docs/streams-decoding.md has the rules and what they cost and save.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import cv2
import numpy as np

from .. import metrics
from .source_policy import redact_url
from .types import (
    Frame,
    FramePolicy,
    FrameSink,
    ReconnectPolicy,
    SourceEvent,
    SourceEventKind,
    SourceInfo,
    SourceKind,
    SourceSpec,
)
from .url_preflight import HopRefusedError, check_hops

if TYPE_CHECKING:
    from ..domain import ImageArray

__all__ = ["FrameDemand", "SourceReader"]

logger = logging.getLogger(__name__)

_CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def _prefer_rtsp_over_tcp() -> None:
    # FFmpeg defaults RTSP to UDP: extra ports per stream, smeared frames on packet loss, and nothing that
    # passes a NAT or a mesh. OpenCV reads this variable at every open, so it is set once here, before any
    # reader thread exists, rather than around each open where concurrent opens would race on it. Options an
    # operator set are kept; only a missing rtsp_transport is added.
    current = os.environ.get(_CAPTURE_OPTIONS_ENV, "")
    if "rtsp_transport" not in current:
        os.environ[_CAPTURE_OPTIONS_ENV] = (
            f"{current}|rtsp_transport;tcp" if current else "rtsp_transport;tcp"
        )


_prefer_rtsp_over_tcp()

# A read that takes this share of the read timeout or more means the stream stalled: FFmpeg's interrupt fires
# at the timeout, yet a frozen RTSP server's first reads still return True (DESIGN.md, facts for video tests).
_STALL_SHARE = 0.8
# A live stream's pts is trusted while it stays within this much of the wall clock; beyond, re-anchor.
_MAX_PTS_DRIFT_MS = 5_000.0


# The interval between frames is followed with this weight per frame (a moving average over ~5 frames).
_INTERVAL_WEIGHT = 0.2


class FrameDemand(Protocol):
    """Whether a live newest-frame source's pipeline will take the frame just grabbed (the reader then
    converts it) or would only replace it by a newer one first (the reader skips converting it)."""

    def frame_due(self, next_frame_in_s: float) -> bool:
        """`next_frame_in_s`: when the next frame the reader could deliver is expected."""
        ...


class _DisconnectError(Exception):
    """A live connection is gone (failed, stalled or ended); the message is the event reason."""

    def __init__(self, reason: str, *, connected: bool = False) -> None:
        super().__init__(reason)
        self.connected = connected  # it had delivered frames, so the attempt count starts again


class SourceReader:
    """Decodes one source on its own daemon thread and feeds a FrameSink.

    Example:
        reader = SourceReader(spec, sink, policy=FramePolicy.EVERY_FRAME, max_fps=None,
                              reconnect=ReconnectPolicy())
        reader.start()
        ...
        reader.stop()
    """

    def __init__(
        self,
        spec: SourceSpec,
        sink: FrameSink,
        *,
        policy: FramePolicy,
        max_fps: float | None,
        reconnect: ReconnectPolicy,
        demand: FrameDemand | None = None,
    ) -> None:
        """`demand`: asked before converting each frame of a live newest-frame source (other sources convert
        every frame they deliver)."""
        if max_fps is not None and not max_fps > 0:
            raise ValueError(f"expected max_fps > 0 or None, got {max_fps}")
        self._spec = spec
        self._sink = sink
        self._policy = policy.resolve(spec)
        self._min_interval_s = 1.0 / max_fps if max_fps else 0.0
        # Skipping keeps a live (or newest-frame) source current; a file waits for us, so it is paced instead.
        self._skip_for_max_fps = spec.live or self._policy is FramePolicy.NEWEST_FRAME
        self._demand = demand if spec.live and self._policy is FramePolicy.NEWEST_FRAME else None
        self._reconnect = reconnect
        self._stall_s = reconnect.read_timeout_s * _STALL_SHARE
        self._shown = _label(spec)  # for event reasons, which reach clients
        self._log_location = spec.location if spec.kind is SourceKind.FILE else self._shown
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._frames_read = 0
        self._frames_skipped = 0
        self._frames_retrieved = 0
        self._thread = threading.Thread(target=self._run, name=f"source-{spec.index}", daemon=True)
        # Reader-thread state only.
        self._started = False
        self._t0 = 0.0
        self._next_due = 0.0
        self._pts_anchor_ms: float | None = None
        self._last_ts_ms = -math.inf
        self._interval_s = 0.0  # between grabs, averaged; 0 until known
        self._last_grab = 0.0

    @property
    def spec(self) -> SourceSpec:
        return self._spec

    @property
    def frames_read(self) -> int:
        """Frames decoded so far, skipped ones included (the next frame's sequence number)."""
        with self._lock:
            return self._frames_read

    @property
    def frames_skipped(self) -> int:
        """Frames read but not delivered: sooner than 1/max_fps after the last one, or (live newest-frame
        sources) not due because the pipeline would have replaced them before taking one."""
        with self._lock:
            return self._frames_skipped

    @property
    def frames_retrieved(self) -> int:
        """Frames converted to pixels (cv2 retrieve): the delivered ones and each connection's first."""
        with self._lock:
            return self._frames_retrieved

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Asks the reader to stop and waits for its thread; returns whether it ended within the timeout.

        The capture is released by the reader thread itself, never from here: releasing an OpenCV capture
        while another thread is inside read() frees FFmpeg state under it. A blocked read ends within the read
        timeout (an open within the open timeout), so the default wait covers the longer of the two. A sink
        that blocks in put_frame must itself give way when its pipeline stops.
        """
        self._stop.set()
        if timeout_s is None:
            timeout_s = max(self._reconnect.read_timeout_s, self._reconnect.open_timeout_s) + 1.0
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the reader thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        self._t0 = time.monotonic()
        logger.info("source %d: reading %s (%s)", self._spec.index, self._log_location, self._policy.value)
        try:
            if self._spec.live:
                self._run_live()
            else:
                self._run_file()
        except Exception as exc:  # a bug here must end the source visibly, not leave the pipeline waiting
            logger.exception("source %d: reader failed", self._spec.index)
            self._emit(SourceEventKind.ERROR, reason=f"internal error while reading: {type(exc).__name__}")
        finally:
            logger.info(
                "source %d: reader done (%d frames read, %d skipped)",
                self._spec.index,
                self.frames_read,
                self.frames_skipped,
            )

    def _run_file(self) -> None:
        try:
            capture = self._open()
        except HopRefusedError as exc:
            self._emit(SourceEventKind.ERROR, reason=exc.message)
            return
        if capture is None:
            self._emit(SourceEventKind.ERROR, reason=f"cannot open {self._shown} as a video")
            return
        try:
            while not self._stop.is_set():
                if self._min_interval_s and not self._skip_for_max_fps and not self._wait_for_pace():
                    return
                grabbed, took = self._timed_grab(capture)
                if self._stop.is_set():
                    return
                pixels = self._retrieve(capture) if grabbed and not self._started else None
                if not grabbed or (not self._started and pixels is None):
                    self._end_file(stalled=took >= self._stall_s)
                    return
                if pixels is not None:  # the first frame: STARTED tells its size
                    self._started = True
                    self._emit(SourceEventKind.STARTED, info=self._info(capture, pixels))
                if not self._deliver(capture, self._file_timestamp(capture), pixels):
                    return
        except _DisconnectError:  # a frame that grabbed but would not convert: the file ends there
            self._end_file(stalled=False)
        finally:
            capture.release()

    def _end_file(self, *, stalled: bool) -> None:
        if not self._started:
            self._emit(SourceEventKind.ERROR, reason=f"no decodable video frames in {self._shown}")
        elif stalled:  # a remote file whose server stopped answering did not really end
            self._emit(SourceEventKind.ERROR, reason=f"read timed out after {self.frames_read} frames")
        else:
            self._emit(SourceEventKind.ENDED, reason="end of file")

    def _run_live(self) -> None:
        attempt = 0  # failed attempts since the last good connection
        while not self._stop.is_set():
            try:
                self._stream_once()
                return  # stopped, or the sink asked to stop
            except HopRefusedError as exc:  # a refusal is final: retrying would only ask again
                self._emit(SourceEventKind.ERROR, reason=exc.message)
                return
            except _DisconnectError as exc:
                reason, connected = str(exc), exc.connected
            if self._stop.is_set():
                return
            if connected:
                attempt = 0
            attempt += 1
            limit = self._reconnect.max_attempts
            if limit > 0 and attempt > limit:
                self._emit(
                    SourceEventKind.ENDED, reason=f"gave up after {limit} reconnect attempts: {reason}"
                )
                return
            self._emit(SourceEventKind.RECONNECTING, attempt=attempt, reason=reason)
            metrics.SOURCE_RECONNECTS.inc()
            if self._stop.wait(self._reconnect.delay(attempt)):
                return

    def _stream_once(self) -> None:
        """One connection: open, announce, stream until it breaks (raises _DisconnectError) or we stop."""
        capture = self._open()
        if capture is None:
            raise _DisconnectError(f"cannot open {self._shown}")
        try:
            self._pts_anchor_ms = None  # every connection starts its own pts
            if not self._grab_live(capture):
                return
            pixels = self._retrieve(capture)  # the first frame: STARTED / RECONNECTED tell its size
            if pixels is None:
                raise _DisconnectError("stream ended or read failed")
            kind = SourceEventKind.RECONNECTED if self._started else SourceEventKind.STARTED
            self._started = True
            info = self._info(capture, pixels)
            self._interval_s = 1.0 / info.fps if info.fps else 0.0
            self._emit(kind, info=info)
            try:
                delivering = self._deliver(capture, self._live_timestamp(capture), pixels)
                while delivering and self._grab_live(capture):
                    delivering = self._deliver(capture, self._live_timestamp(capture))
            except _DisconnectError as exc:
                raise _DisconnectError(str(exc), connected=True) from None
        finally:
            # Released before any backoff: a capture never recovers, and holding it keeps a socket open.
            capture.release()

    def _grab_live(self, capture: cv2.VideoCapture) -> bool:
        """Grabs the next frame; False when stopping. Raises _DisconnectError: failed, ended or stalled."""
        grabbed, took = self._timed_grab(capture)
        if self._stop.is_set():
            return False
        if took >= self._stall_s:
            raise _DisconnectError(f"stream stalled: a read took {took:.1f}s")
        if not grabbed:
            raise _DisconnectError("stream ended or read failed")
        return True

    def _timed_grab(self, capture: cv2.VideoCapture) -> tuple[bool, float]:
        """Advances to the next frame (demuxed and decoded, not converted); whether it came and how long the
        read took. Follows the interval between frames, for FrameDemand."""
        began = time.monotonic()
        grabbed = bool(capture.grab())
        ended = time.monotonic()
        if grabbed and self._last_grab:
            interval = min(ended - self._last_grab, 1.0)  # a pause is not the frame rate
            average = self._interval_s
            self._interval_s = interval if not average else average + _INTERVAL_WEIGHT * (interval - average)
        self._last_grab = ended if grabbed else 0.0
        return grabbed, ended - began

    def _retrieve(self, capture: cv2.VideoCapture) -> ImageArray | None:
        """The grabbed frame as BGR pixels; None when it will not convert."""
        ok, pixels = capture.retrieve()
        if not ok:
            return None
        with self._lock:
            self._frames_retrieved += 1
        return cast("ImageArray", pixels)

    def _open(self) -> cv2.VideoCapture | None:
        """A new capture, or None when it cannot be opened; every reconnect opens a fresh one.

        Raises HopRefusedError when the URL leads somewhere the allow-list does not admit."""
        location = self._spec.location
        if self._spec.urls is not None:
            try:
                location = check_hops(location, self._spec.urls, timeout_s=self._reconnect.open_timeout_s)
            except OSError as exc:
                logger.debug("source %d: cannot reach %s: %s", self._spec.index, self._log_location, exc)
                return None
        try:
            if self._spec.kind is SourceKind.DEVICE:
                # FFmpeg cannot open a camera by index; let OpenCV pick the platform backend (V4L2, ...).
                capture = cv2.VideoCapture(int(self._spec.location), cv2.CAP_ANY)
            else:
                capture = cv2.VideoCapture(
                    location,
                    cv2.CAP_FFMPEG,
                    [
                        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                        int(self._reconnect.open_timeout_s * 1000),
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        int(self._reconnect.read_timeout_s * 1000),
                    ],
                )
        except cv2.error as exc:
            logger.warning("source %d: cannot open %s: %s", self._spec.index, self._log_location, exc)
            return None
        if not capture.isOpened():
            capture.release()
            logger.debug("source %d: cannot open %s", self._spec.index, self._log_location)
            return None
        return capture

    def _deliver(
        self, capture: cv2.VideoCapture, timestamp_ms: float, pixels: ImageArray | None = None
    ) -> bool:
        """Numbers the grabbed frame and, unless it is skipped, converts it (when `pixels` are not given yet)
        and hands it to the sink; False: stop reading. Raises _DisconnectError when it will not convert."""
        now = time.monotonic()
        with self._lock:
            sequence = self._frames_read
            self._frames_read += 1
            if sequence < self._spec.start_frame:  # a resumed file: these went out before the stream broke
                return True
            skip = self._skip_for_max_fps and self._min_interval_s > 0 and now < self._next_due
            if skip:
                self._frames_skipped += 1
        if metrics.ON:
            metrics.STREAM_FRAMES.labels("decoded").inc()
            if skip:
                metrics.STREAM_FRAMES.labels("skipped").inc()
        if skip:
            return True
        next_in = self._interval_s
        if self._skip_for_max_fps and self._min_interval_s > 0:
            self._advance_schedule(now)
            next_in = max(next_in, self._next_due - now)
        if pixels is None and self._demand is not None and not self._demand.frame_due(next_in):
            with self._lock:
                self._frames_skipped += 1
            if metrics.ON:
                metrics.STREAM_FRAMES.labels("skipped").inc()
            return True
        if pixels is None:
            pixels = self._retrieve(capture)
            if pixels is None:
                raise _DisconnectError("stream ended or read failed")
        frame = Frame(
            source_index=self._spec.index,
            sequence_number=sequence,
            timestamp_ms=timestamp_ms,
            capture_time=time.time(),
            pixels=pixels,
        )
        if self._sink.put_frame(frame):
            return True
        logger.debug("source %d: the sink asked to stop", self._spec.index)
        return False

    def _advance_schedule(self, now: float) -> None:
        # Slots on a fixed grid keep the average rate at max_fps even when frames arrive on a coarser grid
        # (25 fps capped at 10 fps delivers 10/s, not the 8.3/s of "at least 100 ms since the last one");
        # after a pause the grid restarts at now so there is no burst to catch up.
        if now - self._next_due > self._min_interval_s:
            self._next_due = now + self._min_interval_s
        else:
            self._next_due += self._min_interval_s

    def _wait_for_pace(self) -> bool:
        """Sleeps until the next file frame is due (interruptibly); False when stopped meanwhile."""
        now = time.monotonic()
        if self._next_due > now and self._stop.wait(self._next_due - now):
            return False
        self._advance_schedule(time.monotonic())
        return True

    def _file_timestamp(self, capture: cv2.VideoCapture) -> float:
        position = float(capture.get(cv2.CAP_PROP_POS_MSEC))
        if not math.isfinite(position) or position < 0:
            position = (time.monotonic() - self._t0) * 1000.0
        position = max(position, self._last_ts_ms)
        self._last_ts_ms = position
        return position

    def _live_timestamp(self, capture: cv2.VideoCapture) -> float:
        """The stream's pts anchored to ms since the reader started; wall clock where the pts is not sensible.

        A pts keeps the exact frame spacing that arrival times lose (a connection's first second arrives in
        one burst), but every connection restarts it, and cameras reset or jump it; so each connection anchors
        its pts to the reader's clock, re-anchors on a jump, and the result never goes backwards.
        """
        now_ms = (time.monotonic() - self._t0) * 1000.0
        pts = float(capture.get(cv2.CAP_PROP_POS_MSEC))
        if not math.isfinite(pts) or pts < 0:
            stamp = now_ms
        else:
            if self._pts_anchor_ms is None or abs(self._pts_anchor_ms + pts - now_ms) > _MAX_PTS_DRIFT_MS:
                self._pts_anchor_ms = max(now_ms, self._last_ts_ms) - pts
            stamp = self._pts_anchor_ms + pts
        stamp = max(stamp, self._last_ts_ms)
        self._last_ts_ms = stamp
        return stamp

    def _info(self, capture: cv2.VideoCapture, pixels: ImageArray) -> SourceInfo:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = 0.0 if self._spec.live else float(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        height, width = np.shape(pixels)[:2]
        return SourceInfo(
            index=self._spec.index,
            width=int(width),
            height=int(height),
            fps=fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0,
            frame_count=int(count) if math.isfinite(count) and count > 0 else 0,
        )

    def _emit(
        self, kind: SourceEventKind, *, info: SourceInfo | None = None, attempt: int = 0, reason: str = ""
    ) -> None:
        # One warning when a source goes down; a camera that stays away is retried quietly (events tell).
        loud = kind is SourceEventKind.ERROR or (kind is SourceEventKind.RECONNECTING and attempt == 1)
        level, detail = logging.WARNING if loud else logging.INFO, reason or info or ""
        logger.log(
            level,
            "source %d (%s): %s %s %s",
            self._spec.index,
            self._log_location,
            kind.value,
            attempt or "",
            detail,
        )
        self._sink.put_event(
            SourceEvent(kind=kind, source_index=self._spec.index, info=info, attempt=attempt, reason=reason)
        )


def _label(spec: SourceSpec) -> str:
    """How event reasons name a source: clients see no server paths and no credentials."""
    if spec.kind is SourceKind.FILE:
        return Path(spec.location).name
    if spec.kind is SourceKind.DEVICE:
        return f"device {spec.location}"
    return redact_url(spec.location)
