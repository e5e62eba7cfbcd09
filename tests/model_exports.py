"""Real exports for the bring-your-own-model tests, derived from the shipped yolov3-tiny weights.

No model hub is reachable here, so the shapes users meet in the wild are made from the real converted
yolov3-tiny (416x416, 80 COCO classes) by graph edits that change declarations and layout, never the
weights: the models still find the cup in coffee.png.

- `dynamic_axes`: every input and output dimension symbolic except the image channels, as torch.onnx's
  dynamic exports declare them (the converted graph itself still only runs at 416x416: its YOLO heads
  use fixed grids, so running it at another size fails, as such an export does);
- `with_metadata` + `ultralytics_metadata`: the metadata block an Ultralytics export carries, values written
  the way Ultralytics writes them (`str()` of Python values);
- `pin_batch_to_one`: a graph that declares a dynamic batch but reshapes to a batch of 1 inside;
- `derive_classifier`: [N, boxes, 5 + C] -> [N, C], per class the best box score: an image classifier;
- `derive_pose`, `derive_seg`: YOLOv8 pose and segmentation heads whose keypoints and masks are known
  functions of each box, so served results can be checked against their own boxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from conftest import cache_root
from onnx import helper, numpy_helper
from visionrpc.engines.importers.onnx_edit import derive_yolov8_layout
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.autofill import fill_manifest
from visionrpc.server.models.builtins import install_builtin
from visionrpc.server.models.importing import add_model

# A shape expression as torch's dynamo exporter writes symbolic dimensions: the unreadable kind.
LONG_SYMBOL = (
    "floor(floor(floor(floor(floor(s0/2)/2)/2)/2)/2)*floor(floor(floor(floor(floor(s1/2)/2)/2)/2)/2)*3"
)


def builtin_tiny() -> Path:
    """The installed built-in yolov3-tiny-coco version folder (installed on first use)."""
    downloads = cache_root() / "downloads"
    return install_builtin("yolov3-tiny-coco", downloads / "builtin-models", downloads)


def tiny_yolov5() -> onnx.ModelProto:
    """The built-in yolov3-tiny-coco graph: [batch, 3, 416, 416] -> [batch, 2535, 85] (YOLOv5 layout)."""
    return onnx.load(str(builtin_tiny() / "model.onnx"))


def tiny_yolov8() -> onnx.ModelProto:
    """The same weights in the YOLOv8/YOLO11 layout: [batch, 84, 2535], output `output0`."""
    return derive_yolov8_layout(tiny_yolov5())


def coco_names() -> tuple[str, ...]:
    return ModelManifest.read(builtin_tiny()).class_names


def dynamic_axes(model: onnx.ModelProto, *, long_symbols: bool = False) -> onnx.ModelProto:
    """Declares every input and output dimension symbolic (the image channels stay 3)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    weights = {initializer.name for initializer in edited.graph.initializer}
    for value in edited.graph.input:
        if value.name in weights:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, name in zip(dims, ["batch", "", "height", "width"], strict=True):
            if name:
                dim.dim_param = name
    for value in edited.graph.output:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.dim_param = "batch" if index == 0 else (LONG_SYMBOL if long_symbols else f"d{index}")
    del edited.graph.value_info[:]  # fixed intermediate shapes would contradict the declarations
    onnx.checker.check_model(edited)
    return edited


def ultralytics_metadata(
    task: str,
    names: Sequence[str],
    imgsz: tuple[int, int],
    *,
    kpt_shape: tuple[int, int] | None = None,
) -> dict[str, str]:
    """The metadata_props of an Ultralytics export (exporter.py writes `str(value)` for each)."""
    props = {
        "description": f"Ultralytics YOLO11n-{task} model",
        "author": "Ultralytics",
        "date": "2025-01-01T00:00:00",
        "version": "8.3.0",
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": "32",
        "task": task,
        "batch": "1",
        "imgsz": str(list(imgsz)),
        "names": str(dict(enumerate(names))),
        "args": str({"batch": 1, "half": False, "dynamic": True, "simplify": True, "opset": 17}),
        "channels": "3",
    }
    if kpt_shape is not None:
        props["kpt_shape"] = str(list(kpt_shape))
    return props


def with_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> onnx.ModelProto:
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    del edited.metadata_props[:]
    for key, value in props.items():
        entry = edited.metadata_props.add()
        entry.key, entry.value = key, value
    return edited


def derive_classifier(model: onnx.ModelProto) -> onnx.ModelProto:
    """[N, boxes, 5 + C] -> [N, C]: per class, the best objectness x class score over all boxes."""
    derived = onnx.ModelProto()
    derived.CopyFrom(model)
    graph = derived.graph
    source = graph.output[0].name
    classes = graph.output[0].type.tensor_type.shape.dim[2].dim_value - 5
    graph.initializer.extend(
        [
            helper.make_tensor("cls_obj_start", onnx.TensorProto.INT64, [1], [4]),
            helper.make_tensor("cls_obj_end", onnx.TensorProto.INT64, [1], [5]),
            helper.make_tensor("cls_start", onnx.TensorProto.INT64, [1], [5]),
            helper.make_tensor("cls_end", onnx.TensorProto.INT64, [1], [5 + classes]),
            helper.make_tensor("cls_axis", onnx.TensorProto.INT64, [1], [2]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node(
                "Slice", [source, "cls_obj_start", "cls_obj_end", "cls_axis"], ["cls_objectness"]
            ),
            helper.make_node("Slice", [source, "cls_start", "cls_end", "cls_axis"], ["cls_scores"]),
            helper.make_node("Mul", ["cls_scores", "cls_objectness"], ["cls_box_scores"]),
            # The graph is opset 17, where ReduceMax takes its axes as an attribute.
            helper.make_node("ReduceMax", ["cls_box_scores"], ["probabilities"], axes=[1], keepdims=0),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", classes])
    )
    onnx.checker.check_model(derived, full_check=True)
    return derived


def pin_batch_to_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces the batch (-1) of every Reshape target with 1: declared dynamic, runs batches of 1 only."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    targets = {node.input[1] for node in edited.graph.node if node.op_type == "Reshape"}
    for index, initializer in enumerate(edited.graph.initializer):
        if initializer.name in targets:
            shape = numpy_helper.to_array(initializer).copy()
            if shape.size and shape[0] == -1:
                shape[0] = 1
                edited.graph.initializer[index].CopyFrom(numpy_helper.from_array(shape, initializer.name))
    return edited


POSE_KEYPOINTS = ("top_left", "top_right", "centre", "bottom_left", "bottom_right")


def derive_pose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A YOLOv8-pose layout from a YOLOv8-layout detector: [N, 84, B] -> [N, 84 + 5 x 3, B], output `pose`.

    Each box gets five keypoints that can be checked against it: its corners and centre (x, y in input
    pixels), each with the box's best class score as visibility. Served, a detection's keypoints must be its
    own (clipped) corners, centre and confidence.
    """
    derived = onnx.ModelProto()
    derived.CopyFrom(model)
    graph = derived.graph
    source = graph.output[0].name
    dims = graph.output[0].type.tensor_type.shape.dim
    classes = dims[1].dim_value - 4
    boxes = dims[2].dim_param or dims[2].dim_value
    graph.initializer.extend(
        [
            helper.make_tensor("pose_split", onnx.TensorProto.INT64, [5], [1, 1, 1, 1, classes]),
            helper.make_tensor("pose_half", onnx.TensorProto.FLOAT, [], [0.5]),
        ]
    )
    parts = ["pose_cx", "pose_cy", "pose_w", "pose_h", "pose_classes"]
    graph.node.extend(
        [
            helper.make_node("Split", [source, "pose_split"], parts, axis=1),
            helper.make_node("Mul", ["pose_w", "pose_half"], ["pose_hw"]),
            helper.make_node("Mul", ["pose_h", "pose_half"], ["pose_hh"]),
            helper.make_node("Sub", ["pose_cx", "pose_hw"], ["pose_x1"]),
            helper.make_node("Add", ["pose_cx", "pose_hw"], ["pose_x2"]),
            helper.make_node("Sub", ["pose_cy", "pose_hh"], ["pose_y1"]),
            helper.make_node("Add", ["pose_cy", "pose_hh"], ["pose_y2"]),
            helper.make_node("ReduceMax", ["pose_classes"], ["pose_visibility"], axes=[1], keepdims=1),
            helper.make_node(
                "Concat",
                [
                    source,
                    *("pose_x1", "pose_y1", "pose_visibility", "pose_x2", "pose_y1", "pose_visibility"),
                    *("pose_cx", "pose_cy", "pose_visibility"),
                    *("pose_x1", "pose_y2", "pose_visibility", "pose_x2", "pose_y2", "pose_visibility"),
                ],
                ["pose"],
                axis=1,
            ),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info("pose", onnx.TensorProto.FLOAT, ["batch", 4 + classes + 15, boxes])
    )
    onnx.checker.check_model(derived, full_check=True)
    return derived


SEG_COEFFICIENTS = 32
SEG_STRIDE = 4


def derive_seg(model: onnx.ModelProto) -> onnx.ModelProto:
    """A YOLOv8-seg layout from a YOLOv8-layout detector: [N, 84, B] -> `seg` [N, 84 + 32, B] and `protos`
    [N, 32, H/4, W/4], the two outputs of an Ultralytics segmentation export.

    The masks are a known function of each box: prototype channels 0, 1 and 2 hold 1, x and y (input pixels
    at each prototype cell's centre; the other 29 are 0), and a box (x1, y1, w, h) gets the coefficients that
    make its mask logit (x - x1) / w + (y - y1) / h - 1. Served, a detection's mask must be the half of its
    box below the diagonal from its top-right to its bottom-left corner; that survives the letterbox mapping
    (an axis-wise affine map), so it can be checked in original-image pixels.
    """
    derived = onnx.ModelProto()
    derived.CopyFrom(model)
    graph = derived.graph
    source = graph.output[0].name
    dims = graph.output[0].type.tensor_type.shape.dim
    classes = dims[1].dim_value - 4
    boxes = dims[2].dim_param or dims[2].dim_value
    image = graph.input[0]
    height, width = (d.dim_value for d in image.type.tensor_type.shape.dim[2:])
    rows, columns = height // SEG_STRIDE, width // SEG_STRIDE
    protos = np.zeros((1, SEG_COEFFICIENTS, rows, columns), dtype=np.float32)
    protos[0, 0] = 1.0
    protos[0, 1] = (np.arange(columns, dtype=np.float32)[None, :] + 0.5) * SEG_STRIDE
    protos[0, 2] = (np.arange(rows, dtype=np.float32)[:, None] + 0.5) * SEG_STRIDE
    graph.initializer.extend(
        [
            helper.make_tensor("seg_split", onnx.TensorProto.INT64, [5], [1, 1, 1, 1, classes]),
            helper.make_tensor("seg_half", onnx.TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("seg_one", onnx.TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("seg_tiny", onnx.TensorProto.FLOAT, [], [1e-3]),
            helper.make_tensor("seg_zero", onnx.TensorProto.FLOAT, [], [0.0]),
            numpy_helper.from_array(protos, "seg_protos_constant"),
        ]
    )
    parts = ["seg_cx", "seg_cy", "seg_w", "seg_h", "seg_classes"]
    graph.node.extend(
        [
            helper.make_node("Split", [source, "seg_split"], parts, axis=1),
            helper.make_node("Max", ["seg_w", "seg_tiny"], ["seg_w_safe"]),
            helper.make_node("Max", ["seg_h", "seg_tiny"], ["seg_h_safe"]),
            helper.make_node("Mul", ["seg_w", "seg_half"], ["seg_hw"]),
            helper.make_node("Mul", ["seg_h", "seg_half"], ["seg_hh"]),
            helper.make_node("Sub", ["seg_cx", "seg_hw"], ["seg_x1"]),
            helper.make_node("Sub", ["seg_cy", "seg_hh"], ["seg_y1"]),
            helper.make_node("Div", ["seg_one", "seg_w_safe"], ["seg_c1"]),
            helper.make_node("Div", ["seg_one", "seg_h_safe"], ["seg_c2"]),
            helper.make_node("Mul", ["seg_x1", "seg_c1"], ["seg_x1w"]),
            helper.make_node("Mul", ["seg_y1", "seg_c2"], ["seg_y1h"]),
            helper.make_node("Add", ["seg_x1w", "seg_y1h"], ["seg_sum"]),
            helper.make_node("Add", ["seg_sum", "seg_one"], ["seg_sum1"]),
            helper.make_node("Neg", ["seg_sum1"], ["seg_c0"]),
            # 29 zero coefficients shaped like one row: [N, 1, B] x 0.
            helper.make_node("Mul", ["seg_cx", "seg_zero"], ["seg_c_zero"]),
            helper.make_node(
                "Concat",
                [source, "seg_c0", "seg_c1", "seg_c2", *["seg_c_zero"] * (SEG_COEFFICIENTS - 3)],
                ["seg"],
                axis=1,
            ),
            # The prototypes do not depend on the image, but carry its batch: [N, 1, 1, 1] x 0 + constant.
            helper.make_node("ReduceMean", [image.name], ["seg_image_mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Mul", ["seg_image_mean", "seg_zero"], ["seg_batch_zero"]),
            helper.make_node("Add", ["seg_batch_zero", "seg_protos_constant"], ["protos"]),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(
                "seg", onnx.TensorProto.FLOAT, ["batch", 4 + classes + SEG_COEFFICIENTS, boxes]
            ),
            helper.make_tensor_value_info(
                "protos", onnx.TensorProto.FLOAT, ["batch", SEG_COEFFICIENTS, rows, columns]
            ),
        ]
    )
    onnx.checker.check_model(derived, full_check=True)
    return derived


# The derived task-head models the conformance cases name (tests/conformance/cases.json).
CONFORMANCE_MODELS = ("tiny-pose", "tiny-seg")


def install_conformance_models(repository: Path) -> None:
    """Adds `tiny-pose` and `tiny-seg` (the heads above, with Ultralytics metadata, filled with no flags as a
    user would add them) to `repository`: the conformance harness does it before starting the server the Go
    and Node suites use, the Python suite for its own server."""
    detector = tiny_yolov8()
    exports = {
        "tiny-pose": with_metadata(
            derive_pose(detector), ultralytics_metadata("pose", coco_names(), (416, 416), kpt_shape=(5, 3))
        ),
        "tiny-seg": with_metadata(
            derive_seg(detector), ultralytics_metadata("segment", coco_names(), (416, 416))
        ),
    }
    repository.mkdir(parents=True, exist_ok=True)
    for name, model in exports.items():
        add_model(repository, name, model, fill_manifest(model, {}).manifest)
