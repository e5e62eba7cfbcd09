"""The per-source frame buffers between the source readers and a pipeline's inference thread.

Each source's reader thread puts frames and events into its SourceBuffer (the FrameSink it was given); the
pipeline's inference thread takes them. All buffers of a pipeline share the pipeline's lock (the Gate), so
the inference thread waits on one condition for work from any source.

A buffer also follows its consumer (when it took a frame, how long it stays away) so that a live
newest-frame reader converts only the frames the pipeline will take (`frame_due`, docs/streams-decoding.md).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from .. import metrics
from .types import Frame, FramePolicy, SourceEvent

__all__ = ["Gate", "SourceBuffer"]

# A grabbed frame is converted when the consumer is expected back within this many frame intervals: a little
# more than one, so a consumer back slightly early rarely finds the buffer empty.
_LOOKAHEAD = 1.5
# The consumer's time away (inference and publishing) is followed with this weight per frame taken.
_AWAY_WEIGHT = 0.3


class Gate:
    """The lock shared by a pipeline and its source buffers, with the conditions waited on under it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # the inference thread: frames, events, subscribers
        self.room = threading.Condition(self.lock)  # readers of every-frame sources: a free slot
        self.stopping = False


class SourceBuffer:
    """One source's FrameSink: frames and events in arrival order, so an event never overtakes a frame.

    Every-frame policy: at most `capacity` frames, put_frame blocks (back-pressure: a file is read no faster
    than inference). Newest-frame policy: one pending frame; a newer one replaces it and counts as skipped.
    """

    def __init__(self, gate: Gate, policy: FramePolicy, capacity: int) -> None:
        self._gate = gate
        self._policy = policy
        self._capacity = capacity
        self._items: deque[Frame | SourceEvent] = deque()
        self._frames = 0
        self.skipped = 0  # guarded by the gate's lock
        # The consumer, as seen from take(): when it last took a frame (None: it came back since), how long
        # it usually stays away, and whether it came for a frame and found none.
        self._taken_at: float | None = None
        self._away_s = 0.0
        self._wanted = False

    def put_frame(self, frame: Frame) -> bool:
        gate = self._gate
        with gate.lock:
            if self._policy is FramePolicy.NEWEST_FRAME:
                if self._frames:
                    self.skipped += self._frames
                    metrics.STREAM_FRAMES.labels("skipped").inc(self._frames)
                    self._items = deque(item for item in self._items if not isinstance(item, Frame))
                    self._frames = 0
            else:
                while self._frames >= self._capacity and not gate.stopping:
                    gate.room.wait()
            if gate.stopping:
                return False
            self._items.append(frame)
            self._frames += 1
            self._wanted = False
            gate.work.notify()
            return True

    def frame_due(self, next_frame_in_s: float) -> bool:
        """Newest-frame policy: whether the frame its reader just grabbed should be converted and put here.

        Yes when the consumer waits for one, or is expected back before the frame after it could arrive
        (within _LOOKAHEAD frame intervals), or nothing is known yet. No when a newer frame will be here
        first: this one would only be replaced. Then the frame pending here, older still, is dropped too,
        so the consumer never takes a frame older than the newest one grabbed (results are never staler
        than with every frame converted); a consumer back early waits for the next, fresher, frame.
        """
        if self._policy is not FramePolicy.NEWEST_FRAME:
            return True
        gate = self._gate
        with gate.lock:
            if gate.stopping or self._wanted or self._taken_at is None or not self._away_s:
                return True
            back_at = self._taken_at + self._away_s
            if time.monotonic() + _LOOKAHEAD * next_frame_in_s >= back_at:
                return True
            if self._frames:
                self.skipped += self._frames
                metrics.STREAM_FRAMES.labels("skipped").inc(self._frames)
                self._items = deque(item for item in self._items if not isinstance(item, Frame))
                self._frames = 0
            return False

    def put_event(self, event: SourceEvent) -> None:
        with self._gate.lock:
            self._items.append(event)
            self._gate.work.notify()

    def take(self, frame_wanted: bool) -> tuple[list[SourceEvent], Frame | None]:
        """The events queued before the next frame, and that frame if wanted. Caller holds the lock."""
        if frame_wanted:
            self._note_consumer(self._frames > 0)
        events: list[SourceEvent] = []
        while self._items:
            head = self._items[0]
            if isinstance(head, SourceEvent):
                events.append(head)
                self._items.popleft()
            elif frame_wanted:
                self._items.popleft()
                self._frames -= 1
                self._gate.room.notify_all()
                return events, head
            else:
                break
        return events, None

    def _note_consumer(self, taking: bool) -> None:
        """The consumer came for a frame (and takes one, or finds none). Caller holds the lock."""
        now = time.monotonic()
        if self._taken_at is not None:
            away = now - self._taken_at
            self._away_s = away if not self._away_s else self._away_s + _AWAY_WEIGHT * (away - self._away_s)
        self._taken_at = now if taking else None
        self._wanted = not taking
