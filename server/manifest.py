"""The manifest next to each model's ONNX file: everything needed to feed the model and read its outputs.

A model version lives at `<repository>/<name>/<version>/` and holds `manifest.json` plus the ONNX file it
names. Example manifest for a YOLOv8 export:

    {
      "task": "detection",
      "decoder": "yolov8",
      "onnx_file": "model.onnx",
      "input_width": 640, "input_height": 640,
      "channel_order": "rgb", "resize": "letterbox",
      "scale": 0.00392156862745098, "mean": [0, 0, 0], "std": [1, 1, 1],
      "class_names": ["person", "bicycle", ...]
    }
"""

from __future__ import annotations

import enum
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from .domain import ChannelOrder, Task

__all__ = [
    "ENGINE_CHOICES",
    "MANIFEST_FILE",
    "MAX_INSTANCES",
    "Decoder",
    "FileSignature",
    "Interpolation",
    "ModelManifest",
    "PadPosition",
    "ResizeMode",
    "ResolvedModel",
    "file_signature",
]

MANIFEST_FILE = "manifest.json"
ENGINE_CHOICES = ("onnxruntime", "tensorrt", "auto")
# More engine instances than this per model is a typo, not a plan: each holds its own session and buffers.
MAX_INSTANCES = 16


class Decoder(enum.Enum):
    """How the raw output tensors are read."""

    YOLOV5 = "yolov5"  # [N, boxes, 5 + C]: cx, cy, w, h (input pixels), objectness, class scores
    YOLOV8 = "yolov8"  # [N, 4 + C, boxes]: cx, cy, w, h (input pixels), class scores; no objectness
    CLASSIFICATION = "classification"  # [N, C] logits (or probabilities, see `outputs_are_probabilities`)
    CENTERFACE = "centerface"  # heatmap, scale, offset, landmarks at stride 4
    # [N, 4 + C + K * D, boxes]: YOLOv8's layout followed by K keypoints of D values (x, y in input pixels,
    # then a visibility score when D is 3) per box; K = len(keypoint_names), D = keypoint_dims.
    YOLOV8_POSE = "yolov8-pose"
    # Two outputs: [N, 4 + C + M, boxes] (YOLOv8's layout followed by M mask coefficients per box) and the
    # prototypes [N, M, H/4, W/4]; a box's mask is sigmoid(coefficients @ prototypes), cropped to the box.
    YOLOV8_SEG = "yolov8-seg"


class ResizeMode(enum.Enum):
    LETTERBOX = "letterbox"  # keep aspect ratio, pad with `pad_value` at `pad_position`
    STRETCH = "stretch"  # resize to the input size ignoring aspect ratio
    # Classifiers trained the torchvision/timm way: scale so the input covers `1 / crop_fraction` of the
    # image's short side (224 / 0.875 = 256, i.e. Resize(256) + CenterCrop(224)), then cut the centre.
    CENTRE_CROP = "centre-crop"

    @classmethod
    def _missing_(cls, value: object) -> ResizeMode | None:
        return cls.CENTRE_CROP if value == "center-crop" else None  # the American spelling is accepted


class PadPosition(enum.Enum):
    """Where a letterboxed image sits in the input: centred (YOLOv5/Ultralytics) or at the top left
    (YOLOX, and exports whose reference pipeline pads only right and bottom)."""

    CENTRE = "centre"
    TOP_LEFT = "top-left"

    @classmethod
    def _missing_(cls, value: object) -> PadPosition | None:
        return cls.CENTRE if value == "center" else None


class Interpolation(enum.Enum):
    """The resampling filter of the resize (OpenCV's): `linear` as Ultralytics; `cubic` or `area` where a
    reference pipeline uses bicubic (timm) or an antialiased downscale (PIL)."""

    NEAREST = "nearest"
    LINEAR = "linear"
    CUBIC = "cubic"
    AREA = "area"
    LANCZOS = "lanczos"


@dataclass(frozen=True, slots=True)
class ModelManifest:
    task: Task
    decoder: Decoder
    input_width: int
    input_height: int
    class_names: tuple[str, ...]
    onnx_file: str = "model.onnx"
    channel_order: ChannelOrder = ChannelOrder.RGB
    resize: ResizeMode = ResizeMode.LETTERBOX
    pad_value: int = 114
    pad_position: PadPosition = PadPosition.CENTRE
    # centre-crop only: the input covers this fraction of the resized image's short side (timm's crop_pct).
    crop_fraction: float = 0.875
    interpolation: Interpolation = Interpolation.LINEAR
    # The model sees (pixel * scale - mean) / std, per channel in `channel_order`.
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    keypoint_names: tuple[str, ...] = ()
    keypoint_dims: int = 3  # yolov8-pose: values per keypoint, 2 (x, y) or 3 (x, y, visibility)
    outputs_are_probabilities: bool = False
    default_confidence: float = 0.25
    default_iou: float = 0.45
    default_max_detections: int = 300
    default_top_k: int = 5
    # Detectors: NMS across classes (a box suppresses overlapping boxes of any class), as some reference
    # pipelines do; off, boxes only suppress boxes of their own class.
    agnostic_nms: bool = False
    # Serve at an input size other than the one the model's metadata says it was exported for (probe.py).
    allow_other_input_size: bool = False
    description: str = ""
    # Engine for this model, overriding the server's --engine: "onnxruntime", "tensorrt" or "auto"; None
    # follows the server. E.g. "onnxruntime" for a model with operators TensorRT cannot parse.
    engine: str | None = None
    # Dynamic batching for this model, overriding the server's --max-batch-size / --max-queue-delay-ms; None
    # follows the server. E.g. max_batch_size 1 for a model that misbehaves batched.
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    # Engine instances serving this model at once (Triton's instance groups): each its own ONNX Runtime
    # session with a share of the intra-op threads (or TensorRT context and stream); None follows the server.
    instances: int | None = None
    extra: dict[str, Any] = field(default_factory=dict[str, Any], compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.input_width <= 0 or self.input_height <= 0:
            raise ValueError(f"expected a positive input size, got {self.input_width}x{self.input_height}")
        if self.channel_order not in (ChannelOrder.RGB, ChannelOrder.BGR):
            raise ValueError(f"expected channel_order rgb or bgr, got {self.channel_order.value}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError(f"expected three means and three non-zero stds, got {self.mean} and {self.std}")
        if "/" in self.onnx_file or self.onnx_file.startswith("."):
            raise ValueError(f"expected a plain file name for onnx_file, got {self.onnx_file!r}")
        if self.engine is not None and self.engine not in ENGINE_CHOICES:
            raise ValueError(f"expected engine {', '.join(ENGINE_CHOICES)} or null, got {self.engine!r}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"expected max_batch_size >= 1 or null, got {self.max_batch_size}")
        if self.max_queue_delay_ms is not None and not 0.0 <= self.max_queue_delay_ms <= 1000.0:
            raise ValueError(
                f"expected max_queue_delay_ms in [0, 1000] or null, got {self.max_queue_delay_ms}"
            )
        if self.instances is not None and (
            type(self.instances) is not int or not 1 <= self.instances <= MAX_INSTANCES
        ):
            raise ValueError(f"expected instances in [1, {MAX_INSTANCES}] or null, got {self.instances!r}")
        if self.keypoint_dims not in (2, 3):
            raise ValueError(f"expected keypoint_dims 2 or 3, got {self.keypoint_dims}")
        if self.decoder is Decoder.YOLOV8_POSE and not self.keypoint_names:
            raise ValueError("the yolov8-pose decoder needs keypoint_names (one per keypoint)")
        if not 0 <= self.pad_value <= 255:
            raise ValueError(f"expected pad_value in [0, 255], got {self.pad_value}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"expected crop_fraction in (0, 1], got {self.crop_fraction}")
        for name in ("default_confidence", "default_iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"expected {name} in [0, 1], got {value}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        """Builds a manifest from its JSON object.

        Raises:
            ValueError: unknown keys, a missing required key, a value of the wrong type or out of range.
        """
        try:
            return cls._from_dict(data)
        except TypeError as exc:  # a wrong type ("input_width": "416", "class_names": 3) or a missing key
            raise ValueError(f"invalid manifest: {exc}") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown manifest keys {unknown}; expected a subset of {sorted(known)}")
        if "task" not in data or "decoder" not in data:
            raise ValueError("a manifest needs at least 'task', 'decoder', 'input_width' and 'input_height'")
        values = dict(data)
        values["task"] = Task(values["task"])
        values["decoder"] = Decoder(values["decoder"])
        if "channel_order" in values:
            values["channel_order"] = ChannelOrder(values["channel_order"])
        if "resize" in values:
            values["resize"] = ResizeMode(values["resize"])
        if "pad_position" in values:
            values["pad_position"] = PadPosition(values["pad_position"])
        if "interpolation" in values:
            values["interpolation"] = Interpolation(values["interpolation"])
        for key in ("class_names", "keypoint_names", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        values.setdefault("class_names", ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, enum.Enum):
                data[key] = value.value
            elif isinstance(value, tuple):
                data[key] = [*value]
        return data

    @classmethod
    def read(cls, directory: Path) -> ModelManifest:
        """Reads `directory/manifest.json`; an unchanged file is parsed once (see `_cached`).

        Raises:
            ValueError: missing, not JSON, or not a valid manifest (the message names the file).
        """
        path = directory / MANIFEST_FILE
        try:
            signature = file_signature(path)
        except FileNotFoundError:
            raise ValueError(f"{path} is missing") from None
        cached = _READ_CACHE.get(path)
        if cached is not None and cached[0] == signature:
            return cached[1]
        manifest = cls._read_uncached(path)
        if signature.settled():
            _READ_CACHE[path] = (signature, manifest)
        return manifest

    @classmethod
    def _read_uncached(cls, path: Path) -> ModelManifest:
        try:
            data: object = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path} is missing") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(cast("dict[str, Any]", data))

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True, slots=True)
class FileSignature:
    """What identifies one version of a file or directory without reading it: a cache key.

    Timestamps tick coarsely (a few ms on Linux), so an entry changed within `SETTLE_S` of now may change
    again without its signature changing; such entries are not cached (git's "racy" rule).
    """

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    SETTLE_S = 1.0

    def settled(self) -> bool:
        return time.time_ns() - max(self.mtime_ns, self.ctime_ns) > self.SETTLE_S * 1e9


def file_signature(path: Path) -> FileSignature:
    """Raises OSError (FileNotFoundError, ...) like os.stat."""
    st = os.stat(path)
    return FileSignature(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# Every request resolves its model, and reading + parsing the manifest was ~0.1-0.4 ms of it. Manifests are
# frozen, so one parsed copy per unchanged file can be shared; the map holds one entry per model version.
_READ_CACHE: dict[Path, tuple[FileSignature, ModelManifest]] = {}


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A concrete model version on disk."""

    name: str
    version: str
    directory: Path
    manifest: ModelManifest
    builtin: bool

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def onnx_path(self) -> Path:
        return self.directory / self.manifest.onnx_file
