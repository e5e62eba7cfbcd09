"""Result values of the SDK: frozen, protobuf-free dataclasses (the raw protos ride along for `--json`).

Coordinates are pixels of the original image, (0, 0) at its top-left corner. Converting from protobuf happens
in `_convert.py` only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visionrpc.v1 import inference_pb2, models_pb2

__all__ = [
    "BoundingBox",
    "ChannelOrder",
    "Classification",
    "Detection",
    "EngineInfo",
    "ImagePrediction",
    "ImageSize",
    "InferResult",
    "Keypoint",
    "Mask",
    "ModelDefaults",
    "ModelInfo",
    "ModelInput",
    "ModelState",
    "ModelTask",
    "Timings",
]


class ChannelOrder(enum.Enum):
    """Channel order of 8-bit pixels."""

    UNSPECIFIED = "unspecified"
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"
    RGBA = "rgba"
    BGRA = "bgra"


class ModelTask(enum.Enum):
    UNSPECIFIED = "unspecified"
    DETECTION = "detection"
    CLASSIFICATION = "classification"


class ModelState(enum.Enum):
    """Lifecycle of a model on the server: AVAILABLE -> LOADING -> READY, or FAILED (retried on next use)."""

    UNSPECIFIED = "unspecified"
    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineBuildState(enum.Enum):
    """A loaded model's background engine build (TensorRT): the model serves from ONNX Runtime meanwhile."""

    UNSPECIFIED = "unspecified"
    NOT_NEEDED = "not_needed"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EngineBuild:
    """The build of a model's target engine; `progress` in [0, 1], None when the server cannot tell."""

    state: EngineBuildState
    progress: float | None = None
    reason: str = ""
    target_engine: str = ""


@dataclass(frozen=True, slots=True)
class BoundingBox:
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min


@dataclass(frozen=True, slots=True)
class Keypoint:
    """A landmark; `confidence` is 0 when the model gives no per-point confidence."""

    x: float
    y: float
    confidence: float = 0.0
    name: str = ""


@dataclass(frozen=True, slots=True)
class Mask:
    """An instance mask (segmentation models), run-length encoded over whole pixels of the original image.

    The grid covers columns [left, left + width) and rows [top, top + height); `counts` alternate background
    and object runs in row-major order, starting with background (possibly 0). `rows()` decodes it.
    """

    left: int
    top: int
    width: int
    height: int
    counts: tuple[int, ...]

    def rows(self) -> list[list[bool]]:
        """The grid as `height` rows of `width` booleans (True = object); numpy: `np.array(mask.rows())`."""
        flat: list[bool] = []
        for index, run in enumerate(self.counts):
            flat.extend([index % 2 == 1] * run)
        return [flat[row * self.width : (row + 1) * self.width] for row in range(self.height)]

    def contains(self, x: int, y: int) -> bool:
        """Whether image pixel (x, y) belongs to the object."""
        if not (self.left <= x < self.left + self.width and self.top <= y < self.top + self.height):
            return False
        position = (y - self.top) * self.width + (x - self.left)
        for index, run in enumerate(self.counts):
            if position < run:
                return index % 2 == 1
            position -= run
        return False

    @property
    def area(self) -> int:
        """Object pixels."""
        return sum(self.counts[1::2])


@dataclass(frozen=True, slots=True)
class Detection:
    box: BoundingBox
    class_id: int
    class_name: str
    confidence: float
    keypoints: tuple[Keypoint, ...] = ()
    mask: Mask | None = None  # segmentation models only
    track_id: int = 0  # streams that track: the object's id on its source, from 1; 0 when untracked


@dataclass(frozen=True, slots=True)
class Classification:
    class_id: int
    class_name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class ImageSize:
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Timings:
    """Where one image's time went on the server, in milliseconds (inference_ms is the whole batch's)."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What ran the model, e.g. engine "onnxruntime", provider "CPUExecutionProvider", device "cpu"."""

    engine: str
    provider: str = ""
    device: str = ""
    precision: str = ""


@dataclass(frozen=True, slots=True)
class ImagePrediction:
    """Predictions for one image: detectors fill `detections`, classifiers fill `classifications`."""

    image_size: ImageSize
    detections: tuple[Detection, ...] = ()
    classifications: tuple[Classification, ...] = ()
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True, slots=True)
class InferResult:
    """The answer to one `Client.infer` call; `predictions[i]` belongs to the i-th image sent.

    `response` is the raw visionrpc.v1.InferResponse, kept for lossless output (e.g. JSON); it takes no part
    in equality or repr.
    """

    model_name: str
    model_version: str
    engine: EngineInfo | None
    predictions: tuple[ImagePrediction, ...]
    response: inference_pb2.InferResponse = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ModelInput:
    """The model's own input: size, expected channel order (the server converts) and resize mode."""

    width: int
    height: int
    channel_order: ChannelOrder
    resize: str  # "letterbox" or "stretch"


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """Post-processing defaults the server applies when an `infer` option is left unset."""

    confidence_threshold: float
    iou_threshold: float
    max_detections: int
    top_k: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model of the server's repository. `proto` is the raw visionrpc.v1.Model (not compared, not shown)."""

    name: str
    version: str
    versions: tuple[str, ...]
    task: ModelTask
    decoder: str
    state: ModelState
    state_reason: str
    engine: EngineInfo | None
    input: ModelInput | None
    defaults: ModelDefaults | None
    class_names: tuple[str, ...]
    keypoint_names: tuple[str, ...]
    builtin: bool
    description: str
    # Set while loaded: the background engine build; `engine` names the engine serving right now.
    build: EngineBuild | None
    proto: models_pb2.Model = field(repr=False, compare=False)

    @property
    def id(self) -> str:
        """The fully qualified id "name/version" (or just the name when the version is unknown)."""
        return f"{self.name}/{self.version}" if self.version else self.name
