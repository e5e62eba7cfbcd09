"""What every sink is to the pipeline that feeds it: `offer` a message (never blocks, never raises), read its
`status`, `close` it (bounded). docs/sinks.md describes the failure model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..streams.types import StreamMessage

__all__ = ["Sink", "SinkStatus"]


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """A sink's delivery so far (the contract's SinkStatus)."""

    name: str
    kind: str  # "webhook" | "mqtt" | "jsonl" | "video"
    delivered: int  # messages posted, published, written
    failed: int  # attempts that failed, each retry counted
    dropped: int  # messages given up on: the queue was full, the retries ran out, or the sink closed first
    queued: int  # waiting now
    last_error: str = ""
    last_error_time: float | None = None  # time.time() of last_error


class Sink(Protocol):
    """A declared pipeline's consumer: a bounded queue drained by the sink's own thread.

    A slow, failing or hanging sink loses its own oldest messages (counted in `dropped`); it never holds the
    pipeline or other sinks up.
    """

    name: str
    kind: str
    needs_pixels: bool  # the pipeline must attach FrameResult.pixels (the video sink)

    def offer(self, pipeline: str, message: StreamMessage) -> None:
        """Queues what this sink makes of `message`, dropping its oldest queued one when full. Never blocks,
        never raises; call it from one thread (the pipeline's), in stream order."""
        ...

    def status(self) -> SinkStatus: ...

    def close(self, timeout_s: float = 5.0) -> None:
        """Delivers what is queued, for at most `timeout_s`, then drops the rest and releases the sink's
        connections and files. Returns within `timeout_s` (plus a little); idempotent."""
        ...
