"""The Darknet importer: cfg parsing, the weights accounting, layer semantics, and agreement with Darknet.

The strongest check is independent: OpenCV 4.x ships its own Darknet implementation
(`cv2.dnn.readNetFromDarknet`, removed in OpenCV 5), run here in a subprocess from a private copy installed
into the cache, on the same letterboxed photo.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from media import media
from visionrpc.engines.importers.darknet import (
    OUTPUT_NAME,
    DarknetCfgError,
    DarknetConversion,
    DarknetWeightsError,
    build_darknet_model,
    convert_darknet,
    parse_cfg,
    read_weights_header,
)
from visionrpc.server.models.builtins import fetch_builtin_files

Floats = npt.NDArray[np.float32]

YOLOV3_TINY_WEIGHTS = 8_858_734  # float32 values after the 20-byte header; the file is 35,434,956 bytes
OPENCV_DARKNET = "opencv-python-headless==4.12.0.88"  # the last OpenCV line with the Darknet importer is 4.x


def download_dir() -> Path:
    return Path(os.environ.get("VISIONRPC_CACHE", Path.home() / ".cache" / "visionrpc")) / "downloads"


@pytest.fixture(scope="module")
def yolo_files() -> dict[str, Path]:
    files = fetch_builtin_files("yolov3-tiny-coco", download_dir())
    return {Path(member).name: path for member, path in files.items()}


@pytest.fixture(scope="module")
def conversion(yolo_files: dict[str, Path]) -> DarknetConversion:
    return convert_darknet(yolo_files["yolov3-tiny.cfg"], yolo_files["yolov3-tiny.weights"])


def session_with_outputs(model: onnx.ModelProto, extra: list[str]) -> ort.InferenceSession:
    """An ONNX Runtime session that also returns the named intermediate tensors, after `output`."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    for name in extra:
        edited.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def session(conversion: DarknetConversion) -> ort.InferenceSession:
    return session_with_outputs(conversion.model, [head.raw_output for head in conversion.heads])


def letterbox(path: Path, size: int = 416, pad: int = 114) -> Floats:
    """RGB, aspect-preserving resize centred on a `pad` canvas, scaled to [0, 1]: [1, 3, size, size]."""
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    ratio = min(size / width, size / height)
    new_w, new_h = round(width * ratio), round(height * ratio)
    canvas = np.full((size, size, 3), pad, np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(
        rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR
    )
    return (canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).astype(np.float32)


# -- cfg parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "index", "key", "expected"),
    [
        ("[net]\nwidth=416\n[yolo]\nanchors = 10,14,  23,27\n", 1, "anchors", "10,14,23,27"),  # all spaces go
        ("[net]\n# comment\n; also a comment\nwidth=8\n[maxpool]\nsize=2\n", 0, "width", "8"),
        ("[net]\nwidth=8\n[maxpool]\nsize=2\nsize=3\n", 1, "size", "2"),  # first occurrence wins
        ("[network]\nwidth=8\n[Convolutional]\nfilters=4\n", 1, "filters", "4"),
        ("[net]\r\nheight = 13\r\n[route]\r\nlayers = -1, 8\r\n", 1, "layers", "-1,8"),
    ],
)
def test_parse_cfg_reads_options_as_darknet_does(text: str, index: int, key: str, expected: str) -> None:
    sections = parse_cfg(text)
    assert sections[index].options[key] == expected


def test_parse_cfg_kinds_lines_and_typed_values() -> None:
    sections = parse_cfg("[net]\nwidth=416\n\n[yolo]\nmask = 0,1,2,\nanchors=10,14, 23,27\nscale_x_y=1.05\n")
    assert [(s.kind, s.line) for s in sections] == [("net", 1), ("yolo", 4)]
    assert sections[1].get_ints("mask") == (0, 1, 2)
    assert sections[1].get_floats("anchors") == (10.0, 14.0, 23.0, 27.0)
    assert sections[1].get_float("scale_x_y") == pytest.approx(1.05)
    assert sections[1].get_int("classes", 20) == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("width=416\n[net]\n", "before any"),
        ("[net]\nwidth\n[maxpool]\n", "expected 'key=value'"),
        ("[convolutional]\nfilters=1\n", "first section must be"),
        ("[net]\nwidth=1\n", "no layers"),
        ("", "no sections"),
        ("[net\nwidth=1\n", "malformed section header"),
        ("[net]\n[maxpool]\n[net]\n", "only the first section"),
    ],
)
def test_parse_cfg_rejects_malformed_text(text: str, message: str) -> None:
    with pytest.raises(DarknetCfgError, match=message):
        parse_cfg(text)


def test_typed_options_name_the_section_line_and_key() -> None:
    section = parse_cfg("[net]\nwidth=416\n[convolutional]\nfilters=abc\n")[1]
    with pytest.raises(
        DarknetCfgError, match=r"\[convolutional\] at line 3: expected an integer for 'filters'"
    ):
        section.get_int("filters")
    with pytest.raises(DarknetCfgError, match="missing required option 'size'"):
        section.get_int("size")


# -- small hand-written nets -----------------------------------------------------------------------

_HEAD = "[convolutional]\nsize=1\nfilters=6\nactivation=linear\n[yolo]\nmask=0\nanchors=8,8\nclasses=1\n"


def weights_bytes(values: Floats, *, major: int = 0, minor: int = 2) -> bytes:
    seen = struct.pack("<q", 0) if major * 10 + minor >= 2 else struct.pack("<i", 0)
    return struct.pack("<3i", major, minor, 0) + seen + values.astype("<f4").tobytes()


def tiny_net(layers: str, weights: int, size: int = 16) -> DarknetConversion:
    """A [net] of size x size x 3, `layers`, then a 1-anchor, 1-class head; `weights` floats, seeded."""
    text = f"[net]\nwidth={size}\nheight={size}\nchannels=3\n{layers}{_HEAD}"
    values = np.random.default_rng(7).normal(0, 0.5, weights).astype(np.float32)
    values = np.abs(values) + np.float32(0.1)  # keeps batch-norm variances positive wherever they land
    return build_darknet_model(parse_cfg(text), weights_bytes(values))


def conv(filters: int, size: int = 3, stride: int = 1, bn: int = 1, extra: str = "") -> str:
    return (
        f"[convolutional]\nbatch_normalize={bn}\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n"
        f"activation=leaky\n{extra}"
    )


# (layers, weights those layers need, channels x height x width that reaches the head)
LAYER_CASES = [
    pytest.param(conv(4), 4 * 4 + 4 * 3 * 9, (4, 16, 16), id="conv3x3-bn"),
    pytest.param(conv(8, stride=2, bn=0), 8 + 8 * 3 * 9, (8, 8, 8), id="conv3x3-stride2-no-bn"),
    pytest.param(conv(2, size=1, bn=0), 2 + 2 * 3, (2, 16, 16), id="conv1x1-pad1-means-no-padding"),
    pytest.param(conv(6, extra="groups=3\n"), 6 * 4 + 6 * 1 * 9, (6, 16, 16), id="conv-grouped"),
    pytest.param(conv(2, bn=0).replace("leaky", "mish"), 2 + 2 * 27, (2, 16, 16), id="conv-mish"),
    pytest.param("[maxpool]\nsize=2\nstride=2\n", 0, (3, 8, 8), id="maxpool-2-2"),
    pytest.param("[maxpool]\nsize=2\nstride=1\n", 0, (3, 16, 16), id="maxpool-2-1-keeps-size"),
    pytest.param("[maxpool]\nsize=3\nstride=2\n", 0, (3, 8, 8), id="maxpool-3-2"),
    pytest.param("[upsample]\nstride=2\n", 0, (3, 32, 32), id="upsample"),
    pytest.param(
        conv(4) + conv(2, size=1, bn=0) + "[route]\nlayers=-1,0\n", 124 + 2 + 8, (6, 16, 16), id="route"
    ),
    pytest.param(conv(4) + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n", 124, (2, 16, 16), id="route-groups"),
    pytest.param(conv(3) + conv(3) + "[shortcut]\nfrom=-2\n", 2 * (12 + 81), (3, 16, 16), id="shortcut"),
]


@pytest.mark.parametrize(("layers", "weights", "shape"), LAYER_CASES)
def test_layer_shapes_and_weight_counts(layers: str, weights: int, shape: tuple[int, int, int]) -> None:
    channels, height, width = shape
    head_weights = 6 + 6 * channels
    result = tiny_net(layers, weights + head_weights)
    assert result.weights_consumed == result.weights_total == weights + head_weights
    assert (result.heads[0].grid_height, result.heads[0].grid_width) == (height, width)
    session = ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (output,) = session.run([OUTPUT_NAME], {"images": np.zeros((2, 3, 16, 16), np.float32)})
    assert output.shape == (2, height * width, 6)


def test_stride1_maxpool_pads_right_and_bottom_like_darknet() -> None:
    result = tiny_net("[maxpool]\nsize=2\nstride=1\n", 6 + 18)
    session = session_with_outputs(result.model, ["layer000_maxpool_pool"])
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    _, pooled = session.run(None, {"images": x})
    # Darknet's window starts at -padding/2 = 0, so the missing row/column is past the end, never before.
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=-np.inf)
    expected = np.max([padded[..., dy : dy + 16, dx : dx + 16] for dy in (0, 1) for dx in (0, 1)], axis=0)
    np.testing.assert_array_equal(pooled, expected)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ("[region]\nclasses=1\n", r"layer type is not supported"),
        (conv(4, extra="dilation=2\n"), "dilation=2 is not supported"),
        (conv(4).replace("leaky", "elu"), "activation 'elu' is not supported"),
        ("[route]\nlayers=0\n", "expected an earlier layer"),
        ("[shortcut]\nfrom=-1,-2\n", "exactly one layer"),
        ("[upsample]\nstride=-2\n", "only upsampling"),
        (conv(4) + "[shortcut]\nfrom=-1\n" + conv(2) + "[shortcut]\nfrom=-3\n", "equal shapes"),
    ],
)
def test_unsupported_or_inconsistent_cfgs_are_refused(layers: str, message: str) -> None:
    with pytest.raises(DarknetCfgError, match=message):
        tiny_net(layers, 10_000)


def test_yolo_head_needs_matching_channels() -> None:
    text = "[net]\nwidth=8\nheight=8\n" + conv(4) + "[yolo]\nmask=0\nanchors=8,8\nclasses=1\n"
    with pytest.raises(DarknetCfgError, match=r"expected 1 anchors x \(5 \+ 1\) = 6 input channels, got 4"):
        build_darknet_model(parse_cfg(text), weights_bytes(np.ones(124, np.float32)))


# -- the weights file ------------------------------------------------------------------------------


def test_yolov3_tiny_consumes_every_weight_exactly(
    yolo_files: dict[str, Path], conversion: DarknetConversion
) -> None:
    assert conversion.weights_consumed == conversion.weights_total == YOLOV3_TINY_WEIGHTS
    assert (conversion.header.major, conversion.header.minor, conversion.header.size) == (0, 2, 20)
    assert yolo_files["yolov3-tiny.weights"].stat().st_size == 20 + 4 * YOLOV3_TINY_WEIGHTS
    assert (conversion.layer_count, conversion.class_count, conversion.total_boxes) == (24, 80, 2535)
    assert (conversion.input_width, conversion.input_height, conversion.channels) == (416, 416, 3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda data: data[:-40],
            r"needs 8,858,734 float32 weights but the file has 8,858,724 .*\(10 missing\)",
        ),
        (lambda data: data + bytes(12), r"the file has 8,858,737 .*\(3 left over\)"),
        (lambda data: data + bytes(2), "not a whole number of float32 values"),
        (lambda data: data[:10], "at least 16 bytes"),
    ],
    ids=["truncated", "over-long", "ragged", "no-header"],
)
def test_mismatched_weights_files_are_refused(
    yolo_files: dict[str, Path], tmp_path: Path, edit: Callable[[bytes], bytes], message: str
) -> None:
    weights = tmp_path / "edited.weights"
    weights.write_bytes(edit(yolo_files["yolov3-tiny.weights"].read_bytes()))
    with pytest.raises(DarknetWeightsError, match=message):
        convert_darknet(yolo_files["yolov3-tiny.cfg"], weights)


@pytest.mark.parametrize(("major", "minor", "size"), [(0, 1, 16), (0, 2, 20), (1, 0, 20), (1000, 0, 16)])
def test_header_seen_width_follows_the_version(major: int, minor: int, size: int) -> None:
    data = struct.pack("<3i", major, minor, 5) + struct.pack("<q", 1234) + bytes(8)
    header = read_weights_header(data)
    assert (header.major, header.minor, header.revision, header.size) == (major, minor, 5, size)
    assert header.seen == 1234


# -- the real model --------------------------------------------------------------------------------


def test_stride1_maxpool_keeps_13x13_in_yolov3_tiny(conversion: DarknetConversion) -> None:
    inferred = onnx.shape_inference.infer_shapes(conversion.model)
    shapes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in inferred.graph.value_info
    }
    assert shapes["layer009_maxpool_pool"] == ["batch", 256, 13, 13]  # the last stride-2 pool
    assert shapes["layer011_maxpool_pool"] == ["batch", 512, 13, 13]  # size=2 stride=1
    assert [(h.grid_height, h.grid_width) for h in conversion.heads] == [(13, 13), (26, 26)]
    assert [h.anchors for h in conversion.heads] == [
        ((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)),
        ((10.0, 14.0), (23.0, 27.0), (37.0, 58.0)),
    ]


def test_model_declares_dynamic_batch_and_fixed_size(conversion: DarknetConversion) -> None:
    (image,) = conversion.model.graph.input
    (output,) = conversion.model.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert (image.name, dims) == ("images", ["batch", 3, 416, 416])
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 2535, 85]
    assert conversion.model.opset_import[0].version == 17


@pytest.fixture(scope="module")
def opencv_darknet() -> Path:
    """A private OpenCV 4.x (which still has the Darknet importer), installed once into the cache."""
    target = download_dir().parent / "test-tools" / OPENCV_DARKNET.replace("==", "-")
    if not (target / "cv2").is_dir():
        partial = target.with_name(target.name + ".partial")
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(partial)]
        result = subprocess.run(
            [*command, OPENCV_DARKNET], capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            pytest.skip(f"{OPENCV_DARKNET} is not cached and could not be installed: {result.stderr[-300:]}")
        partial.rename(target)
    return target


_OPENCV_SCRIPT = """
import sys, cv2, numpy as np
assert cv2.__version__.startswith("4."), cv2.__version__
net = cv2.dnn.readNetFromDarknet(sys.argv[1], sys.argv[2])
net.setInput(np.load(sys.argv[3]))
names = ["conv_15", "conv_22", "yolo_16", "yolo_23"]
np.savez(sys.argv[4], **dict(zip(names, net.forward(names))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("photo", ["coffee.png", "motorcycle_left.png"])
def test_matches_opencv_darknet_implementation(
    photo: str,
    yolo_files: dict[str, Path],
    conversion: DarknetConversion,
    session: ort.InferenceSession,
    opencv_darknet: Path,
    tmp_path: Path,
) -> None:
    blob = letterbox(media(photo))
    np.save(tmp_path / "blob.npy", blob)
    paths = [str(yolo_files["yolov3-tiny.cfg"]), str(yolo_files["yolov3-tiny.weights"])]
    env = {**os.environ, "PYTHONPATH": str(opencv_darknet)}
    subprocess.run(
        [sys.executable, "-c", _OPENCV_SCRIPT, *paths, str(tmp_path / "blob.npy"), str(tmp_path / "ref.npz")],
        env=env,
        check=True,
        timeout=120,
    )
    reference = np.load(tmp_path / "ref.npz")
    output, raw13, raw26 = session.run(None, {"images": blob})

    # The raw head inputs: every conv, folded batch norm, pool, route and upsample before them.
    np.testing.assert_allclose(raw13, reference["conv_15"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(raw26, reference["conv_22"], rtol=0, atol=1e-3)

    # The decoded boxes. OpenCV orders rows (y, x, anchor) and normalises boxes by the input size; it
    # reports class scores already multiplied by objectness and zeroes those under its threshold.
    start = 0
    for head, name in zip(conversion.heads, ("yolo_16", "yolo_23"), strict=True):
        grid, anchors = head.grid_height, len(head.anchors)
        mine = output[0, start : start + head.boxes].reshape(anchors, grid, grid, 85).transpose(1, 2, 0, 3)
        mine = mine.reshape(-1, 85)
        start += head.boxes
        theirs = reference[name]
        np.testing.assert_allclose(mine[:, :4], theirs[:, :4] * 416, rtol=0, atol=0.05)
        np.testing.assert_allclose(mine[:, 4], theirs[:, 4], rtol=0, atol=1e-4)
        kept = theirs[:, 5:] > 0
        np.testing.assert_allclose((mine[:, 4:5] * mine[:, 5:])[kept], theirs[:, 5:][kept], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("photo", "class_id", "class_name"),
    [("coffee.png", 41, "cup"), ("motorcycle_left.png", 3, "motorbike")],
)
def test_detects_the_obvious_object(
    photo: str, class_id: int, class_name: str, yolo_files: dict[str, Path], session: ort.InferenceSession
) -> None:
    names = yolo_files["coco.names"].read_text(encoding="utf-8").split("\n")
    (output,) = session.run([OUTPUT_NAME], {"images": letterbox(media(photo))})
    scores = output[0, :, 4:5] * output[0, :, 5:]  # YOLOv5 confidence: objectness x class probability
    box, best = np.unravel_index(int(scores.argmax()), scores.shape)
    assert (int(best), names[int(best)]) == (class_id, class_name)
    assert scores[box, best] >= 0.5
    cx, cy, w, h = output[0, box, :4]
    assert 0 < cx < 416 and 0 < cy < 416 and 20 < w <= 416 and 20 < h <= 416


def test_batch_of_two_equals_two_single_runs(session: ort.InferenceSession) -> None:
    photos = [letterbox(media("coffee.png")), letterbox(media("motorcycle_left.png"))]
    (batched,) = session.run([OUTPUT_NAME], {"images": np.concatenate(photos)})
    for index, photo in enumerate(photos):
        (single,) = session.run([OUTPUT_NAME], {"images": photo})
        np.testing.assert_allclose(batched[index], single[0], rtol=1e-5, atol=1e-4)
