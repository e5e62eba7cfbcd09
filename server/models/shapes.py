"""Does a model's shape fit its manifest? Declared shapes (from the graph) and concrete ones (from a run).

The server feeds one float32 NCHW image tensor of the manifest's input size and reads the outputs with the
manifest's decoder: `yolov5` [N, boxes, 5 + C], `yolov8` [N, 4 + C, boxes], `classification` [N, C],
`centerface` four [N, c, h, w] maps with c = 1, 2, 2, 10, `yolov8-pose` [N, 4 + C + K x D, boxes],
`yolov8-seg` [N, 4 + C + M, boxes] and prototypes [N, M, h, w]. C is checked against `class_names` when the
manifest has any.

A graph exported with dynamic axes declares symbolic dimensions ("batch", "anchors", or a long expression),
which fit anything: the declared check cannot see a YOLOv8 layout read as YOLOv5 there. `check_outputs` is
therefore written over plain dimension lists, so that the same rules (and the same hints) apply to the
concrete shapes a run produces (see probe.py).

Every problem reads "expected X, got Y", with a hint naming the likely mistake where there is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..domain import Task
from ..manifest import Decoder, ModelManifest

if TYPE_CHECKING:  # imported where used: `onnx` costs ~1 s and ~15 MB at start; serving never needs it
    import onnx

__all__ = ["Dim", "check_declared", "check_outputs", "expected_task", "show_dims"]

# A dimension: a fixed size, a symbolic name ("batch"), or None when the graph does not say.
Dim = int | str | None

CENTERFACE_CHANNELS = (("heatmap", 1), ("scale", 2), ("offset", 2), ("landmarks", 10))
# Symbolic dimensions longer than this are shown as "?": exporters write whole shape expressions there
# (several hundred characters), which buried the actual message.
_LONGEST_SHOWN_SYMBOL = 16


def expected_task(decoder: Decoder) -> Task:
    return Task.CLASSIFICATION if decoder is Decoder.CLASSIFICATION else Task.DETECTION


def check_declared(model: onnx.ModelProto, manifest: ModelManifest) -> list[str]:
    """Every problem with the graph's declared input and output shapes; dimensions it does not declare, or
    declares symbolically, fit anything."""
    outputs = {value.name: _dims(value) for value in model.graph.output}
    return _check_task(manifest) + _check_input(model, manifest) + check_outputs(outputs, manifest)


def check_outputs(outputs: Mapping[str, Sequence[Dim] | None], manifest: ModelManifest) -> list[str]:
    """Every problem with these output shapes for the manifest's decoder and class names.

    Args:
        outputs: output name -> dimensions (None: unknown), in the model's output order.
    """
    if manifest.decoder is Decoder.CENTERFACE:
        return _check_centerface(outputs, manifest)
    if not outputs:
        return ["expected at least one output, got none"]
    # As the decoders do: the output named by extra["output"], else the first one.
    name = manifest.extra.get("output")
    if name is None:
        name = next(iter(outputs))
    elif name not in outputs:
        return [f"expected an output named {name!r} (the manifest's extra.output), got {sorted(outputs)}"]
    dims = outputs[name]
    if dims is None:
        return []
    classes = len(manifest.class_names) or None
    if manifest.decoder is Decoder.CLASSIFICATION:
        if len(dims) != 2 or _differs(dims[1], classes):
            hint = _classifier_hint(dims, classes)
            return [f"expected output {name!r} shaped [N, {classes or 'C'}], got {show_dims(dims)}{hint}"]
        return []
    if manifest.decoder is Decoder.YOLOV8_POSE:
        return _check_pose(name, dims, manifest)
    if manifest.decoder is Decoder.YOLOV8_SEG:
        return _check_seg(name, dims, outputs, manifest)
    v8 = manifest.decoder is Decoder.YOLOV8
    offset = 4 if v8 else 5
    wanted = f"[N, {offset} + {classes or 'C'}, boxes]" if v8 else f"[N, boxes, {offset} + {classes or 'C'}]"
    if len(dims) != 3:
        return [f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}"]
    attributes = dims[1] if v8 else dims[2]
    if not isinstance(attributes, int):  # symbolic or undeclared: a run (probe.py) decides
        return []
    if (attributes == offset + classes) if classes is not None else _plausible(dims, v8):
        return []
    hint = _layout_hint(dims, v8, classes)
    protos = _prototypes(name, outputs, manifest)
    if v8 and classes is not None and protos is not None and attributes == 4 + classes + _channels(protos):
        hint = (
            " (with mask coefficients and prototypes: that is a segmentation export, use decoder yolov8-seg)"
        )
    return [f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}{hint}"]


def show_dims(dims: Sequence[Dim]) -> str:
    """[batch, 84, ?]: fixed sizes, short symbolic names, "?" for unknown or long symbolic dimensions."""
    shown = [
        "?" if d is None or (isinstance(d, str) and len(d) > _LONGEST_SHOWN_SYMBOL) else str(d) for d in dims
    ]
    return "[" + ", ".join(shown) + "]"


# ------------------------------------------------------------------------------------------------ checks


def _check_task(manifest: ModelManifest) -> list[str]:
    expected = expected_task(manifest.decoder)
    if manifest.task is expected:
        return []
    return [f"expected task {expected.value} for decoder {manifest.decoder.value}, got {manifest.task.value}"]


def _check_input(model: onnx.ModelProto, manifest: ModelManifest) -> list[str]:
    # Exports in the IR 3 style list every weight as a graph input too; only the others are fed.
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        return [f"expected one image input, got {len(inputs)}: {[value.name for value in inputs]}"]
    value = inputs[0]
    problems = []
    element = value.type.tensor_type.elem_type
    from onnx import TensorProto  # deferred: see TYPE_CHECKING above

    if element != TensorProto.FLOAT:
        problems.append(
            f"expected input {value.name!r} of type float32 (the server feeds float32), "
            f"got {TensorProto.DataType.Name(element).lower()}"
        )
    dims = _dims(value)
    if dims is None:
        return problems
    height, width = manifest.input_height, manifest.input_width
    if len(dims) != 4:
        return [*problems, f"expected input {value.name!r} of rank 4 [N, 3, H, W], got {show_dims(dims)}"]
    if isinstance(dims[1], int) and dims[1] != 3:
        nhwc = " (channels last? the server feeds NCHW)" if dims[3] == 3 else ""
        problems.append(f"expected input {value.name!r} shaped [N, 3, H, W], got {show_dims(dims)}{nhwc}")
    if _differs(dims[2], height) or _differs(dims[3], width):
        problems.append(
            f"expected input {value.name!r} shaped [N, 3, {height}, {width}] for the manifest's input size "
            f"{width}x{height} (W x H), got {show_dims(dims)}"
        )
    return problems


def _prototypes(
    name: str, outputs: Mapping[str, Sequence[Dim] | None], manifest: ModelManifest
) -> Sequence[Dim] | None:
    """The prototype output's dimensions as the decoder finds it (extra["protos"], else the first other
    output), None where there is none or its shape is unknown."""
    wanted = manifest.extra.get("protos")
    others = [dims for key, dims in outputs.items() if key != name and (wanted is None or key == wanted)]
    return others[0] if others else None


def _channels(dims: Sequence[Dim]) -> int:
    return dims[1] if len(dims) == 4 and isinstance(dims[1], int) else -1


def _check_seg(
    name: str, dims: Sequence[Dim], outputs: Mapping[str, Sequence[Dim] | None], manifest: ModelManifest
) -> list[str]:
    classes = len(manifest.class_names) or None
    protos = _prototypes(name, outputs, manifest)
    if protos is None and (len(outputs) < 2 or manifest.extra.get("protos") is not None):
        return [
            f"expected two outputs for decoder yolov8-seg, [N, 4 + C + M, boxes] and mask prototypes "
            f"[N, M, h, w], got {sorted(outputs)} (a single output: use decoder yolov8 or yolov8-pose)"
        ]
    problems = []
    if protos is not None and len(protos) != 4:
        problems.append(f"expected mask prototypes shaped [N, M, h, w], got {show_dims(protos)}")
    masks = _channels(protos) if protos is not None else -1
    wanted = f"[N, 4 + {classes or 'C'} + {masks if masks > 0 else 'M'}, boxes]"
    if len(dims) != 3:
        return [*problems, f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}"]
    attributes = dims[1]
    if (
        isinstance(attributes, int)
        and classes is not None
        and masks > 0
        and attributes != 4 + classes + masks
    ):
        hint = " (no mask coefficients: use decoder yolov8)" if attributes == 4 + classes else ""
        problems.append(f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}{hint}")
    return problems


def _check_pose(name: str, dims: Sequence[Dim], manifest: ModelManifest) -> list[str]:
    classes, points, values = len(manifest.class_names), len(manifest.keypoint_names), manifest.keypoint_dims
    wanted = f"[N, 4 + {classes} + {points} x {values}, boxes]"
    if len(dims) != 3:
        return [f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}"]
    attributes = dims[1]
    if not isinstance(attributes, int) or attributes == 4 + classes + points * values:
        return []
    hint = ""
    if attributes == 4 + classes:
        hint = " (no keypoints: that is a plain YOLOv8 detector, use decoder yolov8)"
    elif (attributes - 4 - classes) % values == 0 and attributes > 4 + classes:
        hint = (
            f" (the model has {(attributes - 4 - classes) // values} keypoints, the manifest {points} names)"
        )
    return [f"expected output {name!r} shaped {wanted}, got {show_dims(dims)}{hint}"]


def _plausible(dims: Sequence[Dim], v8: bool) -> bool:
    """Without class names: at least one class, and not obviously the other layout (a YOLO head has far
    more boxes than attributes, so a fixed "attributes" axis longer than the boxes axis is the other one)."""
    attributes, boxes = (dims[1], dims[2]) if v8 else (dims[2], dims[1])
    assert isinstance(attributes, int)
    if attributes <= (4 if v8 else 5):
        return False
    return not (isinstance(boxes, int) and attributes > boxes)


def _layout_hint(dims: Sequence[Dim], v8: bool, classes: int | None) -> str:
    """Names the likely mistake: the other YOLO layout (the most common mix-up), or a class list's length."""
    other = (
        " (that is the YOLOv5 layout: use decoder yolov5)"
        if v8
        else " (that is the YOLOv8/YOLO11 layout: use decoder yolov8)"
    )
    attributes, boxes = (dims[1], dims[2]) if v8 else (dims[2], dims[1])
    if classes is None:
        if isinstance(attributes, int) and isinstance(boxes, int) and attributes > boxes:
            return other
        return ""
    if not v8 and dims[1] == 4 + classes:
        return other
    if v8 and dims[2] == 5 + classes:
        return other
    offset = 4 if v8 else 5
    if isinstance(attributes, int) and isinstance(boxes, int) and attributes > boxes:
        return other
    if isinstance(attributes, int) and attributes > offset:
        return f" (the model has {attributes - offset} classes, the manifest {classes} class names)"
    return ""


def _classifier_hint(dims: Sequence[Dim], classes: int | None) -> str:
    if len(dims) == 2 and isinstance(dims[1], int) and classes is not None:
        return f" (the model has {dims[1]} classes, the manifest {classes} class names)"
    if len(dims) == 3:
        return " (a detector's output: use decoder yolov5 or yolov8)"
    return ""


def _check_centerface(outputs: Mapping[str, Sequence[Dim] | None], manifest: ModelManifest) -> list[str]:
    roles = [role for role, _ in CENTERFACE_CHANNELS]
    named = manifest.extra.get("outputs")
    if isinstance(named, Mapping):
        missing = [named.get(role) for role in roles if named.get(role) not in outputs]
        if missing:
            return [f"expected outputs {missing} (the manifest's extra.outputs), got {sorted(outputs)}"]
        names = [str(named[role]) for role in roles]
    else:
        names = list(outputs)[:4]
        if len(names) != 4:
            return [f"expected 4 outputs ({', '.join(roles)}), got {len(outputs)}: {list(outputs)}"]
    problems = []
    for (role, channels), name in zip(CENTERFACE_CHANNELS, names, strict=True):
        dims = outputs[name]
        if dims is not None and (len(dims) != 4 or _differs(dims[1], channels)):
            wanted = f"[N, {channels}, h, w]"
            problems.append(f"expected {role} output {name!r} shaped {wanted}, got {show_dims(dims)}")
    return problems


# ----------------------------------------------------------------------------------------------- helpers


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _differs(dim: Dim, expected: int | None) -> bool:
    """A fixed dimension that is not the expected size; symbolic or unknown ones fit anything."""
    return expected is not None and isinstance(dim, int) and dim != expected
