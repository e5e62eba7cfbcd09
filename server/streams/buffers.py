"""The per-source frame buffers between the source readers and a pipeline's inference thread.

Each source's reader thread puts frames and events into its SourceBuffer (the FrameSink it was given); the
pipeline's inference thread takes them. All buffers of a pipeline share the pipeline's lock (the Gate), so
the inference thread waits on one condition for work from any source.
"""

from __future__ import annotations

import threading
from collections import deque

from .. import metrics
from .types import Frame, FramePolicy, SourceEvent

__all__ = ["Gate", "SourceBuffer"]


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
            gate.work.notify()
            return True

    def put_event(self, event: SourceEvent) -> None:
        with self._gate.lock:
            self._items.append(event)
            self._gate.work.notify()

    def take(self, frame_wanted: bool) -> tuple[list[SourceEvent], Frame | None]:
        """The events queued before the next frame, and that frame if wanted. Caller holds the lock."""
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
