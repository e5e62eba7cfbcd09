"""The annotated video sink: records one source of a pipeline to MP4 with boxes, labels, track ids, zones and
lines drawn (common/annotate.py).

A run starts with the stream's STARTED status and ends with its end (or the sink's close): each run is a
new file, named by the path template with the run's start time (`{start}`, UTC, 20261206T221000Z); an existing
file is never overwritten (`-1`, `-2`... is appended instead). The frame rate is the configured one, else the
source's (from STARTED), else 25. Frames come from FrameResult.pixels, which the pipeline attaches for sinks
that ask (`needs_pixels`); a frame of another size than the file's (a camera that reconnected at another
resolution) is scaled to it. Under load the queue loses its oldest frames: the video then skips them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from visionrpc.common.annotate import LineOverlay, ZoneOverlay, annotate

from ..analytics.types import FrameAnalytics, StreamAnalytics
from ..streams.types import FrameResult, SourceEventKind, StreamEnd, StreamMessage, StreamStatus
from .base import SinkStatus
from .config import VideoSinkConfig
from .worker import DeliveryError, SinkWorker

__all__ = ["VideoSink"]

logger = logging.getLogger(__name__)

_DEFAULT_FPS = 25.0


@dataclass(frozen=True, slots=True)
class _Item:
    pipeline: str
    message: StreamMessage


class VideoSink:
    kind = "video"
    needs_pixels = True

    def __init__(self, config: VideoSinkConfig, analytics: StreamAnalytics | None = None) -> None:
        self.name = config.name
        self._config = config
        analytics = analytics or StreamAnalytics()
        self._zones = tuple(z for z in analytics.zones if z.watches(config.source_index))
        self._lines = tuple(line for line in analytics.lines if line.watches(config.source_index))
        # Worker thread only.
        self._writer: cv2.VideoWriter | None = None
        self._path: Path | None = None
        self._size: tuple[int, int] = (0, 0)  # (width, height) of the open file
        self._source_fps: float | None = None
        self._run_start: float | None = None
        self._worker: SinkWorker[_Item] = SinkWorker(
            self.name, self.kind, deliver=self._handle, queue_size=config.queue_size, finish=self._finish_file
        )

    def offer(self, pipeline: str, message: StreamMessage) -> None:
        if isinstance(message, FrameResult):
            if message.source_index != self._config.source_index:
                return
            if message.pixels is None:
                self._worker.drop("a frame came without pixels (the pipeline must attach them: needs_pixels)")
                return
        elif isinstance(message, StreamStatus) and message.event is not SourceEventKind.STARTED:
            return
        self._worker.put(_Item(pipeline, message))

    def status(self) -> SinkStatus:
        return self._worker.status()

    def close(self, timeout_s: float = 5.0) -> None:
        self._worker.close(timeout_s)

    # -- the worker thread -----------------------------------------------------------------------------------

    def _handle(self, item: _Item) -> None:
        message = item.message
        if isinstance(message, StreamStatus):
            self._finish_file()  # a new run: the pipeline started (again)
            self._run_start = time.time()
            self._source_fps = next(
                (s.fps for s in message.sources if s.index == self._config.source_index and s.fps > 0), None
            )
        elif isinstance(message, StreamEnd):
            self._finish_file()
            self._run_start = None
            self._source_fps = None
        else:
            self._write(item.pipeline, message)

    def _write(self, pipeline: str, frame: FrameResult) -> None:
        assert frame.pixels is not None  # offer() lets no other frame in
        pixels = frame.pixels
        if self._writer is None:
            self._open(pipeline, width=pixels.shape[1], height=pixels.shape[0])
        assert self._writer is not None
        zones, lines = self._overlays(frame.analytics)
        drawn = annotate(pixels, frame.prediction, zones=zones, lines=lines)
        if (drawn.shape[1], drawn.shape[0]) != self._size:
            drawn = np.asarray(cv2.resize(drawn, self._size, interpolation=cv2.INTER_AREA), np.uint8)
        self._writer.write(drawn)

    def _overlays(
        self, analytics: FrameAnalytics | None
    ) -> tuple[tuple[ZoneOverlay, ...], tuple[LineOverlay, ...]]:
        """The declared zones and lines of the recorded source, with this frame's counts."""
        index = self._config.source_index
        states = analytics or FrameAnalytics()
        counts = {z.name: z.count for z in states.zones if z.source_index == index}
        crossings = {
            line.name: (line.left_to_right, line.right_to_left)
            for line in states.lines
            if line.source_index == index
        }
        zones = tuple(
            ZoneOverlay(z.name, tuple((p.x, p.y) for p in z.polygon), counts.get(z.name)) for z in self._zones
        )
        lines = tuple(
            LineOverlay(
                line.name, (line.start.x, line.start.y), (line.end.x, line.end.y), crossings.get(line.name)
            )
            for line in self._lines
        )
        return zones, lines

    def _open(self, pipeline: str, *, width: int, height: int) -> None:
        start = time.gmtime(self._run_start if self._run_start is not None else time.time())
        path = _unused(self._config.path_for(pipeline, time.strftime("%Y%m%dT%H%M%SZ", start)))
        fps = self._config.fps or self._source_fps or _DEFAULT_FPS
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(f"create {path.parent}: {exc}", retryable=False) from None
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*self._config.codec), fps, (width, height))
        if not writer.isOpened():
            writer.release()
            raise DeliveryError(f"cannot write {self._config.codec} video to {path}", retryable=False)
        logger.info("video sink %s recording %s (%dx%d, %.3g fps)", self.name, path, width, height, fps)
        self._writer, self._path, self._size = writer, path, (width, height)

    def _finish_file(self) -> None:
        if self._writer is not None:
            self._writer.release()  # writes the MP4's index: without it the file does not play
            logger.info("video sink %s finished %s", self.name, self._path)
        self._writer, self._path, self._size = None, None, (0, 0)


def _unused(path: Path) -> Path:
    """`path`, or `stem-1.ext`, `stem-2.ext`... if it exists: a run never overwrites an earlier recording."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
