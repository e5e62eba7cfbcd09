"""NMS against a deliberately naive reference, plus the edge cases the reference does not exercise."""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import pytest
from visionrpc.server.processing import batched_nms, box_iou, nms


def reference_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], threshold: float
) -> list[int]:
    """Greedy NMS with Python loops: visit by descending score (ties by index), drop IoU > threshold."""
    as_lists = boxes.astype(np.float64).tolist()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    kept: list[int] = []
    for i in order:
        if all(reference_iou(as_lists[i], as_lists[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def reference_batched_nms(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    classes: npt.NDArray[np.int64],
    threshold: float,
) -> list[int]:
    kept: list[int] = []
    for label in np.unique(classes):
        members = np.flatnonzero(classes == label)
        kept.extend(int(members[i]) for i in reference_nms(boxes[members], scores[members], threshold))
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def random_boxes(seed: int, count: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Boxes clustered around a few centres, so that overlaps at every IoU level are common."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(50, 450, size=(6, 2))[rng.integers(0, 6, size=count)]
    centres += rng.normal(0, 12, size=(count, 2))
    sizes = rng.uniform(10, 120, size=(count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, size=count).astype(np.float32)
    return boxes, scores


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0], ids=lambda t: f"iou={t}")
@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
def test_nms_matches_the_reference_on_random_boxes(seed: int, threshold: float) -> None:
    boxes, scores = random_boxes(seed, 300)

    kept = nms(boxes, scores, threshold)

    assert kept.dtype == np.int64
    assert kept.tolist() == reference_nms(boxes, scores, threshold)


@pytest.mark.parametrize("threshold", [0.3, 0.6], ids=lambda t: f"iou={t}")
@pytest.mark.parametrize("seed", [3, 4], ids=lambda s: f"seed={s}")
def test_batched_nms_matches_a_per_class_reference(seed: int, threshold: float) -> None:
    boxes, scores = random_boxes(seed, 300)
    classes = np.random.default_rng(seed).integers(0, 5, size=300)

    kept = batched_nms(boxes, scores, classes, threshold)

    assert kept.tolist() == reference_batched_nms(boxes, scores, classes, threshold)


PREFIX_BOXES, PREFIX_SCORES = random_boxes(11, 1500)
PREFIX_CLASSES = np.random.default_rng(11).integers(0, 3, size=1500)


@functools.cache
def unlimited_answers(threshold: float) -> tuple[list[int], list[int]]:
    return (
        reference_nms(PREFIX_BOXES, PREFIX_SCORES, threshold),
        reference_batched_nms(PREFIX_BOXES, PREFIX_SCORES, PREFIX_CLASSES, threshold),
    )


@pytest.mark.parametrize("limit", [1, 7, 100, 5000], ids=lambda n: f"max={n}")
@pytest.mark.parametrize("threshold", [0.3, 0.7], ids=lambda t: f"iou={t}")
def test_max_output_gives_a_prefix_of_the_unlimited_answer(threshold: float, limit: int) -> None:
    """Also exercises the widening prefix: 1500 boxes are more than the first prefixes tried."""
    agnostic, aware = unlimited_answers(threshold)

    assert nms(PREFIX_BOXES, PREFIX_SCORES, threshold, max_output=limit).tolist() == agnostic[:limit]
    assert (
        batched_nms(PREFIX_BOXES, PREFIX_SCORES, PREFIX_CLASSES, threshold, max_output=limit).tolist()
        == (aware[:limit])
    )


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "expected"),
    [
        pytest.param([[0, 0, 10, 10]] * 3, [0.5, 0.9, 0.7], 0.5, [1], id="identical-keeps-best"),
        pytest.param([[0, 0, 1, 1], [5, 5, 6, 6]], [0.1, 0.2], 0.0, [1, 0], id="disjoint-sorted-by-score"),
        pytest.param([[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.5, [0, 1], id="iou-equal-to-threshold-kept"),
        pytest.param([[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.49, [0], id="iou-above-threshold-dropped"),
        pytest.param(
            [[0, 0, 4, 4], [0, 0, 4, 4], [9, 9, 12, 12]], [0.5, 0.5, 0.5], 0.5, [0, 2], id="ties-by-index"
        ),
        pytest.param([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], 0.1, [0, 1], id="zero-area-overlaps-nothing"),
        pytest.param([[0, 0, 10, 10], [3, 3, 3, 8]], [0.9, 0.8], 0.0, [0, 1], id="line-inside-a-box"),
        pytest.param([[4, 4, 0, 0], [0, 0, 4, 4]], [0.9, 0.8], 0.1, [0, 1], id="inverted-box-has-no-area"),
        pytest.param([[0, 0, 1, 1], [0, 0, 1, 1]], [float("nan"), 0.3], 0.5, [1], id="nan-score-dropped"),
    ],
)
def test_nms_cases(
    boxes: list[list[float]], scores: list[float], threshold: float, expected: list[int]
) -> None:
    assert nms(np.array(boxes, np.float32), np.array(scores, np.float32), threshold).tolist() == expected


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        pytest.param([0, 0, 0], [0], id="same-class-suppresses"),
        pytest.param([0, 1, 2], [0, 1, 2], id="different-classes-never-suppress"),
        pytest.param([7, 3, 7], [0, 1], id="mixed"),
    ],
)
def test_batched_nms_is_class_aware(classes: list[int], expected: list[int]) -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [0, 1, 10, 10]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)

    assert batched_nms(boxes, scores, np.array(classes), 0.5).tolist() == expected


def test_batched_nms_keeps_precision_with_large_class_offsets() -> None:
    """A wide coordinate span times a large class id must not blur IoU (float32 would round 0.75 here)."""
    boxes = np.array([[0, 0, 1.5, 1], [0, 0, 0.75, 1], [0, 0, 8000, 8000]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    classes = np.array([999, 999, 0])

    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1, 2]  # IoU is exactly 0.5
    assert batched_nms(boxes, scores, classes, 0.49).tolist() == [0, 2]


@pytest.mark.parametrize("function", ["nms", "batched_nms"])
def test_empty_input(function: str) -> None:
    boxes, scores = np.empty((0, 4), np.float32), np.empty(0, np.float32)

    kept = (
        nms(boxes, scores, 0.5)
        if function == "nms"
        else batched_nms(boxes, scores, np.empty(0, np.int64), 0.5)
    )

    assert kept.shape == (0,) and kept.dtype == np.int64


@pytest.mark.parametrize(
    ("boxes", "scores", "message"),
    [
        pytest.param(np.zeros((3, 5)), np.zeros(3), r"boxes of shape \(K, 4\)", id="five-columns"),
        pytest.param(np.zeros((3, 4)), np.zeros(2), r"scores of shape \(3,\)", id="score-count"),
    ],
)
def test_shape_errors(boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nms(boxes, scores, 0.5)


def test_box_iou_matches_the_reference() -> None:
    first, _ = random_boxes(5, 20)
    second, _ = random_boxes(6, 30)

    matrix = box_iou(first, second)

    expected = [
        [reference_iou(a, b) for b in second.astype(np.float64).tolist()]
        for a in first.astype(np.float64).tolist()
    ]
    np.testing.assert_allclose(matrix, expected, rtol=1e-12)
