"""OpenCV's NMS path against the NumPy reference, on real yolov3-tiny outputs and on dense synthetic sets.

`opencv_nms` must either give exactly the reference's indices or decline (None); the realistic cases must
be decided by OpenCV (otherwise these tests would prove nothing about it), and `nms` must always equal the
reference, whichever path answered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from media import media
from model_exports import builtin_tiny
from visionrpc.server.domain import ChannelOrder
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.processing import batched_nms, nms, preprocess
from visionrpc.server.processing.nms import numpy_nms, opencv_nms, shift_by_class

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Candidates = tuple[FloatArray, FloatArray, IntArray]

PHOTOS = [
    "coffee.png",
    "motorcycle_left.png",
    "astronaut.png",
    "chelsea.png",
    "grace_hopper.jpg",
    "rocket.jpg",
]


@functools.cache
def yolo_candidates(name: str, confidence: float) -> Candidates:
    """yolov3-tiny's candidate boxes on a photo as the YOLOv5 decoder builds them: xyxy in input pixels
    (some past the image's edges), score = objectness x best class > `confidence`, best class."""
    directory = builtin_tiny()
    manifest = ModelManifest.read(directory)
    pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert pixels is not None
    tensor, _ = preprocess(np.asarray(pixels, dtype=np.uint8), ChannelOrder.BGR, manifest)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = np.asarray(session.run(None, {session.get_inputs()[0].name: tensor[np.newaxis]})[0])[0]
    class_scores = rows[:, 5:] * rows[:, 4:5]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores[np.arange(len(rows)), class_ids]
    chosen = scores > confidence
    cx, cy, w, h = rows[chosen, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes.astype(np.float64), scores[chosen].astype(np.float64), class_ids[chosen].astype(np.int64)


def clustered(count: int, seed: int) -> Candidates:
    """Dense candidates: boxes around a few centres (overlaps at every IoU level), 80 classes, some boxes
    reaching past the top-left edge (negative coordinates), float32 like model outputs."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 416, size=(8, 2))[rng.integers(0, 8, size=count)]
    centres += rng.normal(0, 15, size=(count, 2))
    sizes = rng.uniform(8, 160, size=(count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, size=count).astype(np.float32)
    return boxes.astype(np.float64), scores.astype(np.float64), rng.integers(0, 80, size=count)


def tied_scores(count: int, seed: int) -> Candidates:
    """Scores on a 0.05 grid (many exact ties, broken by index) and duplicated boxes (IoU exactly 1)."""
    boxes, scores, classes = clustered(count, seed)
    boxes[1::7] = boxes[0::7][: len(boxes[1::7])]
    return boxes, np.round(scores * 20) / 20, classes


def photo(name: str, confidence: float) -> Callable[[], Candidates]:
    return lambda: yolo_candidates(name, confidence)


# (id, candidates, iou, max_output): every case must be decided by OpenCV.
CASES = [
    *[
        pytest.param(photo(name, confidence), 0.45, 300, id=f"{name}-conf{confidence}")
        for name in PHOTOS
        for confidence in (0.01, 0.001)
    ],
    pytest.param(photo("coffee.png", 0.001), 0.7, None, id="coffee-conf0.001-iou0.7-unlimited"),
    pytest.param(photo("astronaut.png", 0.001), 0.3, 5, id="astronaut-conf0.001-iou0.3-max5"),
    pytest.param(lambda: clustered(100, 0), 0.45, 300, id="dense-100"),
    pytest.param(lambda: clustered(100, 1), 0.5, 1, id="dense-100-max1"),
    pytest.param(lambda: clustered(3000, 2), 0.45, 300, id="dense-3000"),
    pytest.param(lambda: clustered(3000, 3), 0.45, 20, id="dense-3000-max20"),
    pytest.param(lambda: clustered(3000, 4), 0.65, None, id="dense-3000-iou0.65-unlimited"),
    pytest.param(lambda: clustered(3000, 5), 0.1, 1000, id="dense-3000-iou0.1"),
    pytest.param(lambda: tied_scores(3000, 6), 0.45, 300, id="ties-3000"),
    pytest.param(lambda: tied_scores(100, 7), 0.45, None, id="ties-100-unlimited"),
]


@pytest.mark.parametrize("aware", [False, True], ids=["agnostic", "class-aware"])
@pytest.mark.parametrize(("candidates", "iou", "max_output"), CASES)
def test_opencv_keeps_the_references_boxes(
    candidates: Callable[[], Candidates], iou: float, max_output: int | None, aware: bool
) -> None:
    boxes, scores, classes = candidates()
    if aware:
        boxes = shift_by_class(boxes, classes)

    reference = numpy_nms(boxes, scores, iou, max_output=max_output)
    by_opencv = opencv_nms(boxes, scores, iou, max_output=max_output)

    assert reference.size > 0
    assert by_opencv is not None, "OpenCV declined a realistic case"
    assert by_opencv.dtype == np.int64
    assert by_opencv.tolist() == reference.tolist()


@pytest.mark.parametrize(("candidates", "iou", "max_output"), CASES[:4] + CASES[-6:])
def test_batched_nms_equals_the_reference_on_shifted_boxes(
    candidates: Callable[[], Candidates], iou: float, max_output: int | None
) -> None:
    boxes, scores, classes = candidates()

    kept = batched_nms(boxes, scores, classes, iou, max_output=max_output)

    assert (
        kept.tolist()
        == numpy_nms(shift_by_class(boxes, classes), scores, iou, max_output=max_output).tolist()
    )


def grid_boxes(count: int) -> Candidates:
    """Integer boxes on a grid: many IoUs land exactly on 0.5, where OpenCV's float32 IoU could go either
    way and the bracket hands the decision to the reference."""
    rng = np.random.default_rng(8)
    corners = rng.integers(0, 6, size=(count, 2)) * 2
    sides = rng.choice([2, 4], size=(count, 2))
    boxes = np.concatenate([corners, corners + sides], axis=1).astype(np.float64)
    return boxes, rng.uniform(0, 1, size=count), np.zeros(count, dtype=np.int64)


@pytest.mark.parametrize(
    ("boxes", "scores", "iou", "declines"),
    [
        pytest.param([[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.5, True, id="iou-exactly-at-threshold"),
        pytest.param([[0, 0, 10, 10], [3, 3, 3, 8]], [0.9, 0.8], 0.3, True, id="zero-width-box"),
        pytest.param([[4, 4, 0, 0], [0, 0, 4, 4]], [0.9, 0.8], 0.3, True, id="inverted-box"),
        pytest.param([[0, 0, 1, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.0, True, id="threshold-0"),
        pytest.param([[0, 0, 1, 1], [0, 0, 1, 1]], [0.9, 0.8], 1.0, True, id="threshold-1"),
        pytest.param([[0, 0, float("inf"), 1], [0, 0, 1, 1]], [0.9, 0.8], 0.5, True, id="infinite-box"),
        pytest.param([[0, 0, 1, 1], [0, 0, 1, 1]], [float("nan"), 0.3], 0.5, False, id="nan-score-dropped"),
        pytest.param([[0, 0, 10, 10], [1, 1, 10, 10]], [0.5, 0.5], 0.5, False, id="tie-keeps-first"),
    ],
)
def test_opencv_declines_what_it_cannot_decide_and_nms_still_answers(
    boxes: list[list[float]], scores: list[float], iou: float, declines: bool
) -> None:
    box_array, score_array = np.array(boxes), np.array(scores)

    by_opencv = opencv_nms(box_array, score_array, iou)

    assert (by_opencv is None) == declines
    assert nms(box_array, score_array, iou).tolist() == numpy_nms(box_array, score_array, iou).tolist()


@pytest.mark.parametrize("max_output", [None, 10])
def test_nms_equals_the_reference_where_the_bracket_falls_back(max_output: int | None) -> None:
    boxes, scores, _ = grid_boxes(400)

    assert opencv_nms(boxes, scores, 0.5, max_output=max_output) is None
    assert nms(boxes, scores, 0.5, max_output=max_output).tolist() == (
        numpy_nms(boxes, scores, 0.5, max_output=max_output).tolist()
    )


def test_opencvs_own_batched_nms_mixes_classes_with_negative_coordinates() -> None:
    """Why batched_nms shifts classes itself: NMSBoxesBatched offsets class k by k x (largest coordinate
    + 1), so a class-1 box left of the image lands on a class-0 box near the right edge."""
    xywh = np.array([[90, -10, 10, 10], [-11, -111, 12, 10]], dtype=np.float64)
    scores = np.array([0.9, 0.8], dtype=np.float32)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    classes = np.array([0, 1], np.int32)

    opencv = cv2.dnn.NMSBoxesBatched(xywh, scores, classes, 0.0, 0.3)  # type: ignore[arg-type]

    assert np.asarray(opencv).reshape(-1).tolist() == [0]
    assert batched_nms(xyxy, scores, np.array([0, 1]), 0.3).tolist() == [0, 1]
