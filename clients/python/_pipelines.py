"""The pipelines declared in a server's pipelines file: `client.pipelines.list() | get | start | stop`.

Example:
    with Client() as client:
        for pipeline in client.pipelines.list():
            print(pipeline.name, pipeline.state.value, pipeline.frames_processed)
        gate = client.pipelines.get("bikes-gate")
        print({line.name: (line.left_to_right, line.right_to_left) for line in gate.lines})
        client.pipelines.stop("bikes-gate")      # an admin key when the server checks keys

Watch one live with `client.stream(pipeline="bikes-gate")`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from visionrpc.v1 import pipelines_pb2, pipelines_pb2_grpc

__all__ = [
    "LineCounts",
    "PipelineInfo",
    "PipelineState",
    "Pipelines",
    "SinkStatus",
    "ZoneCounts",
    "pipeline_info_from_proto",
]


class PipelineState(enum.Enum):
    UNSPECIFIED = "unspecified"
    STOPPED = "stopped"  # stopped over the API, declared with autostart false, or gave up restarting
    STARTING = "starting"  # loading its model, opening its sources
    RUNNING = "running"
    BACKOFF = "backoff"  # failed (last_error); starts again after a backoff
    ENDED = "ended"  # its files ended and it does not loop


_STATES = {
    pipelines_pb2.PIPELINE_STATE_STOPPED: PipelineState.STOPPED,
    pipelines_pb2.PIPELINE_STATE_STARTING: PipelineState.STARTING,
    pipelines_pb2.PIPELINE_STATE_RUNNING: PipelineState.RUNNING,
    pipelines_pb2.PIPELINE_STATE_BACKOFF: PipelineState.BACKOFF,
    pipelines_pb2.PIPELINE_STATE_ENDED: PipelineState.ENDED,
}


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """A sink's delivery so far: what it could not take was dropped and counted, never waited for."""

    name: str
    kind: str  # "webhook", "mqtt", "jsonl" or "video"
    delivered: int
    failed: int  # attempts that failed (each retry counts)
    dropped: int  # given up on: its queue was full, or the retries ran out
    queued: int
    last_error: str
    last_error_time: float | None  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class ZoneCounts:
    """A zone's latest state on one source: objects inside now, entries and exits since the stream began."""

    name: str
    source_index: int
    count: int
    entered_total: int
    exited_total: int


@dataclass(frozen=True, slots=True)
class LineCounts:
    """A line's crossings on one source since the stream began."""

    name: str
    source_index: int
    left_to_right: int
    right_to_left: int


@dataclass(frozen=True, slots=True)
class PipelineInfo:
    name: str
    state: PipelineState
    state_since: float  # seconds since the epoch
    stream_id: str  # the running stream ("" unless RUNNING)
    model_id: str
    sources: tuple[str | int, ...]  # paths, URLs (credentials hidden) and device indexes, as declared
    frames_processed: int
    restarts: int  # after failures, since the server started
    last_error: str
    subscribers: int  # besides its sinks
    sinks: tuple[SinkStatus, ...]
    zones: tuple[ZoneCounts, ...]
    lines: tuple[LineCounts, ...]
    proto: Any = field(default=None, repr=False, compare=False)  # the PipelineStatus message, for --json


def _seconds(stamp: Any) -> float:
    return float(stamp.ToNanoseconds()) / 1e9


def pipeline_info_from_proto(message: pipelines_pb2.PipelineStatus) -> PipelineInfo:
    sources: list[str | int] = []
    for source in message.sources:
        kind = source.WhichOneof("source")
        sources.append(source.device if kind == "device" else source.url if kind == "url" else source.path)
    return PipelineInfo(
        name=message.name,
        state=_STATES.get(message.state, PipelineState.UNSPECIFIED),
        state_since=_seconds(message.state_since),
        stream_id=message.stream_id,
        model_id=message.model_id,
        sources=tuple(sources),
        frames_processed=message.frames_processed,
        restarts=message.restarts,
        last_error=message.last_error,
        subscribers=message.subscribers,
        sinks=tuple(
            SinkStatus(
                name=s.name,
                kind=s.kind,
                delivered=s.delivered,
                failed=s.failed,
                dropped=s.dropped,
                queued=s.queued,
                last_error=s.last_error,
                last_error_time=_seconds(s.last_error_time) if s.HasField("last_error_time") else None,
            )
            for s in message.sinks
        ),
        zones=tuple(
            ZoneCounts(z.name, z.source_index, z.count, z.entered_total, z.exited_total)
            for z in message.zones
        ),
        lines=tuple(
            LineCounts(ln.name, ln.source_index, ln.left_to_right, ln.right_to_left) for ln in message.lines
        ),
        proto=message,
    )


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET: Final = _Unset.UNSET


class Pipelines:
    """`Client.pipelines`: the server's declared pipelines. Errors are the `VisionRpcError` family:
    NotFoundError for a name the server does not declare; PermissionDeniedError / UnauthenticatedError when
    start and stop need an admin key. `timeout_s`: the call's deadline (None: none); the client's when not
    given."""

    def __init__(
        self, stub: pipelines_pb2_grpc.PipelineServiceStub, call: Callable[..., Any], client_default: object
    ) -> None:
        """`call(method, request, timeout_s)`: the client's one way of making a unary call; `client_default`:
        the `timeout_s` that tells it to use its own deadline."""
        self._stub = stub
        self._call = call
        self._client_default = client_default

    def _invoke(self, method: Callable[..., Any], request: Any, timeout_s: float | _Unset | None) -> Any:
        return self._call(method, request, self._client_default if timeout_s is _UNSET else timeout_s)

    def list(self, *, timeout_s: float | _Unset | None = _UNSET) -> list[PipelineInfo]:
        """Every declared pipeline, in the file's order."""
        response = self._invoke(self._stub.ListPipelines, pipelines_pb2.ListPipelinesRequest(), timeout_s)
        return [pipeline_info_from_proto(p) for p in response.pipelines]

    def get(self, name: str, *, timeout_s: float | _Unset | None = _UNSET) -> PipelineInfo:
        response = self._invoke(
            self._stub.GetPipeline, pipelines_pb2.GetPipelineRequest(name=name), timeout_s
        )
        return pipeline_info_from_proto(response.pipeline)

    def start(self, name: str, *, timeout_s: float | _Unset | None = _UNSET) -> PipelineInfo:
        """Starts a stopped, ended or backing-off pipeline; idempotent."""
        response = self._invoke(
            self._stub.StartPipeline, pipelines_pb2.StartPipelineRequest(name=name), timeout_s
        )
        return pipeline_info_from_proto(response.pipeline)

    def stop(self, name: str, *, timeout_s: float | _Unset | None = _UNSET) -> PipelineInfo:
        """Stops a pipeline until started again (its subscribers' streams end); idempotent."""
        response = self._invoke(
            self._stub.StopPipeline, pipelines_pb2.StopPipelineRequest(name=name), timeout_s
        )
        return pipeline_info_from_proto(response.pipeline)
