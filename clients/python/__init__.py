"""visionrpc.client — the Python SDK of the visionrpc inference server.

    from visionrpc.client import Client, NotFoundError

    with Client("127.0.0.1:50051") as client:
        result = client.infer(["coffee.png", "motorcycle_left.png"], confidence=0.5)
        for prediction in result.predictions:
            for det in prediction.detections:
                print(det.class_name, f"{det.confidence:.2f}", det.box.as_tuple())

The SDK depends on grpcio, grpcio-status, grpcio-health-checking, protobuf, numpy, the generated
`visionrpc.v1` messages and `visionrpc.common` (drawing, shared with the server) only; it never imports the
server.
"""

from visionrpc.common.annotate import annotate

from ._analytics import (
    Analytics,
    AnalyticsEvent,
    FrameAnalytics,
    Line,
    LineState,
    Tracking,
    Zone,
    ZoneOccupant,
    ZoneState,
)
from ._channel import DEFAULT_SERVICE_CONFIG, tls_credentials
from ._client import DEFAULT_ADDRESS, USE_CLIENT_DEFAULT, Client, UseClientDefault
from ._convert import ImageInput
from ._exceptions import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnexpectedStatusError,
    VisionRpcError,
    from_rpc_error,
    from_status,
)
from ._infer_stream import FrameResult, InferStream, InputFrame
from ._pipeline_key import PIPELINE_KEY_HEADER, pipeline_key
from ._pipelines import LineCounts, PipelineInfo, Pipelines, PipelineState, SinkStatus, ZoneCounts
from ._resume import ResumePolicy
from ._shared_memory import SharedMemoryImage, SharedMemoryRegion
from ._stream import (
    PredictionStream,
    ResumeInfo,
    SourceInfo,
    StreamEvent,
    StreamEvents,
    StreamFrame,
    StreamStatus,
)
from ._types import (
    BoundingBox,
    ChannelOrder,
    Classification,
    Detection,
    EngineBuild,
    EngineBuildState,
    EngineInfo,
    ImagePrediction,
    ImageSize,
    InferResult,
    Keypoint,
    Mask,
    ModelDefaults,
    ModelInfo,
    ModelInput,
    ModelState,
    ModelTask,
    Timings,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_SERVICE_CONFIG",
    "PIPELINE_KEY_HEADER",
    "USE_CLIENT_DEFAULT",
    "Analytics",
    "AnalyticsEvent",
    "BoundingBox",
    "CancelledError",
    "ChannelOrder",
    "Classification",
    "Client",
    "DeadlineExceededError",
    "Detection",
    "EngineBuild",
    "EngineBuildState",
    "EngineInfo",
    "FailedPreconditionError",
    "FieldViolation",
    "FrameAnalytics",
    "FrameResult",
    "ImageInput",
    "ImagePrediction",
    "ImageSize",
    "InferResult",
    "InferStream",
    "InputFrame",
    "InternalError",
    "InvalidArgumentError",
    "Keypoint",
    "Line",
    "LineCounts",
    "LineState",
    "Mask",
    "ModelDefaults",
    "ModelInfo",
    "ModelInput",
    "ModelState",
    "ModelTask",
    "NotFoundError",
    "PermissionDeniedError",
    "PipelineInfo",
    "PipelineState",
    "Pipelines",
    "PredictionStream",
    "ResourceExhaustedError",
    "ResumeInfo",
    "ResumePolicy",
    "SharedMemoryImage",
    "SharedMemoryRegion",
    "SinkStatus",
    "SourceInfo",
    "StreamEvent",
    "StreamEvents",
    "StreamFrame",
    "StreamStatus",
    "Timings",
    "Tracking",
    "UnauthenticatedError",
    "UnavailableError",
    "UnexpectedStatusError",
    "UseClientDefault",
    "VisionRpcError",
    "Zone",
    "ZoneCounts",
    "ZoneOccupant",
    "ZoneState",
    "annotate",
    "from_rpc_error",
    "from_status",
    "pipeline_key",
    "tls_credentials",
]


def _report_public_module(names: list[str]) -> None:
    # Classes report the public module, so tracebacks and reprs read `visionrpc.client.NotFoundError`.
    namespace = globals()
    for name in names:
        obj = namespace[name]
        if isinstance(obj, type) and obj.__module__.startswith(f"{__name__}."):
            obj.__module__ = __name__


_report_public_module(__all__)
del _report_public_module
