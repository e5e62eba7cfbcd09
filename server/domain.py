"""Protobuf-free domain values shared by the model manager, the processing code and the servicers.

Everything here is a frozen dataclass: values cross threads (request threads, batcher, stream pipelines) and
must never be mutated after they are built. Validators say "expected X, got Y" so a bad value is caught where
it is made, not three layers later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoundingBox",
    "ChannelOrder",
    "Classification",
    "Detection",
    "ImageSize",
    "InferOptions",
    "Keypoint",
    "Mask",
    "Prediction",
    "Task",
    "Timings",
]


class ChannelOrder(enum.Enum):
    """Channel order of 8-bit pixels, both for raw request images and for what a model expects."""

    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"
    RGBA = "rgba"
    BGRA = "bgra"

    @property
    def channels(self) -> int:
        return {"rgb": 3, "bgr": 3, "gray": 1, "rgba": 4, "bgra": 4}[self.value]


class Task(enum.Enum):
    DETECTION = "detection"
    CLASSIFICATION = "classification"


@dataclass(frozen=True, slots=True)
class ImageSize:
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"expected positive width and height, got {self.width}x{self.height}")

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """Axis-aligned box in pixel coordinates of the original image (x_min, y_min inclusive corner)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        if self.x_max < self.x_min or self.y_max < self.y_min:
            raise ValueError(f"expected x_min <= x_max and y_min <= y_max, got {self.as_tuple()}")

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)

    @property
    def area(self) -> float:
        return (self.x_max - self.x_min) * (self.y_max - self.y_min)


@dataclass(frozen=True, slots=True)
class Keypoint:
    """A landmark (e.g. an eye of a CenterFace detection); confidence is 0 when the model gives none."""

    x: float
    y: float
    confidence: float = 0.0
    name: str = ""


@dataclass(frozen=True, slots=True)
class Mask:
    """A binary instance mask over whole pixels of the original image, run-length encoded.

    The grid covers columns [left, left + width) and rows [top, top + height) (the pixels whose centre lies
    in the detection's box); `counts` alternate background and object runs in row-major order, starting
    with background (possibly 0), and add up to width * height. The contract's `Mask` says why.
    """

    left: int
    top: int
    width: int
    height: int
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if min(self.left, self.top, self.width, self.height) < 0:
            raise ValueError(
                f"expected non-negative left, top, width, height, got "
                f"{(self.left, self.top, self.width, self.height)}"
            )
        total = sum(self.counts)
        if total != self.width * self.height:
            raise ValueError(f"expected runs adding up to {self.width * self.height} pixels, got {total}")

    @classmethod
    def encode(cls, left: int, top: int, pixels: npt.NDArray[np.bool_]) -> Mask:
        """Run-length encodes an (height, width) boolean grid whose top-left pixel is (left, top)."""
        height, width = pixels.shape
        flat = pixels.ravel()
        if flat.size == 0:
            return cls(left, top, width, height, ())
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        runs = np.diff(np.concatenate(([0], changes, [flat.size])))
        counts = ([0] if flat[0] else []) + runs.tolist()
        return cls(left, top, width, height, tuple(counts))

    def decode(self) -> npt.NDArray[np.bool_]:
        """The (height, width) boolean grid."""
        values = np.arange(len(self.counts)) % 2 == 1
        return np.repeat(values, self.counts).reshape(self.height, self.width)

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
    mask: Mask | None = None
    track_id: int = 0  # streams that track: the object's id on its source, from 1; 0 when untracked

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"expected confidence in [0, 1], got {self.confidence}")


@dataclass(frozen=True, slots=True)
class Classification:
    class_id: int
    class_name: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Timings:
    """Where the time of one image went, in milliseconds."""

    decode_ms: float = 0.0
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.queue_ms + self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass(frozen=True, slots=True)
class Prediction:
    """The result for one image: detections for detectors, top-k classifications for classifiers."""

    image_size: ImageSize
    detections: tuple[Detection, ...] = ()
    classifications: tuple[Classification, ...] = ()
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True, slots=True)
class InferOptions:
    """Per-request post-processing options; `None` means "use the model's default"."""

    confidence_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    class_ids: frozenset[int] = frozenset()
    class_names: frozenset[str] = frozenset()
    top_k: int | None = None

    def __post_init__(self) -> None:
        for name in ("confidence_threshold", "iou_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:  # also rejects NaN: its comparisons are False
                raise ValueError(f"expected {name} in [0, 1], got {value}")
        if self.max_detections is not None and self.max_detections < 1:
            raise ValueError(f"expected max_detections >= 1, got {self.max_detections}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"expected top_k >= 1, got {self.top_k}")


# An image as the processing code sees it: HxWxC uint8, in the channel order recorded next to it.
ImageArray = npt.NDArray[np.uint8]
