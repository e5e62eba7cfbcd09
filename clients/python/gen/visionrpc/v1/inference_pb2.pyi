import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from visionrpc.v1 import analytics_pb2 as _analytics_pb2
from visionrpc.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FramePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_POLICY_UNSPECIFIED: _ClassVar[FramePolicy]
    FRAME_POLICY_EVERY_FRAME: _ClassVar[FramePolicy]
    FRAME_POLICY_NEWEST_FRAME: _ClassVar[FramePolicy]

class Delivery(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELIVERY_UNSPECIFIED: _ClassVar[Delivery]
    DELIVERY_LOSSY: _ClassVar[Delivery]
    DELIVERY_EVERY_FRAME: _ClassVar[Delivery]

class FrameImage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_IMAGE_UNSPECIFIED: _ClassVar[FrameImage]
    FRAME_IMAGE_NONE: _ClassVar[FrameImage]
    FRAME_IMAGE_RAW: _ClassVar[FrameImage]
    FRAME_IMAGE_ANNOTATED: _ClassVar[FrameImage]

class FaceRedaction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACE_REDACTION_UNSPECIFIED: _ClassVar[FaceRedaction]
    FACE_REDACTION_NONE: _ClassVar[FaceRedaction]
    FACE_REDACTION_BLUR: _ClassVar[FaceRedaction]
    FACE_REDACTION_PIXELATE: _ClassVar[FaceRedaction]

class StreamContent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_CONTENT_UNSPECIFIED: _ClassVar[StreamContent]
    STREAM_CONTENT_FRAMES: _ClassVar[StreamContent]
    STREAM_CONTENT_EVENTS: _ClassVar[StreamContent]

class StreamEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_EVENT_UNSPECIFIED: _ClassVar[StreamEvent]
    STREAM_EVENT_STARTED: _ClassVar[StreamEvent]
    STREAM_EVENT_RECONNECTING: _ClassVar[StreamEvent]
    STREAM_EVENT_RECONNECTED: _ClassVar[StreamEvent]
    STREAM_EVENT_SOURCE_ENDED: _ClassVar[StreamEvent]
    STREAM_EVENT_ERROR: _ClassVar[StreamEvent]
    STREAM_EVENT_RESUMED: _ClassVar[StreamEvent]

class ResumeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESUME_OUTCOME_UNSPECIFIED: _ClassVar[ResumeOutcome]
    RESUME_OUTCOME_REPLAYED: _ClassVar[ResumeOutcome]
    RESUME_OUTCOME_PARTIAL: _ClassVar[ResumeOutcome]
    RESUME_OUTCOME_RESTARTED: _ClassVar[ResumeOutcome]

class Backpressure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKPRESSURE_UNSPECIFIED: _ClassVar[Backpressure]
    BACKPRESSURE_WAIT: _ClassVar[Backpressure]
    BACKPRESSURE_DROP: _ClassVar[Backpressure]
FRAME_POLICY_UNSPECIFIED: FramePolicy
FRAME_POLICY_EVERY_FRAME: FramePolicy
FRAME_POLICY_NEWEST_FRAME: FramePolicy
DELIVERY_UNSPECIFIED: Delivery
DELIVERY_LOSSY: Delivery
DELIVERY_EVERY_FRAME: Delivery
FRAME_IMAGE_UNSPECIFIED: FrameImage
FRAME_IMAGE_NONE: FrameImage
FRAME_IMAGE_RAW: FrameImage
FRAME_IMAGE_ANNOTATED: FrameImage
FACE_REDACTION_UNSPECIFIED: FaceRedaction
FACE_REDACTION_NONE: FaceRedaction
FACE_REDACTION_BLUR: FaceRedaction
FACE_REDACTION_PIXELATE: FaceRedaction
STREAM_CONTENT_UNSPECIFIED: StreamContent
STREAM_CONTENT_FRAMES: StreamContent
STREAM_CONTENT_EVENTS: StreamContent
STREAM_EVENT_UNSPECIFIED: StreamEvent
STREAM_EVENT_STARTED: StreamEvent
STREAM_EVENT_RECONNECTING: StreamEvent
STREAM_EVENT_RECONNECTED: StreamEvent
STREAM_EVENT_SOURCE_ENDED: StreamEvent
STREAM_EVENT_ERROR: StreamEvent
STREAM_EVENT_RESUMED: StreamEvent
RESUME_OUTCOME_UNSPECIFIED: ResumeOutcome
RESUME_OUTCOME_REPLAYED: ResumeOutcome
RESUME_OUTCOME_PARTIAL: ResumeOutcome
RESUME_OUTCOME_RESTARTED: ResumeOutcome
BACKPRESSURE_UNSPECIFIED: Backpressure
BACKPRESSURE_WAIT: Backpressure
BACKPRESSURE_DROP: Backpressure

class InferRequest(_message.Message):
    __slots__ = ("model_id", "images", "options")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    images: _containers.RepeatedCompositeFieldContainer[_types_pb2.Image]
    options: _types_pb2.InferOptions
    def __init__(self, model_id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_types_pb2.Image, _Mapping]]] = ..., options: _Optional[_Union[_types_pb2.InferOptions, _Mapping]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "engine", "predictions")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    engine: _types_pb2.EngineInfo
    predictions: _containers.RepeatedCompositeFieldContainer[_types_pb2.ImagePrediction]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., engine: _Optional[_Union[_types_pb2.EngineInfo, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[_types_pb2.ImagePrediction, _Mapping]]] = ...) -> None: ...

class VideoSource(_message.Message):
    __slots__ = ("path", "url", "device")
    PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    path: str
    url: str
    device: int
    def __init__(self, path: _Optional[str] = ..., url: _Optional[str] = ..., device: _Optional[int] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("max_fps", "frame_policy", "delivery", "frame_image", "jpeg_quality", "analytics", "face_redaction")
    MAX_FPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_POLICY_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    FRAME_IMAGE_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_FIELD_NUMBER: _ClassVar[int]
    FACE_REDACTION_FIELD_NUMBER: _ClassVar[int]
    max_fps: float
    frame_policy: FramePolicy
    delivery: Delivery
    frame_image: FrameImage
    jpeg_quality: int
    analytics: _analytics_pb2.StreamAnalytics
    face_redaction: FaceRedaction
    def __init__(self, max_fps: _Optional[float] = ..., frame_policy: _Optional[_Union[FramePolicy, str]] = ..., delivery: _Optional[_Union[Delivery, str]] = ..., frame_image: _Optional[_Union[FrameImage, str]] = ..., jpeg_quality: _Optional[int] = ..., analytics: _Optional[_Union[_analytics_pb2.StreamAnalytics, _Mapping]] = ..., face_redaction: _Optional[_Union[FaceRedaction, str]] = ...) -> None: ...

class StreamPredictionsRequest(_message.Message):
    __slots__ = ("stream_id", "model_id", "sources", "options", "stream_options", "resume", "pipeline", "content")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    STREAM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    model_id: str
    sources: _containers.RepeatedCompositeFieldContainer[VideoSource]
    options: _types_pb2.InferOptions
    stream_options: StreamOptions
    resume: StreamResume
    pipeline: str
    content: StreamContent
    def __init__(self, stream_id: _Optional[str] = ..., model_id: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[VideoSource, _Mapping]]] = ..., options: _Optional[_Union[_types_pb2.InferOptions, _Mapping]] = ..., stream_options: _Optional[_Union[StreamOptions, _Mapping]] = ..., resume: _Optional[_Union[StreamResume, _Mapping]] = ..., pipeline: _Optional[str] = ..., content: _Optional[_Union[StreamContent, str]] = ...) -> None: ...

class StreamResume(_message.Message):
    __slots__ = ("stream_id", "after_cursor", "next_sequence_numbers")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_CURSOR_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    after_cursor: int
    next_sequence_numbers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, stream_id: _Optional[str] = ..., after_cursor: _Optional[int] = ..., next_sequence_numbers: _Optional[_Iterable[int]] = ...) -> None: ...

class DropCounters(_message.Message):
    __slots__ = ("frames_skipped", "results_dropped")
    FRAMES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    frames_skipped: int
    results_dropped: int
    def __init__(self, frames_skipped: _Optional[int] = ..., results_dropped: _Optional[int] = ...) -> None: ...

class FramePrediction(_message.Message):
    __slots__ = ("source_index", "sequence_number", "source_timestamp_ms", "capture_time", "prediction", "drops", "frame_jpeg", "analytics")
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_JPEG_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_FIELD_NUMBER: _ClassVar[int]
    source_index: int
    sequence_number: int
    source_timestamp_ms: float
    capture_time: _timestamp_pb2.Timestamp
    prediction: _types_pb2.ImagePrediction
    drops: DropCounters
    frame_jpeg: bytes
    analytics: _analytics_pb2.FrameAnalytics
    def __init__(self, source_index: _Optional[int] = ..., sequence_number: _Optional[int] = ..., source_timestamp_ms: _Optional[float] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.ImagePrediction, _Mapping]] = ..., drops: _Optional[_Union[DropCounters, _Mapping]] = ..., frame_jpeg: _Optional[bytes] = ..., analytics: _Optional[_Union[_analytics_pb2.FrameAnalytics, _Mapping]] = ...) -> None: ...

class SourceInfo(_message.Message):
    __slots__ = ("source_index", "width", "height", "fps", "frame_count")
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    source_index: int
    width: int
    height: int
    fps: float
    frame_count: int
    def __init__(self, source_index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., frame_count: _Optional[int] = ...) -> None: ...

class ResumeGap(_message.Message):
    __slots__ = ("outcome", "previous_stream_id", "messages_lost")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_LOST_FIELD_NUMBER: _ClassVar[int]
    outcome: ResumeOutcome
    previous_stream_id: str
    messages_lost: int
    def __init__(self, outcome: _Optional[_Union[ResumeOutcome, str]] = ..., previous_stream_id: _Optional[str] = ..., messages_lost: _Optional[int] = ...) -> None: ...

class StreamStatus(_message.Message):
    __slots__ = ("event", "source_index", "sources", "attempt", "reason", "resume")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    event: StreamEvent
    source_index: int
    sources: _containers.RepeatedCompositeFieldContainer[SourceInfo]
    attempt: int
    reason: str
    resume: ResumeGap
    def __init__(self, event: _Optional[_Union[StreamEvent, str]] = ..., source_index: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[SourceInfo, _Mapping]]] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., resume: _Optional[_Union[ResumeGap, _Mapping]] = ...) -> None: ...

class StreamPredictionsResponse(_message.Message):
    __slots__ = ("stream_id", "model_name", "model_version", "frame", "status", "events", "cursor")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    model_name: str
    model_version: str
    frame: FramePrediction
    status: StreamStatus
    events: _analytics_pb2.AnalyticsEvents
    cursor: int
    def __init__(self, stream_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., frame: _Optional[_Union[FramePrediction, _Mapping]] = ..., status: _Optional[_Union[StreamStatus, _Mapping]] = ..., events: _Optional[_Union[_analytics_pb2.AnalyticsEvents, _Mapping]] = ..., cursor: _Optional[int] = ...) -> None: ...

class InferStreamConfig(_message.Message):
    __slots__ = ("model_id", "options", "analytics", "max_in_flight", "backpressure")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    BACKPRESSURE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    options: _types_pb2.InferOptions
    analytics: _analytics_pb2.StreamAnalytics
    max_in_flight: int
    backpressure: Backpressure
    def __init__(self, model_id: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.InferOptions, _Mapping]] = ..., analytics: _Optional[_Union[_analytics_pb2.StreamAnalytics, _Mapping]] = ..., max_in_flight: _Optional[int] = ..., backpressure: _Optional[_Union[Backpressure, str]] = ...) -> None: ...

class InputFrame(_message.Message):
    __slots__ = ("sequence_number", "image", "source_index", "timestamp_ms")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    image: _types_pb2.Image
    source_index: int
    timestamp_ms: float
    def __init__(self, sequence_number: _Optional[int] = ..., image: _Optional[_Union[_types_pb2.Image, _Mapping]] = ..., source_index: _Optional[int] = ..., timestamp_ms: _Optional[float] = ...) -> None: ...

class InferStreamRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: InferStreamConfig
    frame: InputFrame
    def __init__(self, config: _Optional[_Union[InferStreamConfig, _Mapping]] = ..., frame: _Optional[_Union[InputFrame, _Mapping]] = ...) -> None: ...

class InferStreamResponse(_message.Message):
    __slots__ = ("sequence_number", "source_index", "model_name", "model_version", "prediction", "dropped", "error", "analytics")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ANALYTICS_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    source_index: int
    model_name: str
    model_version: str
    prediction: _types_pb2.ImagePrediction
    dropped: bool
    error: _status_pb2.Status
    analytics: _analytics_pb2.FrameAnalytics
    def __init__(self, sequence_number: _Optional[int] = ..., source_index: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., prediction: _Optional[_Union[_types_pb2.ImagePrediction, _Mapping]] = ..., dropped: _Optional[bool] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., analytics: _Optional[_Union[_analytics_pb2.FrameAnalytics, _Mapping]] = ...) -> None: ...
