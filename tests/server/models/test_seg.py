"""YOLOv8-seg models: masks through Infer and streams, from a segmentation head derived from the real weights.

The derived head (tests/model_exports.py `derive_seg`) gives every box a mask known from the box itself: the
half below the diagonal from its top-right to its bottom-left corner. Each served detection's mask is checked
against its own box, in original-image pixels, so the letterbox mapping, the run-length encoding and every
conversion on the way (domain -> proto -> Python client) are checked together. The model is added the way a
user would, with Ultralytics segment metadata and no flags.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import RunningServer, start_server
from media import media
from model_exports import coco_names, derive_seg, tiny_yolov8, ultralytics_metadata, with_metadata
from visionrpc.client import Client, Detection, StreamFrame
from visionrpc.server.cli import main
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ImageSize, Mask, Task
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.server.models.autofill import fill_manifest
from visionrpc.server.models.importing import add_model, check_file_by_running
from visionrpc.server.processing import DecodeOptions, Transform, decode_batch


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = ultralytics_metadata("segment", coco_names(), (416, 416))
    path = tmp_path_factory.mktemp("exports") / "tiny-seg.onnx"
    onnx.save(with_metadata(derive_seg(tiny_yolov8()), metadata), str(path))
    return path


@pytest.fixture(scope="module")
def seg_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory, seg_export: Path
) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("seg-models")
    filled = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {})
    add_model(repository, "tiny-seg", seg_export, filled.manifest)
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield running
    running.server.stop(grace_s=0.5)


def test_ultralytics_segment_metadata_fills_the_manifest(seg_export: Path) -> None:
    manifest = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {}).manifest
    assert (manifest.decoder, len(manifest.class_names)) == (Decoder.YOLOV8_SEG, 80)
    check_file_by_running(seg_export, manifest)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"decoder": Decoder.YOLOV8},
            "got [1, 116, 2535] (with mask coefficients and prototypes: that is a segmentation export, "
            "use decoder yolov8-seg)",
        ),
        (
            {"class_names": tuple(coco_names()[:79])},
            "expected output 'seg' shaped [N, 4 + 79 + 32, boxes], got [1, 116, 2535]",
        ),
        ({"extra": {"protos": "masks"}}, "expected two outputs for decoder yolov8-seg"),
    ],
)
def test_seg_mismatches_are_refused_by_running(
    seg_export: Path, changes: dict[str, object], message: str
) -> None:
    manifest = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {}).manifest
    with pytest.raises(ValueError) as caught:
        check_file_by_running(seg_export, dataclasses.replace(manifest, **changes))  # type: ignore[arg-type]
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "grid",
    [
        np.zeros((0, 0), dtype=bool),
        np.zeros((2, 3), dtype=bool),
        np.ones((2, 3), dtype=bool),
        np.array([[True, False, False], [False, True, True]]),
        np.array([[False, False, True], [True, True, False]]),
    ],
)
def test_mask_run_lengths_round_trip(grid: np.ndarray) -> None:
    mask = Mask.encode(7, 9, grid)
    assert (mask.left, mask.top, mask.width, mask.height) == (7, 9, grid.shape[1], grid.shape[0])
    if grid.size:
        assert mask.counts[0] == 0 or not grid.ravel()[0]  # the first run is background
    assert np.array_equal(mask.decode(), grid)
    assert mask.area == int(grid.sum())


def check_mask(detection: Detection, image_size: tuple[int, int]) -> bool:
    """The mask covers the pixels whose centre is in the box; for boxes off the image edge it is the known
    lower-right half.

    Returns whether the content was checked (the box not cut by the image edge).
    """
    box, mask = detection.box, detection.mask
    assert mask is not None
    grid = tuple(math.ceil(v - 0.5) for v in box.as_tuple())
    assert (mask.left, mask.top, mask.left + mask.width, mask.top + mask.height) == grid
    assert sum(mask.counts) == mask.width * mask.height
    width, height = image_size
    if box.x_min < 1 or box.y_min < 1 or box.x_max > width - 1 or box.y_max > height - 1:
        return False  # clipped: the unclipped box, which the mask follows, is unknown here
    got = np.array(mask.rows(), dtype=bool)
    xs = np.arange(mask.left, mask.left + mask.width) + 0.5
    ys = np.arange(mask.top, mask.top + mask.height) + 0.5
    w, h = box.x_max - box.x_min, box.y_max - box.y_min
    value = (xs[None, :] - box.x_min) / w + (ys[:, None] - box.y_min) / h - 1
    expected = value > 0
    # Pixels within about a pixel of the diagonal may go either way (float32, box rounding).
    undecided = np.abs(value) <= 1.5 * (1 / w + 1 / h)
    assert not np.any((got != expected) & ~undecided), "mask differs from the box's lower-right half"
    assert mask.area == pytest.approx(expected.sum(), rel=0.05, abs=3)
    return True


def test_infer_returns_masks(seg_server: RunningServer) -> None:
    with Client(seg_server.address, timeout_s=120) as client:
        result = client.infer(media("coffee.png"), model="tiny-seg")
    prediction = result.predictions[0]
    detections = prediction.detections
    assert any(d.class_name == "cup" and d.confidence > 0.5 for d in detections)
    size = (prediction.image_size.width, prediction.image_size.height)
    assert sum(check_mask(d, size) for d in detections) >= 1


def test_streams_return_masks(seg_server: RunningServer) -> None:
    frames: list[StreamFrame] = []
    with (
        Client(seg_server.address) as client,
        client.stream(["bikes.mp4"], model="tiny-seg", max_fps=50, timeout_s=120) as stream,
    ):
        for event in stream:
            if isinstance(event, StreamFrame):
                frames.append(event)
                if len(frames) == 5:
                    break
    checked = 0
    for frame in frames:
        size = (frame.prediction.image_size.width, frame.prediction.image_size.height)
        for detection in frame.prediction.detections:
            checked += check_mask(detection, size)
    assert checked >= 1, "no detection off the image edge on five bikes.mp4 frames"


def ultralytics_native_masks(
    coefficients: np.ndarray, protos: np.ndarray, boxes: np.ndarray, pad_y: int, size: tuple[int, int]
) -> np.ndarray:
    """Ultralytics' `process_mask_native` (retina masks) in numpy and cv2: logits = coefficients @ prototypes,
    the letterbox rows cut off in prototype space (`scale_masks`), bilinear resize to the image, crop to the
    box (`crop_mask`: pixel index in [x1, x2)), logits > 0."""
    channels, rows, columns = protos.shape
    logits = (coefficients @ protos.reshape(channels, -1)).reshape(-1, rows, columns)
    width, height = size
    r = np.arange(width)[None, :]
    c = np.arange(height)[:, None]
    masks = []
    for logit, (x1, y1, x2, y2) in zip(logits, boxes, strict=True):
        full = cv2.resize(logit[pad_y : rows - pad_y], (width, height), interpolation=cv2.INTER_LINEAR)
        masks.append((full > 0) & (r >= x1) & (r < x2) & (c >= y1) & (c < y2))
    return np.stack(masks)


def test_masks_agree_with_ultralytics_native_masks() -> None:
    """Smooth random prototypes and coefficients (not the linear masks of the derived head, which bilinear
    sampling reproduces exactly): the served masks match Ultralytics' native-resolution masks, pixel for pixel
    away from the box edges (whose rounding differs by design: pixel centre here, pixel index there)."""
    rng = np.random.default_rng(12)
    channels, classes = 32, 2
    # A 650x325 image letterboxed into 416x416: scale 0.64, 104 rows of padding above and below (26 prototype
    # rows), so both pipelines cut exactly the same rows.
    transform = Transform(scale_x=0.64, scale_y=0.64, pad_x=0.0, pad_y=104.0, original=ImageSize(650, 325))
    noise = rng.normal(size=(channels, 104, 104)).astype(np.float32)
    protos = np.stack([cv2.GaussianBlur(p, (0, 0), 4) for p in noise])[None] * 8
    boxes_input = np.array([[40, 130, 200, 260], [180, 120, 400, 300], [10, 110, 390, 310]], dtype=np.float32)
    coefficients = rng.normal(size=(len(boxes_input), channels)).astype(np.float32)
    output = np.zeros((1, 4 + classes + channels, len(boxes_input)), dtype=np.float32)
    output[0, 0] = (boxes_input[:, 0] + boxes_input[:, 2]) / 2
    output[0, 1] = (boxes_input[:, 1] + boxes_input[:, 3]) / 2
    output[0, 2] = boxes_input[:, 2] - boxes_input[:, 0]
    output[0, 3] = boxes_input[:, 3] - boxes_input[:, 1]
    output[0, 4] = [0.9, 0.8, 0.7]
    output[0, 4 + classes :] = coefficients.T
    manifest = ModelManifest(
        task=Task.DETECTION,
        decoder=Decoder.YOLOV8_SEG,
        input_width=416,
        input_height=416,
        class_names=("a", "b"),
    )
    options = DecodeOptions(confidence=0.25, iou=0.99, max_detections=10, top_k=1, agnostic_nms=True)
    decoded = decode_batch(manifest, {"output0": output, "output1": protos}, [transform], options)
    detections = decoded[0].detections
    assert len(detections) == 3
    boxes = transform.boxes_to_original(boxes_input)
    reference = ultralytics_native_masks(coefficients, protos[0], boxes, 26, (650, 325))
    for detection, expected, box in zip(detections, reference, boxes, strict=True):
        assert detection.box.as_tuple() == pytest.approx(tuple(box.tolist()), abs=1e-3)
        mask = detection.mask
        assert mask is not None
        got = np.zeros((325, 650), dtype=bool)
        got[mask.top : mask.top + mask.height, mask.left : mask.left + mask.width] = mask.decode()
        fill = expected.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
        assert 0.05 < fill < 0.95  # a mask with an outline inside the box, not all or nothing
        x1, y1, x2, y2 = (int(v) for v in box)
        inner = (slice(y1 + 1, y2 - 1), slice(x1 + 1, x2 - 1))
        differing = (got[inner] != expected[inner]).mean()
        assert differing < 0.002, f"{differing:.2%} of the box's pixels differ from Ultralytics'"


def test_cli_infer_shows_masks(seg_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["infer", str(media("coffee.png")), "--address", seg_server.address, "--model", "tiny-seg"])
    out = capsys.readouterr().out
    assert code == 0
    shares = [int(m.group(1)) for m in re.finditer(r"^    mask: \d+ px \((\d+)% of its box\)$", out, re.M)]
    assert shares and all(40 <= s <= 60 for s in shares), out  # each the lower-right half of its box
