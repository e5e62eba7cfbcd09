import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionrpc.v1 import analytics_pb2 as _analytics_pb2
from visionrpc.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PipelineState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIPELINE_STATE_UNSPECIFIED: _ClassVar[PipelineState]
    PIPELINE_STATE_STOPPED: _ClassVar[PipelineState]
    PIPELINE_STATE_STARTING: _ClassVar[PipelineState]
    PIPELINE_STATE_RUNNING: _ClassVar[PipelineState]
    PIPELINE_STATE_BACKOFF: _ClassVar[PipelineState]
    PIPELINE_STATE_ENDED: _ClassVar[PipelineState]
PIPELINE_STATE_UNSPECIFIED: PipelineState
PIPELINE_STATE_STOPPED: PipelineState
PIPELINE_STATE_STARTING: PipelineState
PIPELINE_STATE_RUNNING: PipelineState
PIPELINE_STATE_BACKOFF: PipelineState
PIPELINE_STATE_ENDED: PipelineState

class SinkStatus(_message.Message):
    __slots__ = ("name", "kind", "delivered", "failed", "dropped", "queued", "last_error", "last_error_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    delivered: int
    failed: int
    dropped: int
    queued: int
    last_error: str
    last_error_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ..., queued: _Optional[int] = ..., last_error: _Optional[str] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PipelineStatus(_message.Message):
    __slots__ = ("name", "state", "state_since", "stream_id", "model_id", "sources", "frames_processed", "restarts", "last_error", "subscribers", "sinks", "zones", "lines")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_SINCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    SINKS_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: PipelineState
    state_since: _timestamp_pb2.Timestamp
    stream_id: str
    model_id: str
    sources: _containers.RepeatedCompositeFieldContainer[_inference_pb2.VideoSource]
    frames_processed: int
    restarts: int
    last_error: str
    subscribers: int
    sinks: _containers.RepeatedCompositeFieldContainer[SinkStatus]
    zones: _containers.RepeatedCompositeFieldContainer[_analytics_pb2.ZoneState]
    lines: _containers.RepeatedCompositeFieldContainer[_analytics_pb2.LineState]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[PipelineState, str]] = ..., state_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream_id: _Optional[str] = ..., model_id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[_inference_pb2.VideoSource, _Mapping]]] = ..., frames_processed: _Optional[int] = ..., restarts: _Optional[int] = ..., last_error: _Optional[str] = ..., subscribers: _Optional[int] = ..., sinks: _Optional[_Iterable[_Union[SinkStatus, _Mapping]]] = ..., zones: _Optional[_Iterable[_Union[_analytics_pb2.ZoneState, _Mapping]]] = ..., lines: _Optional[_Iterable[_Union[_analytics_pb2.LineState, _Mapping]]] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineStatus]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineStatus, _Mapping]]] = ...) -> None: ...

class GetPipelineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPipelineResponse(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: PipelineStatus
    def __init__(self, pipeline: _Optional[_Union[PipelineStatus, _Mapping]] = ...) -> None: ...

class StartPipelineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StartPipelineResponse(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: PipelineStatus
    def __init__(self, pipeline: _Optional[_Union[PipelineStatus, _Mapping]] = ...) -> None: ...

class StopPipelineRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class StopPipelineResponse(_message.Message):
    __slots__ = ("pipeline",)
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    pipeline: PipelineStatus
    def __init__(self, pipeline: _Optional[_Union[PipelineStatus, _Mapping]] = ...) -> None: ...
