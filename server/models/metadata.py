"""What an ONNX file says about itself: class names, input size, task and stride from its metadata.

ONNX models carry string key/value pairs (`metadata_props`). Two conventions are read:

- **Ultralytics** (YOLOv8, YOLO11 and later exports of `ultralytics`): `task` (detect, segment, pose,
  classify, obb), `imgsz` ("[H, W]"), `stride` ("32"), `names` ("{0: 'person', 1: 'bicycle', ...}"),
  `kpt_shape` ("[17, 3]", pose only), `author` ("Ultralytics"), `args` (the export arguments, e.g.
  dynamic). Values are Python literals, read with `ast.literal_eval` (never evaluated as code).
- **YOLOv5** (`export.py` of ultralytics/yolov5): `stride` and `names` only; the output layout is YOLOv5's.

Anything else has no metadata we know: the command line says what the model is.

The keys sit in the ModelProto after the graph, so `read_metadata` scans the file's top-level protobuf fields
and skips the graph (weights included) without parsing it: a few reads, whatever the model's size. The model
manager does this at every load to check the input size against `imgsz`.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `onnx` costs ~1 s and ~15 MB at start; serving never needs it
    import onnx

__all__ = ["ExportMetadata", "parse_metadata", "read_metadata", "read_metadata_props"]

logger = logging.getLogger(__name__)

_METADATA_FIELD = 14  # ModelProto.metadata_props
_WIRE_VARINT, _WIRE_FIXED64, _WIRE_LENGTH, _WIRE_FIXED32 = 0, 1, 2, 5
ULTRALYTICS_TASKS = ("detect", "segment", "pose", "classify", "obb")


@dataclass(frozen=True, slots=True)
class ExportMetadata:
    """What the exporter recorded. `input_size` is (W, H) as everywhere in visionrpc (Ultralytics writes
    imgsz as [H, W]); `problems` lists values that were present but unreadable."""

    convention: str  # "Ultralytics" or "YOLOv5"
    task: str | None = None
    class_names: tuple[str, ...] = ()
    input_size: tuple[int, int] | None = None
    stride: int | None = None
    keypoint_shape: tuple[int, int] | None = None  # (keypoints, values per keypoint: 2 = xy, 3 = xy + conf)
    problems: tuple[str, ...] = ()


def read_metadata(source: Path | onnx.ModelProto) -> ExportMetadata | None:
    """The metadata of an ONNX file or loaded model, or None when it follows no convention we read."""
    if isinstance(source, Path):
        props = read_metadata_props(source)
    else:
        props = {prop.key: prop.value for prop in source.metadata_props}
    return parse_metadata(props)


def parse_metadata(props: Mapping[str, str]) -> ExportMetadata | None:
    ultralytics = props.get("author", "").startswith("Ultralytics") or {"task", "imgsz"} <= props.keys()
    if ultralytics:
        convention = "Ultralytics"
    elif {"stride", "names"} <= props.keys():
        convention = "YOLOv5"
    else:
        return None
    problems: list[str] = []
    task = props.get("task") if ultralytics else None
    if task is not None and task not in ULTRALYTICS_TASKS:
        problems.append(f"expected task one of {', '.join(ULTRALYTICS_TASKS)}, got {task!r}")
        task = None
    names = _names(props.get("names"), problems)
    size = _imgsz(props.get("imgsz"), problems)
    stride = _integer(props.get("stride"), "stride", problems)
    keypoints = _pair(props.get("kpt_shape"), "kpt_shape", problems)
    return ExportMetadata(convention, task, names, size, stride, keypoints, tuple(problems))


def read_metadata_props(path: Path) -> dict[str, str]:
    """The `metadata_props` of the ONNX file at `path`, reading past every other top-level field.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file is not a protobuf message (not an ONNX model).
    """
    props: dict[str, str] = {}
    with path.open("rb") as stream:
        while (tag := _varint(stream, eof_ok=True)) is not None:
            field, wire = tag >> 3, tag & 7
            if wire == _WIRE_VARINT:
                _varint(stream)
            elif wire == _WIRE_FIXED64:
                stream.seek(8, 1)
            elif wire == _WIRE_FIXED32:
                stream.seek(4, 1)
            elif wire == _WIRE_LENGTH:
                length = _varint(stream)
                assert length is not None
                if field == _METADATA_FIELD:
                    import onnx  # deferred: see TYPE_CHECKING above

                    entry = onnx.StringStringEntryProto.FromString(stream.read(length))
                    props[entry.key] = entry.value
                else:
                    stream.seek(length, 1)
            else:
                raise ValueError(f"{path} is not an ONNX model (protobuf wire type {wire})")
    return props


# ----------------------------------------------------------------------------------------------- helpers


def _varint(stream: IO[bytes], *, eof_ok: bool = False) -> int | None:
    result, shift = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            if eof_ok and shift == 0:
                return None
            raise ValueError("truncated protobuf varint")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed protobuf varint")


def _literal(text: str | None, key: str, problems: list[str]) -> Any:
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        problems.append(f"metadata {key} is not a Python literal: {text[:80]!r}")
        return None


def _names(text: str | None, problems: list[str]) -> tuple[str, ...]:
    value = _literal(text, "names", problems)
    if value is None:
        return ()
    if isinstance(value, list | tuple) and all(isinstance(n, str) for n in value):
        return tuple(value)
    if isinstance(value, dict) and all(isinstance(k, int) and isinstance(n, str) for k, n in value.items()):
        if sorted(value) != list(range(len(value))):
            problems.append(f"expected names numbered 0..{len(value) - 1}, got ids {sorted(value)[:10]}...")
            return ()
        return tuple(value[i] for i in range(len(value)))
    problems.append(f"expected names as a list or an {{id: name}} dict, got {str(text)[:80]!r}")
    return ()


def _imgsz(text: str | None, problems: list[str]) -> tuple[int, int] | None:
    value = _literal(text, "imgsz", problems)
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return value, value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        height, width = value
        return width, height
    problems.append(f"expected imgsz as [H, W] or one size, got {str(text)[:80]!r}")
    return None


def _integer(text: str | None, key: str, problems: list[str]) -> int | None:
    value = _literal(text, key, problems)
    if value is None:
        return None
    if isinstance(value, int) and value > 0:
        return value
    problems.append(f"expected {key} as a positive integer, got {str(text)[:80]!r}")
    return None


def _pair(text: str | None, key: str, problems: list[str]) -> tuple[int, int] | None:
    value = _literal(text, key, problems)
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    ):
        return value[0], value[1]
    problems.append(f"expected {key} as [count, values], got {str(text)[:80]!r}")
    return None
