"""The manifest for `visionrpc models add`: what the user said, else what the model says about itself.

Sources, strongest first:
1. the command line's flags (`given`): they always win;
2. the export's metadata (metadata.py): an Ultralytics export names its task, classes and input size, so
   `visionrpc models add yolo11n.onnx` needs no flags; a YOLOv5 export names its classes;
3. the graph's declared input: a fixed H x W is the input size when nothing else says it.

Where a flag and the metadata disagree the flag is used and the disagreement is reported (`Filled.notes`), so
a typo does not pass silently. One disagreement is refused later instead: an input size other than the
exported one (probe.check_export_size), unless `allow_other_input_size` is given.

Example:
    >>> filled = fill_manifest(onnx.load("yolo11n.onnx", load_external_data=False), {})
    >>> filled.manifest.decoder, len(filled.manifest.class_names), filled.sources
    (<Decoder.YOLOV8: 'yolov8'>, 80, ('Ultralytics metadata: task detect, 80 class names, input 640x640',))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..domain import ChannelOrder
from ..manifest import Decoder, ModelManifest, ResizeMode
from .metadata import ExportMetadata, read_metadata
from .shapes import expected_task

if TYPE_CHECKING:  # imported where used: `onnx` costs ~1 s and ~15 MB at start; serving never needs it
    import onnx

__all__ = ["Filled", "fill_manifest", "implied_fields"]

# Ultralytics' letterbox and normalisation (and YOLOv5's): RGB, grey 114 padding, pixels / 255.
_YOLO_INPUT: dict[str, Any] = {
    "channel_order": ChannelOrder.RGB,
    "resize": ResizeMode.LETTERBOX,
    "pad_value": 114,
    "scale": 1.0 / 255.0,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
}
_ULTRALYTICS_DECODERS = {
    "detect": Decoder.YOLOV8,
    "pose": Decoder.YOLOV8_POSE,
    "segment": Decoder.YOLOV8_SEG,
    "classify": Decoder.CLASSIFICATION,
}
# Ultralytics' pose models are trained on COCO keypoints; other keypoint counts get numbered names.
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Filled:
    """The manifest, what was read from the model to make it, and the flag/metadata disagreements."""

    manifest: ModelManifest
    sources: tuple[str, ...]
    notes: tuple[str, ...]


def implied_fields(metadata: ExportMetadata) -> dict[str, Any]:
    """The manifest fields an export's metadata implies.

    Raises:
        ValueError: the metadata names a task visionrpc does not serve (Ultralytics obb).
    """
    fields: dict[str, Any] = {}
    if metadata.convention == "YOLOv5":
        fields.update(_YOLO_INPUT, decoder=Decoder.YOLOV5)
    elif metadata.task is not None:
        decoder = _ULTRALYTICS_DECODERS.get(metadata.task)
        if decoder is None:
            raise ValueError(
                f"the model's Ultralytics metadata says task {metadata.task!r}, which visionrpc does not "
                f"serve (it serves {', '.join(sorted(_ULTRALYTICS_DECODERS))})"
            )
        fields.update(_YOLO_INPUT, decoder=decoder)
        if decoder is Decoder.YOLOV8_POSE:
            count, values = metadata.keypoint_shape or (len(COCO_KEYPOINTS), 3)
            names = COCO_KEYPOINTS if count == len(COCO_KEYPOINTS) else tuple(f"k{i}" for i in range(count))
            fields.update(keypoint_names=names, keypoint_dims=values)
        if decoder is Decoder.CLASSIFICATION:
            # Ultralytics' classify_transforms: short side to imgsz, centre crop (crop_fraction 1.0), softmax
            # inside the exported graph.
            fields.update(resize=ResizeMode.CENTRE_CROP, crop_fraction=1.0, outputs_are_probabilities=True)
    if metadata.class_names:
        fields["class_names"] = metadata.class_names
    if metadata.input_size is not None:
        fields["input_width"], fields["input_height"] = metadata.input_size
    return fields


def fill_manifest(model: onnx.ModelProto, given: Mapping[str, Any]) -> Filled:
    """Builds the manifest from the flags given (manifest field -> value, unset ones left out), the model's
    metadata and its declared input.

    Raises:
        ValueError: what is still unknown (the decoder, the input size, class names), or a value the
            manifest refuses; the message says which flag supplies it.
    """
    metadata = read_metadata(model)
    implied = implied_fields(metadata) if metadata is not None else {}
    fields = {**implied, **given}
    notes = (
        [f"the model's {metadata.convention} metadata: {p}" for p in metadata.problems] if metadata else []
    )
    notes += [_disagreement(key, given[key], implied[key]) for key in given if _differs(given, implied, key)]
    if "input_width" not in fields:
        declared = _declared_size(model)
        if declared is not None:
            fields["input_width"], fields["input_height"] = declared
    if "decoder" not in fields:
        raise ValueError(
            "the model has no metadata saying what it is: give --decoder (yolov5, yolov8, classification, "
            "...)"
        )
    decoder: Decoder = fields["decoder"]
    if "input_width" not in fields:
        raise ValueError(
            "the model declares no fixed input size and no metadata gives one: give --input-size"
        )
    if not fields.get("class_names"):
        if decoder is Decoder.CENTERFACE:
            fields["class_names"] = ("face",)
        else:
            # Without names the class count cannot be checked, and results would say "41" instead of "cup".
            raise ValueError(f"--decoder {decoder.value} needs --class-names FILE or --classes A,B,C")
    if fields.get("outputs_are_probabilities") and decoder is not Decoder.CLASSIFICATION:
        raise ValueError(f"--probabilities applies to --decoder classification only, got {decoder.value}")
    fields["task"] = expected_task(decoder)
    sources = [_source(metadata, implied)] if metadata is not None and implied else []
    return Filled(ModelManifest(**fields), tuple(sources), tuple(notes))


# ----------------------------------------------------------------------------------------------- helpers


def _differs(given: Mapping[str, Any], implied: Mapping[str, Any], key: str) -> bool:
    # The input size is not overridden quietly: probe.check_export_size refuses it unless allowed.
    return key in implied and given[key] != implied[key] and key not in ("input_width", "input_height")


def _disagreement(key: str, flag: Any, metadata: Any) -> str:
    if key == "class_names":
        first = next(
            (i for i, (a, b) in enumerate(zip(flag, metadata, strict=False)) if a != b),
            min(len(flag), len(metadata)),
        )
        return (
            f"the class names given ({len(flag)}) differ from the model's metadata ({len(metadata)}) from "
            f"class {first} on; using the ones given"
        )
    given, read = _shown(flag), _shown(metadata)
    return f"{key} {given} given differs from the model's metadata ({read}); using {given}"


def _shown(value: Any) -> str:
    return str(value.value) if hasattr(value, "value") else str(value)


def _source(metadata: ExportMetadata, implied: Mapping[str, Any]) -> str:
    parts = [f"task {metadata.task}"] if metadata.task else []
    if "class_names" in implied:
        parts.append(f"{len(implied['class_names'])} class names")
    if "input_width" in implied:
        parts.append(f"input {implied['input_width']}x{implied['input_height']}")
    return f"{metadata.convention} metadata: " + ", ".join(parts)


def _declared_size(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(W, H) when the graph's image input declares both as fixed sizes."""
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value")):
        return None
    return dims[3].dim_value, dims[2].dim_value
