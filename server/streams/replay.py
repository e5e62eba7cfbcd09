"""A pipeline's replay ring: its latest published messages, for subscribers that resume after a cursor
(docs/stream-resume.md). Never holds a frame's pixels: a ring of decoded frames would pin megabytes per
stream for nothing, since pixels are for in-process consumers of the live result only."""

from __future__ import annotations

import dataclasses
from collections import deque

from .types import FrameResult, ResumeGap, ResumeOutcome, StreamEnd, StreamMessage

__all__ = ["ReplayRing"]


class ReplayRing:
    """Bounded, newest kept. Not thread-safe: the pipeline calls it under its lock."""

    def __init__(self, size: int) -> None:
        self._messages: deque[StreamMessage] = deque(maxlen=size)

    def append(self, message: StreamMessage) -> None:
        if isinstance(message, FrameResult) and message.pixels is not None:
            message = dataclasses.replace(message, pixels=None)
        self._messages.append(message)

    def after(self, cursor: int, last_cursor: int, stream_id: str) -> tuple[list[StreamMessage], ResumeGap]:
        """The messages after `cursor`, and whether any were lost; `last_cursor`: the stream's latest."""
        backlog = [m for m in self._messages if _cursor_of(m) > cursor]
        first_kept = _cursor_of(backlog[0]) if backlog else last_cursor + 1
        lost = max(0, first_kept - (cursor + 1))
        outcome = ResumeOutcome.PARTIAL if lost else ResumeOutcome.REPLAYED
        return backlog, ResumeGap(outcome, stream_id, lost)


def _cursor_of(message: StreamMessage) -> int:
    return 0 if isinstance(message, StreamEnd) else message.cursor
