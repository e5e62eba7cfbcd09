from visionrpc.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_TASK_UNSPECIFIED: _ClassVar[ModelTask]
    MODEL_TASK_DETECTION: _ClassVar[ModelTask]
    MODEL_TASK_CLASSIFICATION: _ClassVar[ModelTask]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]

class EngineBuildState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENGINE_BUILD_STATE_UNSPECIFIED: _ClassVar[EngineBuildState]
    ENGINE_BUILD_STATE_NOT_NEEDED: _ClassVar[EngineBuildState]
    ENGINE_BUILD_STATE_BUILDING: _ClassVar[EngineBuildState]
    ENGINE_BUILD_STATE_READY: _ClassVar[EngineBuildState]
    ENGINE_BUILD_STATE_FAILED: _ClassVar[EngineBuildState]
MODEL_TASK_UNSPECIFIED: ModelTask
MODEL_TASK_DETECTION: ModelTask
MODEL_TASK_CLASSIFICATION: ModelTask
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_FAILED: ModelState
ENGINE_BUILD_STATE_UNSPECIFIED: EngineBuildState
ENGINE_BUILD_STATE_NOT_NEEDED: EngineBuildState
ENGINE_BUILD_STATE_BUILDING: EngineBuildState
ENGINE_BUILD_STATE_READY: EngineBuildState
ENGINE_BUILD_STATE_FAILED: EngineBuildState

class ModelInput(_message.Message):
    __slots__ = ("width", "height", "channel_order", "resize")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    channel_order: _types_pb2.ChannelOrder
    resize: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., channel_order: _Optional[_Union[_types_pb2.ChannelOrder, str]] = ..., resize: _Optional[str] = ...) -> None: ...

class EngineBuild(_message.Message):
    __slots__ = ("state", "progress", "reason", "target_engine")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TARGET_ENGINE_FIELD_NUMBER: _ClassVar[int]
    state: EngineBuildState
    progress: float
    reason: str
    target_engine: str
    def __init__(self, state: _Optional[_Union[EngineBuildState, str]] = ..., progress: _Optional[float] = ..., reason: _Optional[str] = ..., target_engine: _Optional[str] = ...) -> None: ...

class ModelDefaults(_message.Message):
    __slots__ = ("confidence_threshold", "iou_threshold", "max_detections", "top_k")
    CONFIDENCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    confidence_threshold: float
    iou_threshold: float
    max_detections: int
    top_k: int
    def __init__(self, confidence_threshold: _Optional[float] = ..., iou_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ..., top_k: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "version", "versions", "task", "decoder", "state", "state_reason", "engine", "input", "defaults", "class_names", "keypoint_names", "builtin", "description", "build")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DECODER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    KEYPOINT_NAMES_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    task: ModelTask
    decoder: str
    state: ModelState
    state_reason: str
    engine: _types_pb2.EngineInfo
    input: ModelInput
    defaults: ModelDefaults
    class_names: _containers.RepeatedScalarFieldContainer[str]
    keypoint_names: _containers.RepeatedScalarFieldContainer[str]
    builtin: bool
    description: str
    build: EngineBuild
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., task: _Optional[_Union[ModelTask, str]] = ..., decoder: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., state_reason: _Optional[str] = ..., engine: _Optional[_Union[_types_pb2.EngineInfo, _Mapping]] = ..., input: _Optional[_Union[ModelInput, _Mapping]] = ..., defaults: _Optional[_Union[ModelDefaults, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., keypoint_names: _Optional[_Iterable[str]] = ..., builtin: _Optional[bool] = ..., description: _Optional[str] = ..., build: _Optional[_Union[EngineBuild, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...
