"""Greedy non-maximum suppression, class-agnostic and class-aware: OpenCV's C++ loop where it provably
gives the answer of the NumPy reference below, the NumPy reference elsewhere.

Semantics follow torchvision.ops.nms: boxes are xyxy, visited in descending score order, and a box is
suppressed when its IoU with an already kept box is strictly greater than `iou_threshold`. Equal scores keep
their input order (a stable sort), so the same input always gives the same output. Degenerate boxes (zero or
negative width or height) have zero area, overlap nothing and are never suppressed. Candidates with a NaN
score are dropped. Coordinates are taken to float64 so that results do not flip on float32 rounding near the
threshold.

Two implementations of those semantics:

* `numpy_nms`, the reference: one vectorised IoU of each kept box against the remaining candidates, so the
  Python-level loop runs once per *kept* box.
* `opencv_nms`: `cv2.dnn.NMSBoxes`, whose loop is C++ (3-5x faster, see docs/performance.md). It differs
  from the reference in ways that are handled here rather than hoped away:
    - it sorts by float32 scores and its `top_k` caps candidates *before* NMS: we sort ourselves (stable,
      float64, NaN dropped) and hand it the candidates in that order with their ranks as scores, no top_k;
    - it takes (x, y, w, h) boxes and treats a zero-area pair as IoU 1 (and an inverted box as having a
      positive area): it only sees inputs whose boxes all have positive sides, finite coordinates and a
      threshold strictly inside (0, 1) — anything else goes to the reference;
    - it rounds each IoU to float32 before comparing it with a float32 threshold, so a pair whose IoU is
      within ~1e-7 of the threshold may be decided the other way. It therefore runs twice, with the
      threshold lowered and raised by `_BRACKET`: greedy NMS decides each candidate from the boxes kept
      before it, a lower threshold suppresses at least what the reference suppresses and a higher one at
      most, so when both runs keep the same boxes, no decision fell in the uncertain band and the reference
      would keep exactly those boxes too. When they differ (a box with IoU within 1e-5 of the threshold
      decided something) the reference decides.
  `nms` tries OpenCV first and falls back to the reference, so its answer is always the reference's.

With `max_output` (the decoders pass max_detections) the work stops once enough boxes are kept and never
looks at candidates that cannot matter, which keeps low confidence thresholds (thousands of candidates)
affordable without changing the answer.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["batched_nms", "box_iou", "nms", "numpy_nms", "opencv_nms", "shift_by_class"]

IndexArray = npt.NDArray[np.int64]
BoxArray = npt.NDArray[np.float64]

# The first prefix tried when max_output is set (see `nms`); later prefixes grow x4.
_FIRST_PREFIX = 256
# Half-width of the threshold band OpenCV's two runs bracket; far above its float32 rounding of IoU (~1e-7).
_BRACKET = 1e-5
# OpenCV's path needs every box side to exceed this fraction of the largest coordinate, so that the float64
# rounding of (x, y, w, h) moves an IoU by far less than _BRACKET (sides of ~1e-9 px on a 416 px image, or
# 1e-4 px across 80 classes shifted apart by `batched_nms`, are not boxes a model produces).
_MIN_RELATIVE_SIDE = 1e-9


def _as_boxes(boxes: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[BoxArray, npt.NDArray[np.float64]]:
    box_array = np.asarray(boxes, dtype=np.float64)
    score_array = np.asarray(scores, dtype=np.float64)
    if box_array.ndim != 2 or box_array.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (K, 4), got {box_array.shape}")
    if score_array.shape != (box_array.shape[0],):
        raise ValueError(f"expected scores of shape ({box_array.shape[0]},), got {score_array.shape}")
    return box_array, score_array


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Pairwise IoU of (M, 4) and (K, 4) xyxy boxes as an (M, K) float64 matrix; 0 where a union is empty."""
    first = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    second = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(first[:, 2] - first[:, 0], 0, None) * np.clip(first[:, 3] - first[:, 1], 0, None)
    area_b = np.clip(second[:, 2] - second[:, 0], 0, None) * np.clip(second[:, 3] - second[:, 1], 0, None)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    sides = np.clip(bottom_right - top_left, 0, None)
    inter = sides[..., 0] * sides[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    result: npt.NDArray[np.float64] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return result


def _visiting_order(scores: npt.NDArray[np.float64]) -> IndexArray:
    """Indices by descending score, ties by index, NaN scores left out."""
    order = np.argsort(-scores, kind="stable")
    return order[~np.isnan(scores[order])]


def _greedy(order: IndexArray, boxes: BoxArray, iou_threshold: float, limit: int) -> IndexArray:
    """The reference: greedy NMS over candidates already in visiting order; stops after `limit` kept boxes.

    The survivors' coordinates and areas travel together in one (5, R) array that is compressed once per
    kept box, and "IoU > t" is tested as "intersection > t * union", which needs no division and is False
    for an empty union (degenerate boxes) without special cases.
    """
    x1, y1, x2, y2 = boxes[order].T
    rest = np.stack([x1, y1, x2, y2, np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)])
    keep: list[int] = []
    while order.size:
        keep.append(int(order[0]))
        if order.size == 1 or len(keep) == limit:
            break
        best, rest = rest[:, 0], rest[:, 1:]
        width = np.minimum(rest[2], best[2]) - np.maximum(rest[0], best[0])
        height = np.minimum(rest[3], best[3]) - np.maximum(rest[1], best[1])
        inter = np.maximum(width, 0) * np.maximum(height, 0)
        survive = inter <= iou_threshold * (rest[4] + best[4] - inter)
        order, rest = order[1:][survive], rest[:, survive]
    return np.asarray(keep, dtype=np.int64)


def _opencv_greedy(order: IndexArray, boxes: BoxArray, iou_threshold: float) -> IndexArray | None:
    """OpenCV's greedy NMS over candidates in visiting order, bracketed (see the module docstring); None
    when the bracket does not decide. No limit: OpenCV has none that does not cap candidates first."""
    chosen = boxes[order]
    xywh = np.concatenate([chosen[:, :2], chosen[:, 2:] - chosen[:, :2]], axis=1)
    # Ranks as scores: OpenCV's own stable sort by them reproduces our visiting order exactly, and all are
    # above the score threshold of 0.
    ranks = np.arange(order.size, 0, -1, dtype=np.float32)
    strict = _opencv_run(xywh, ranks, iou_threshold - _BRACKET)
    if not np.array_equal(strict, _opencv_run(xywh, ranks, iou_threshold + _BRACKET)):
        return None
    return order[strict]


def _opencv_run(xywh: BoxArray, ranks: npt.NDArray[np.float32], iou_threshold: float) -> IndexArray:
    # OpenCV's stubs ask for sequences; the binding takes arrays as they are (a list would cost a copy).
    kept = cv2.dnn.NMSBoxes(xywh, ranks, 0.0, iou_threshold)  # type: ignore[arg-type]
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def _opencv_applies(boxes: BoxArray, iou_threshold: float) -> bool:
    """Whether OpenCV's semantics coincide with the reference's for these boxes (module docstring)."""
    if not 0.0 < iou_threshold < 1.0 or not np.isfinite(boxes).all():
        return False
    sides = boxes[:, 2:] - boxes[:, :2]
    return bool(sides.min() > _MIN_RELATIVE_SIDE * max(float(np.abs(boxes).max()), 1.0))


def _prefixes(order: IndexArray, limit: int) -> list[IndexArray]:
    """The reference's candidate prefixes for `limit` kept boxes, shortest first, the whole order last.

    Greedy NMS decides each candidate from higher-scoring candidates only, so running it on the best T
    candidates gives exactly the unlimited answer's first kept boxes: a prefix that keeps `limit` boxes
    answers the question, and the cost follows the boxes that matter instead of every low-scoring candidate.
    """
    prefixes, size = [], max(4 * limit, _FIRST_PREFIX)
    while size < order.size:
        prefixes.append(order[:size])
        size *= 4
    prefixes.append(order)
    return prefixes


def _by_numpy(order: IndexArray, boxes: BoxArray, iou_threshold: float, limit: int) -> IndexArray:
    *shorter, whole = _prefixes(order, limit)
    for prefix in shorter:
        keep = _greedy(prefix, boxes, iou_threshold, limit)
        if keep.size == limit:
            return keep
    return _greedy(whole, boxes, iou_threshold, limit)


def _by_opencv(order: IndexArray, boxes: BoxArray, iou_threshold: float, limit: int) -> IndexArray | None:
    """OpenCV has no limit that does not cap candidates first, and its cost grows as candidates x kept
    boxes, so with many candidates it runs on a prefix sized from the limit and, when that keeps too few, on
    a longer one extrapolated from the fraction kept so far (the same prefix argument as `_prefixes`)."""
    if not _opencv_applies(boxes, iou_threshold):
        return None
    size = min(order.size, max(limit + limit // 4, _FIRST_PREFIX))
    while True:
        keep = _opencv_greedy(order[:size], boxes, iou_threshold)
        if keep is None:
            return None
        if keep.size >= limit or size == order.size:
            return keep[:limit]
        wanted = math.ceil(size * 1.5 * limit / max(keep.size, 1))
        size = min(order.size, max(wanted, 2 * size))


def _prepared(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, max_output: int | None
) -> tuple[BoxArray, IndexArray, int] | IndexArray:
    """(boxes, visiting order, limit), or the answer itself where there is nothing to keep."""
    box_array, score_array = _as_boxes(boxes, scores)
    limit = box_array.shape[0] if max_output is None else max_output
    if box_array.shape[0] == 0 or limit <= 0:
        return np.empty(0, dtype=np.int64)
    return box_array, _visiting_order(score_array), limit


def numpy_nms(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, *, max_output: int | None = None
) -> IndexArray:
    """The NumPy reference of `nms` (same arguments and result); `nms` is faster and gives the same answer."""
    prepared = _prepared(boxes, scores, max_output)
    if isinstance(prepared, np.ndarray):
        return prepared
    box_array, order, limit = prepared
    return _by_numpy(order, box_array, iou_threshold, limit)


def opencv_nms(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, *, max_output: int | None = None
) -> IndexArray | None:
    """`nms` by OpenCV alone: the reference's answer, or None where OpenCV cannot be shown to give it (a
    degenerate or non-finite box, a threshold of 0 or 1, an IoU within 1e-5 of the threshold)."""
    prepared = _prepared(boxes, scores, max_output)
    if isinstance(prepared, np.ndarray):
        return prepared
    box_array, order, limit = prepared
    if order.size <= 1:  # nothing to suppress (the common case at usual confidence thresholds)
        return order
    return _by_opencv(order, box_array, iou_threshold, limit)


def nms(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, *, max_output: int | None = None
) -> IndexArray:
    """Class-agnostic NMS: OpenCV's answer where it provably equals the reference's, else the reference's.

    Args:
        boxes: (K, 4) xyxy boxes.
        scores: (K,) scores.
        iou_threshold: a candidate is dropped when its IoU with a kept box is > this.
        max_output: keep at most this many boxes (the best ones; the answer is a prefix of the unlimited
            one). With many candidates this is much cheaper.

    Returns:
        Indices into `boxes` of the kept boxes, int64, sorted by descending score (ties by index).

    Example:
        >>> nms([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5)
        array([0, 2])
    """
    prepared = _prepared(boxes, scores, max_output)
    if isinstance(prepared, np.ndarray):
        return prepared
    box_array, order, limit = prepared
    if order.size <= 1:  # nothing to suppress (the common case at usual confidence thresholds)
        return order
    kept = _by_opencv(order, box_array, iou_threshold, limit)
    return kept if kept is not None else _by_numpy(order, box_array, iou_threshold, limit)


def shift_by_class(boxes: npt.ArrayLike, class_ids: npt.ArrayLike) -> BoxArray:
    """Moves each class's boxes to its own region of the plane, so that boxes of different classes cannot
    overlap and one class-agnostic NMS is a class-aware one (the offset trick, as torchvision does).

    The shift is computed in float64 from the actual coordinate span, so it costs no precision for realistic
    image sizes and class counts.
    """
    box_array = np.asarray(boxes, dtype=np.float64)
    id_array = np.asarray(class_ids)
    if box_array.ndim != 2 or box_array.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (K, 4), got {box_array.shape}")
    if id_array.shape != (box_array.shape[0],):
        raise ValueError(f"expected class_ids of shape ({box_array.shape[0]},), got {id_array.shape}")
    if box_array.shape[0] == 0:
        return box_array
    low = float(box_array.min())
    span = float(box_array.max()) - low + 1.0
    shifted: BoxArray = box_array - low + id_array.astype(np.float64)[:, None] * span
    return shifted


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    iou_threshold: float,
    *,
    max_output: int | None = None,
) -> IndexArray:
    """Class-aware NMS: boxes only suppress boxes of the same class (`nms` over `shift_by_class`).

    OpenCV's own NMSBoxesBatched is not used: it offsets classes by the largest coordinate only, so a box
    with negative coordinates (one reaching past the image's left or top edge) can overlap the previous
    class's region, and it was slower here than the shift below and one NMSBoxes.

    Returns:
        Indices into `boxes` of the kept boxes (at most `max_output`), int64, sorted by descending score
        across all classes, ties by index.
    """
    box_array, score_array = _as_boxes(boxes, scores)
    id_array = np.asarray(class_ids)
    if id_array.shape != score_array.shape:
        raise ValueError(f"expected class_ids of shape {score_array.shape}, got {id_array.shape}")
    if box_array.shape[0] <= 1:  # nothing to suppress: no shift needed
        return nms(box_array, score_array, iou_threshold, max_output=max_output)
    return nms(shift_by_class(box_array, id_array), score_array, iou_threshold, max_output=max_output)
