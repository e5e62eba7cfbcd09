"""What a pipeline needs of a source reader, and the real one (OpenCV capture on a thread of its own)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .buffers import SourceBuffer
from .sources import SourceReader
from .types import FramePolicy, FrameSink, ReconnectPolicy, SourceSpec

__all__ = ["Reader", "ReaderFactory", "source_reader"]


class Reader(Protocol):
    """A source reader as the pipeline sees it (`sources.SourceReader`; tests substitute scripted ones)."""

    @property
    def frames_read(self) -> int: ...

    @property
    def frames_skipped(self) -> int: ...

    @property
    def frames_retrieved(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self, timeout_s: float | None = ...) -> object: ...


ReaderFactory = Callable[[SourceSpec, FrameSink, FramePolicy, "float | None", ReconnectPolicy], Reader]


def source_reader(
    spec: SourceSpec, sink: FrameSink, policy: FramePolicy, max_fps: float | None, reconnect: ReconnectPolicy
) -> Reader:
    """The real reader: OpenCV capture of a file, URL or device on a thread of its own. A pipeline's buffer
    also tells a live newest-frame reader which frames it will take (the others are not converted)."""
    demand = sink if isinstance(sink, SourceBuffer) else None
    return SourceReader(spec, sink, policy=policy, max_fps=max_fps, reconnect=reconnect, demand=demand)
