"""Protobuf-free values of declared pipelines: their state and what status reports (pipelines.proto)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..analytics.types import LineState, ZoneState
from ..sinks.base import SinkStatus
from .config import DeclaredSource

__all__ = ["PipelineState", "PipelineStatus"]


class PipelineState(enum.Enum):
    STOPPED = "stopped"  # stopped over the API, declared with autostart false, or gave up restarting
    STARTING = "starting"  # loading its model and opening its sources
    RUNNING = "running"
    BACKOFF = "backoff"  # failed (last_error); starts again after a backoff
    ENDED = "ended"  # its file sources ended and it does not loop


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    name: str
    state: PipelineState
    state_since: float  # wall clock, time.time()
    stream_id: str  # "" unless RUNNING
    model_id: str  # as declared
    sources: tuple[DeclaredSource, ...]
    frames_processed: int  # by the running stream
    restarts: int  # after failures, since the server started
    last_error: str
    subscribers: int  # besides its sinks
    sinks: tuple[SinkStatus, ...]
    zones: tuple[ZoneState, ...]  # the latest per zone and source
    lines: tuple[LineState, ...]
