"""Darknet (cfg + weights) -> ONNX, with onnx and numpy only.

The converted graph takes `images` [batch, C, H, W] float32 (RGB in [0, 1], as Darknet feeds its nets; H and
W fixed by `[net]`, batch dynamic) and returns `output` [batch, boxes, 5 + classes] in the YOLOv5 layout: the
YOLO heads are decoded inside the graph to cx, cy, w, h in input pixels, objectness and per-class scores
(all logistic, as Darknet's [yolo] layer computes them). Heads are concatenated in cfg order; within a head
boxes run anchor-major, then row, then column.

Supported layers: [convolutional] (batch norm folded into the conv), [maxpool] (Darknet's asymmetric padding,
so `size=2 stride=1` keeps the spatial size), [route] (with `groups`/`group_id`), [upsample], [shortcut],
[yolo]. Anything else, or an option that changes inference semantics and is not implemented, raises
`DarknetCfgError` instead of producing a silently different model.

Weights are checked exactly: after the header, the file must hold precisely the float32 values the cfg asks
for; a short or over-long file raises `DarknetWeightsError` with both counts.

Example:
    >>> conversion = convert_darknet(Path("yolov3-tiny.cfg"), Path("yolov3-tiny.weights"))
    >>> conversion.weights_consumed == conversion.weights_total
    True
    >>> onnx.save(conversion.model, "yolov3-tiny.onnx")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .darknet_cfg import CfgSection, DarknetCfgError, parse_cfg, read_cfg
from .darknet_weights import (
    DarknetWeightsError,
    WeightCursor,
    WeightsHeader,
    open_weights,
    read_weights_header,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DarknetCfgError",
    "DarknetConversion",
    "DarknetWeightsError",
    "WeightsHeader",
    "YoloHead",
    "build_darknet_model",
    "convert_darknet",
    "parse_cfg",
    "read_weights_header",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "output"
OPSET = 17
# Opset 17 needs no IR newer than 8, and pinning it keeps the file readable by older runtimes (ONNX Runtime
# and TensorRT parsers reject IR versions newer than the onnx library they were built with).
IR_VERSION = 8
# Darknet's CPU inference (normalize_cpu) divides by sqrt(var + 1e-6); OpenCV's importer does the same.
_BN_EPSILON = 1e-6
_LEAKY_SLOPE = 0.1  # Darknet's "leaky" is fixed at 0.1, not a cfg option
_SUPPORTED = ("convolutional", "maxpool", "route", "upsample", "shortcut", "yolo")


@dataclass(frozen=True, slots=True)
class YoloHead:
    """One decoded [yolo] layer: `raw_output` names its input tensor, [batch, A*(5+C), grid_h, grid_w]."""

    layer_index: int
    raw_output: str
    grid_height: int
    grid_width: int
    anchors: tuple[tuple[float, float], ...]  # (width, height) in input pixels, the masked anchors only
    scale_x_y: float

    @property
    def boxes(self) -> int:
        return len(self.anchors) * self.grid_height * self.grid_width


@dataclass(frozen=True, slots=True)
class DarknetConversion:
    """The converted model and the proof of what went into it."""

    model: onnx.ModelProto = field(repr=False, compare=False)
    input_width: int
    input_height: int
    channels: int
    class_count: int
    layer_count: int
    heads: tuple[YoloHead, ...]
    header: WeightsHeader
    weights_consumed: int  # float32 values read into the graph
    weights_total: int  # float32 values in the file after the header

    @property
    def total_boxes(self) -> int:
        return sum(head.boxes for head in self.heads)


def convert_darknet(cfg_path: Path, weights_path: Path) -> DarknetConversion:
    """Converts a Darknet cfg + weights pair into an ONNX model (see the module docstring for the layout).

    Raises:
        DarknetCfgError: malformed cfg or unsupported layer/option.
        DarknetWeightsError: the weights file does not hold exactly what the cfg needs.
    """
    sections = read_cfg(cfg_path)
    try:
        return build_darknet_model(sections, weights_path.read_bytes())
    except DarknetWeightsError as exc:
        raise DarknetWeightsError(f"{weights_path} does not match {cfg_path.name}: {exc}") from None
    except DarknetCfgError as exc:
        raise DarknetCfgError(f"{cfg_path}: {exc}") from None


def build_darknet_model(sections: Sequence[CfgSection], weights: bytes) -> DarknetConversion:
    """Builds the ONNX model from parsed cfg sections (`parse_cfg`) and the weights file's bytes."""
    header, cursor = open_weights(weights)
    builder = _GraphBuilder(sections[0], cursor)
    for index, section in enumerate(sections[1:]):
        builder.add_layer(index, section)
    cursor.check_exhausted(header)  # the proof: every float after the header went into the graph, once
    model = builder.finish()
    conversion = DarknetConversion(
        model=model,
        input_width=builder.width,
        input_height=builder.height,
        channels=builder.channels,
        class_count=builder.class_count,
        layer_count=len(sections) - 1,
        heads=tuple(builder.heads),
        header=header,
        weights_consumed=cursor.requested,
        weights_total=cursor.available,
    )
    logger.info(
        "converted Darknet net: %d layers, %dx%d input, %d classes, %d boxes, %d weights consumed of %d",
        conversion.layer_count,
        conversion.input_width,
        conversion.input_height,
        conversion.class_count,
        conversion.total_boxes,
        conversion.weights_consumed,
        conversion.weights_total,
    )
    return conversion


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A layer's output as later layers see it."""

    name: str
    channels: int
    height: int
    width: int


def _reject_unless(section: CfgSection, key: str, allowed: str) -> None:
    """Refuses an option whose value would change what the layer computes in a way not implemented here."""
    if not section.has(key) or section.get_str(key) == allowed:
        return
    try:
        if float(section.get_str(key)) == float(allowed):  # "1.0" means the same as "1"
            return
    except ValueError:
        pass
    raise DarknetCfgError(
        f"{section.where()}: option {key}={section.get_str(key)} is not supported (only {key}={allowed})"
    )


class _GraphBuilder:
    def __init__(self, net: CfgSection, cursor: WeightCursor) -> None:
        self.width = net.get_int("width")
        self.height = net.get_int("height")
        self.channels = net.get_int("channels", 3)
        if min(self.width, self.height, self.channels) <= 0:
            raise DarknetCfgError(f"{net.where()}: expected positive width, height and channels")
        self._cursor = cursor
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._outputs: list[_Tensor] = []
        self._decoded: list[str] = []
        self.heads: list[YoloHead] = []
        self.class_count = -1

    # -- helpers ------------------------------------------------------------------------------------------

    def _const(self, name: str, value: npt.NDArray[np.generic]) -> str:
        self._initializers.append(numpy_helper.from_array(value, name))
        return name

    def _node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self._nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def _input_of(self, index: int) -> _Tensor:
        if index == 0:
            return _Tensor(INPUT_NAME, self.channels, self.height, self.width)
        return self._outputs[index - 1]

    def _resolve(self, section: CfgSection, index: int, reference: int) -> _Tensor:
        # Darknet: negative references are relative to the current layer, others are absolute layer numbers.
        target = index + reference if reference < 0 else reference
        if not 0 <= target < index:
            raise DarknetCfgError(
                f"{section.where()} (layer {index}): reference {reference} resolves to layer {target}, "
                f"expected an earlier layer in 0..{index - 1}"
            )
        return self._outputs[target]

    def _activate(self, section: CfgSection, x: str, activation: str, prefix: str) -> str:
        if activation == "linear":
            return x
        if activation == "leaky":
            return self._node("LeakyRelu", [x], f"{prefix}_leaky", alpha=_LEAKY_SLOPE)
        if activation == "relu":
            return self._node("Relu", [x], f"{prefix}_relu")
        if activation == "logistic":
            return self._node("Sigmoid", [x], f"{prefix}_logistic")
        if activation == "mish":  # x * tanh(softplus(x)); opset 17 has no Mish operator
            softplus = self._node("Softplus", [x], f"{prefix}_softplus")
            tanh = self._node("Tanh", [softplus], f"{prefix}_tanh")
            return self._node("Mul", [x, tanh], f"{prefix}_mish")
        if activation == "swish":
            gate = self._node("Sigmoid", [x], f"{prefix}_sigmoid")
            return self._node("Mul", [x, gate], f"{prefix}_swish")
        raise DarknetCfgError(
            f"{section.where()}: activation {activation!r} is not supported "
            "(expected linear, leaky, relu, logistic, mish or swish)"
        )

    # -- layers -------------------------------------------------------------------------------------------

    def add_layer(self, index: int, section: CfgSection) -> None:
        if section.kind not in _SUPPORTED:
            raise DarknetCfgError(
                f"{section.where()} (layer {index}): layer type is not supported; expected one of "
                + ", ".join(f"[{kind}]" for kind in _SUPPORTED)
            )
        source = self._input_of(index)
        prefix = f"layer{index:03d}_{section.kind}"
        layer = getattr(self, f"_{section.kind}")
        output: _Tensor = layer(index, section, source, prefix)
        self._outputs.append(output)

    def _convolutional(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        for key, allowed in (("dilation", "1"), ("binary", "0"), ("xnor", "0"), ("antialiasing", "0")):
            _reject_unless(s, key, allowed)
        filters, size = s.get_int("filters"), s.get_int("size", 1)
        stride, groups = s.get_int("stride", 1), s.get_int("groups", 1)
        padding = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
        if filters <= 0 or size <= 0 or stride <= 0 or groups <= 0:
            raise DarknetCfgError(f"{s.where()}: expected positive filters, size, stride and groups")
        if x.channels % groups or filters % groups:
            raise DarknetCfgError(
                f"{s.where()}: groups={groups} must divide both input channels ({x.channels}) "
                f"and filters ({filters})"
            )
        height = (x.height + 2 * padding - size) // stride + 1
        width = (x.width + 2 * padding - size) // stride + 1
        if height <= 0 or width <= 0:
            raise DarknetCfgError(
                f"{s.where()}: a {size}x{size} kernel does not fit a {x.height}x{x.width} input"
            )

        # Darknet's order on disk: biases, then (with batch norm) scales, rolling mean, rolling variance,
        # then the kernel as [filters, channels / groups, size, size] -- the ONNX Conv layout already.
        bias = self._cursor.take(filters)
        weight_count = filters * (x.channels // groups) * size * size
        if s.get_int("batch_normalize", 0):
            scales, mean, variance = (self._cursor.take(filters) for _ in range(3))
            weight = self._cursor.take(weight_count).reshape(filters, x.channels // groups, size, size)
            factor = scales / np.sqrt(variance + _BN_EPSILON)
            weight = weight * factor[:, None, None, None]
            bias = bias - mean * factor
        else:
            weight = self._cursor.take(weight_count).reshape(filters, x.channels // groups, size, size)

        conv = self._node(
            "Conv",
            [x.name, self._const(f"{prefix}_w", weight.astype(np.float32)), self._const(f"{prefix}_b", bias)],
            f"{prefix}_conv",
            kernel_shape=[size, size],
            strides=[stride, stride],
            pads=[padding] * 4,
            group=groups,
        )
        activated = self._activate(s, conv, s.get_str("activation", "logistic"), prefix)
        return _Tensor(activated, filters, height, width)

    def _maxpool(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        for key, allowed in (("maxpool_depth", "0"), ("antialiasing", "0")):
            _reject_unless(s, key, allowed)
        stride = s.get_int("stride", 1)
        size = s.get_int("size", stride)
        padding = s.get_int("padding", size - 1)
        if size <= 0 or stride <= 0 or padding < 0:
            raise DarknetCfgError(f"{s.where()}: expected positive size and stride and non-negative padding")
        # Darknet starts the window at -padding/2 and sizes the output as (w + padding - size)/stride + 1,
        # so the padding lands mostly right/bottom: size=2 stride=1 pads 0 before and 1 after, keeping 13x13.
        begin, end = padding // 2, padding - padding // 2
        height = (x.height + padding - size) // stride + 1
        width = (x.width + padding - size) // stride + 1
        if height <= 0 or width <= 0:
            raise DarknetCfgError(
                f"{s.where()}: a {size}x{size} window does not fit a {x.height}x{x.width} input"
            )
        pooled = self._node(
            "MaxPool",
            [x.name],
            f"{prefix}_pool",
            kernel_shape=[size, size],
            strides=[stride, stride],
            pads=[begin, begin, end, end],
        )
        return _Tensor(pooled, x.channels, height, width)

    def _route(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        groups, group_id = s.get_int("groups", 1), s.get_int("group_id", 0)
        if groups <= 0 or not 0 <= group_id < groups:
            raise DarknetCfgError(f"{s.where()}: expected groups >= 1 and 0 <= group_id < groups")
        sources = [self._resolve(s, index, reference) for reference in s.get_ints("layers")]
        if not sources:
            raise DarknetCfgError(f"{s.where()}: 'layers' names no layer")
        if len({(t.height, t.width) for t in sources}) != 1:
            shapes = ", ".join(f"{t.height}x{t.width}" for t in sources)
            raise DarknetCfgError(f"{s.where()}: routed layers must share a spatial size, got {shapes}")
        parts: list[str] = []
        for number, tensor in enumerate(sources):
            if groups == 1:
                parts.append(tensor.name)
                continue
            if tensor.channels % groups:
                raise DarknetCfgError(
                    f"{s.where()}: groups={groups} does not divide {tensor.channels} channels"
                )
            # AlexeyAB's route with groups keeps slice `group_id` of every routed layer's channels.
            part = tensor.channels // groups
            start = self._const(f"{prefix}_s{number}", np.array([group_id * part], dtype=np.int64))
            stop = self._const(f"{prefix}_e{number}", np.array([(group_id + 1) * part], dtype=np.int64))
            axis = self._const(f"{prefix}_a{number}", np.array([1], dtype=np.int64))
            parts.append(self._node("Slice", [tensor.name, start, stop, axis], f"{prefix}_part{number}"))
        channels = sum(t.channels for t in sources) // groups
        name = parts[0] if len(parts) == 1 else self._node("Concat", parts, f"{prefix}_concat", axis=1)
        return _Tensor(name, channels, sources[0].height, sources[0].width)

    def _upsample(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        stride, scale = s.get_int("stride", 2), s.get_float("scale", 1.0)
        if stride <= 0:
            raise DarknetCfgError(
                f"{s.where()}: only upsampling (stride >= 1) is supported, got stride={stride}"
            )
        scales = self._const(f"{prefix}_scales", np.array([1, 1, stride, stride], dtype=np.float32))
        # Integer-factor nearest with asymmetric/floor coordinates is exact pixel replication, as in Darknet.
        name = self._node(
            "Resize",
            [x.name, "", scales],
            f"{prefix}_resize",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
        if scale != 1.0:
            name = self._node(
                "Mul", [name, self._const(f"{prefix}_k", np.array(scale, np.float32))], f"{prefix}_mul"
            )
        return _Tensor(name, x.channels, x.height * stride, x.width * stride)

    def _shortcut(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        for key, allowed in (("weights_type", "none"), ("alpha", "1"), ("beta", "1")):
            _reject_unless(s, key, allowed)
        references = s.get_ints("from")
        if len(references) != 1:
            raise DarknetCfgError(f"{s.where()}: expected exactly one layer in 'from', got {len(references)}")
        other = self._resolve(s, index, references[0])
        if (other.channels, other.height, other.width) != (x.channels, x.height, x.width):
            raise DarknetCfgError(
                f"{s.where()}: shortcut needs equal shapes, got {x.channels}x{x.height}x{x.width} "
                f"and {other.channels}x{other.height}x{other.width}"
            )
        added = self._node("Add", [x.name, other.name], f"{prefix}_add")
        activated = self._activate(s, added, s.get_str("activation", "linear"), prefix)
        return _Tensor(activated, x.channels, x.height, x.width)

    def _yolo(self, index: int, s: CfgSection, x: _Tensor, prefix: str) -> _Tensor:
        _reject_unless(s, "new_coords", "0")
        flat = s.get_floats("anchors")
        if len(flat) % 2 or not flat:
            raise DarknetCfgError(
                f"{s.where()}: expected an even, non-empty list of anchors, got {len(flat)}"
            )
        total = s.get_int("num", len(flat) // 2)
        mask = s.get_ints("mask", tuple(range(total)))
        if any(not 0 <= m < len(flat) // 2 for m in mask) or not mask:
            raise DarknetCfgError(f"{s.where()}: mask {list(mask)} indexes outside {len(flat) // 2} anchors")
        classes = s.get_int("classes", 20)
        if self.class_count not in (-1, classes):
            raise DarknetCfgError(
                f"{s.where()}: classes={classes} differs from an earlier head's {self.class_count}"
            )
        self.class_count = classes
        attributes = 5 + classes
        expected = len(mask) * attributes
        if x.channels != expected:
            raise DarknetCfgError(
                f"{s.where()}: expected {len(mask)} anchors x (5 + {classes}) = {expected} input channels, "
                f"got {x.channels} (set the conv before it to filters=(classes+5)*anchors)"
            )
        head = YoloHead(
            layer_index=index,
            raw_output=x.name,
            grid_height=x.height,
            grid_width=x.width,
            anchors=tuple((flat[2 * m], flat[2 * m + 1]) for m in mask),
            scale_x_y=s.get_float("scale_x_y", 1.0),
        )
        self.heads.append(head)
        self._decoded.append(self._decode(head, attributes, prefix))
        return x  # Darknet routes from a [yolo] layer see its (raw) input

    def _decode(self, head: YoloHead, attributes: int, prefix: str) -> str:
        anchors, cells = len(head.anchors), head.grid_height * head.grid_width

        def shape(name: str, dims: list[int]) -> str:
            return self._const(f"{prefix}_{name}", np.array(dims, dtype=np.int64))

        # [N, A*(5+C), H, W] -> [N, A, H*W, 5+C] -> [N, A*H*W, 5+C]; -1 keeps the batch dimension dynamic.
        split = self._node(
            "Reshape", [head.raw_output, shape("shape1", [-1, anchors, attributes, cells])], f"{prefix}_r1"
        )
        moved = self._node("Transpose", [split], f"{prefix}_t", perm=[0, 1, 3, 2])
        rows = self._node(
            "Reshape", [moved, shape("shape2", [-1, anchors * cells, attributes])], f"{prefix}_r2"
        )
        sizes = shape("split", [2, 2, attributes - 4])
        parts = [f"{prefix}_xy_raw", f"{prefix}_wh_raw", f"{prefix}_scores_raw"]
        self._nodes.append(helper.make_node("Split", [rows, sizes], parts, name=f"{prefix}_split", axis=2))

        rows_y, cols_x = np.meshgrid(np.arange(head.grid_height), np.arange(head.grid_width), indexing="ij")
        grid = np.stack([cols_x, rows_y], axis=-1).reshape(1, cells, 2)
        grid = np.tile(grid, (1, anchors, 1)).astype(np.float32)
        anchor_sizes = np.repeat(np.array(head.anchors, dtype=np.float32), cells, axis=0)[None]
        stride = np.array([self.width / head.grid_width, self.height / head.grid_height], dtype=np.float32)

        xy = self._node("Sigmoid", [parts[0]], f"{prefix}_xy_sigmoid")
        if head.scale_x_y != 1.0:  # YOLOv4's grid-sensitivity fix: sigmoid * s - (s - 1) / 2
            k = self._const(f"{prefix}_sxy", np.array(head.scale_x_y, np.float32))
            xy = self._node("Mul", [xy, k], f"{prefix}_xy_scaled")
            c = self._const(f"{prefix}_sxy_shift", np.array(-(head.scale_x_y - 1.0) / 2.0, np.float32))
            xy = self._node("Add", [xy, c], f"{prefix}_xy_shifted")
        xy = self._node("Add", [xy, self._const(f"{prefix}_grid", grid)], f"{prefix}_xy_cells")
        xy = self._node("Mul", [xy, self._const(f"{prefix}_stride", stride.reshape(1, 1, 2))], f"{prefix}_xy")
        wh = self._node("Exp", [parts[1]], f"{prefix}_wh_exp")
        wh = self._node("Mul", [wh, self._const(f"{prefix}_anchors", anchor_sizes)], f"{prefix}_wh")
        scores = self._node("Sigmoid", [parts[2]], f"{prefix}_scores")
        return self._node("Concat", [xy, wh, scores], f"{prefix}_decoded", axis=2)

    def finish(self) -> onnx.ModelProto:
        if not self.heads:
            raise DarknetCfgError("the cfg has no [yolo] layer; only YOLO detectors can be converted")
        self._node("Concat", self._decoded, OUTPUT_NAME, axis=1)
        total = sum(head.boxes for head in self.heads)
        graph = helper.make_graph(
            self._nodes,
            "darknet",
            [
                helper.make_tensor_value_info(
                    INPUT_NAME, TensorProto.FLOAT, ["batch", self.channels, self.height, self.width]
                )
            ],
            [
                helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["batch", total, 5 + self.class_count]
                )
            ],
            self._initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="visionrpc.engines.importers.darknet",
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, {"source_format": "darknet", "output_layout": "yolov5"})
        # full_check runs strict shape inference: a disagreement between the shapes tracked here and what
        # ONNX infers for the declared output fails now, not at the first request.
        onnx.checker.check_model(model, full_check=True)
        return model
