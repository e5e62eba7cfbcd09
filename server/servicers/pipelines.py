"""visionrpc.v1.PipelineService: list, inspect, start and stop the pipelines of the server's pipelines file.

Each call runs in the event loop's default executor (StopPipeline waits for the pipeline to wind down and its
sinks to flush); the conversions to protobuf live here too, being few.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from visionrpc.v1 import inference_pb2, pipelines_pb2, pipelines_pb2_grpc

from ..analytics.types import FrameAnalytics
from ..declared.config import DeclaredSource
from ..declared.supervisor import Supervisor
from ..declared.types import PipelineState, PipelineStatus
from ..errors import InvalidArgumentError
from ..sinks.base import SinkStatus
from .status import map_errors
from .stream_convert import frame_analytics_to_proto

__all__ = ["PipelineServicer", "pipeline_status_to_proto"]

Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    PipelineState.STOPPED: pipelines_pb2.PIPELINE_STATE_STOPPED,
    PipelineState.STARTING: pipelines_pb2.PIPELINE_STATE_STARTING,
    PipelineState.RUNNING: pipelines_pb2.PIPELINE_STATE_RUNNING,
    PipelineState.BACKOFF: pipelines_pb2.PIPELINE_STATE_BACKOFF,
    PipelineState.ENDED: pipelines_pb2.PIPELINE_STATE_ENDED,
}


def _name(text: str) -> str:
    if not text:
        raise InvalidArgumentError.for_field(
            "name", "expected a pipeline name, got ''", reason="INVALID_NAME"
        )
    return text


class PipelineServicer(pipelines_pb2_grpc.PipelineServiceServicer):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    @map_errors
    async def ListPipelines(  # noqa: N802 - the generated base class fixes the name
        self, request: pipelines_pb2.ListPipelinesRequest, context: Context
    ) -> pipelines_pb2.ListPipelinesResponse:
        statuses = await asyncio.to_thread(self._supervisor.list)
        return pipelines_pb2.ListPipelinesResponse(pipelines=[pipeline_status_to_proto(s) for s in statuses])

    @map_errors
    async def GetPipeline(  # noqa: N802
        self, request: pipelines_pb2.GetPipelineRequest, context: Context
    ) -> pipelines_pb2.GetPipelineResponse:
        status = await asyncio.to_thread(self._supervisor.status, _name(request.name))
        return pipelines_pb2.GetPipelineResponse(pipeline=pipeline_status_to_proto(status))

    @map_errors
    async def StartPipeline(  # noqa: N802
        self, request: pipelines_pb2.StartPipelineRequest, context: Context
    ) -> pipelines_pb2.StartPipelineResponse:
        status = await asyncio.to_thread(self._supervisor.start, _name(request.name))
        return pipelines_pb2.StartPipelineResponse(pipeline=pipeline_status_to_proto(status))

    @map_errors
    async def StopPipeline(  # noqa: N802
        self, request: pipelines_pb2.StopPipelineRequest, context: Context
    ) -> pipelines_pb2.StopPipelineResponse:
        status = await asyncio.to_thread(self._supervisor.stop, _name(request.name))
        return pipelines_pb2.StopPipelineResponse(pipeline=pipeline_status_to_proto(status))


def pipeline_status_to_proto(status: PipelineStatus) -> pipelines_pb2.PipelineStatus:
    analytics = frame_analytics_to_proto(FrameAnalytics(zones=status.zones, lines=status.lines))
    return pipelines_pb2.PipelineStatus(
        name=status.name,
        state=_STATES[status.state],
        state_since=_timestamp(status.state_since),
        stream_id=status.stream_id,
        model_id=status.model_id,
        sources=[_source_to_proto(source) for source in status.sources],
        frames_processed=status.frames_processed,
        restarts=status.restarts,
        last_error=status.last_error,
        subscribers=status.subscribers,
        sinks=[_sink_to_proto(sink) for sink in status.sinks],
        zones=analytics.zones,
        lines=analytics.lines,
    )


def _source_to_proto(source: DeclaredSource) -> inference_pb2.VideoSource:
    if source.path is not None:
        return inference_pb2.VideoSource(path=source.path)
    if source.url is not None:
        return inference_pb2.VideoSource(url=source.url)
    return inference_pb2.VideoSource(device=source.device or 0)


def _sink_to_proto(sink: SinkStatus) -> pipelines_pb2.SinkStatus:
    proto = pipelines_pb2.SinkStatus(
        name=sink.name,
        kind=sink.kind,
        delivered=sink.delivered,
        failed=sink.failed,
        dropped=sink.dropped,
        queued=sink.queued,
        last_error=sink.last_error,
    )
    if sink.last_error_time:
        proto.last_error_time.CopyFrom(_timestamp(sink.last_error_time))
    return proto


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
