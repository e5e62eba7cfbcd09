"""Greedy non-maximum suppression in NumPy, class-agnostic and class-aware.

Semantics follow torchvision.ops.nms: boxes are xyxy, visited in descending score order, and a box is
suppressed when its IoU with an already kept box is strictly greater than `iou_threshold`. Each step is one
vectorised IoU of the kept box against every remaining candidate, and the candidate list shrinks as it goes,
so the Python-level loop runs once per *kept* box, not once per pair.

With `max_output` (the decoders pass max_detections) the work stops once enough boxes are kept and never
looks at candidates that cannot matter, which keeps low confidence thresholds (thousands of candidates)
affordable without changing the answer.

Determinism: equal scores keep their input order (a stable sort), so the same input always gives the same
output. Degenerate boxes (zero or negative width or height) have zero area, overlap nothing and are never
suppressed. Candidates with a NaN score are dropped. Coordinates are taken to float64 so that results do not
flip on float32 rounding near the threshold.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["batched_nms", "box_iou", "nms"]

IndexArray = npt.NDArray[np.int64]

# The first prefix `nms` tries when max_output is set (see there); later prefixes grow x4.
_FIRST_PREFIX = 256


def _as_boxes(
    boxes: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
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


def _greedy(
    order: IndexArray, boxes: npt.NDArray[np.float64], iou_threshold: float, limit: int
) -> IndexArray:
    """Greedy NMS over candidates already in visiting order; stops after `limit` kept boxes.

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


def nms(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, *, max_output: int | None = None
) -> IndexArray:
    """Class-agnostic NMS.

    Args:
        boxes: (K, 4) xyxy boxes with finite coordinates.
        scores: (K,) scores.
        iou_threshold: a candidate is dropped when its IoU with a kept box is > this.
        max_output: keep at most this many boxes (the best ones; the answer is a prefix of the unlimited
            one). With many candidates this is much cheaper, see below.

    Returns:
        Indices into `boxes` of the kept boxes, int64, sorted by descending score (ties by index).

    Greedy NMS decides each candidate from higher-scoring candidates only, so running it on the best T
    candidates gives exactly the unlimited answer's first kept boxes. With `max_output` set it first tries a
    short prefix and widens it (x4) only while the prefix yields fewer than `max_output` kept boxes: the cost
    then follows the boxes that matter instead of every low-scoring candidate.

    Example:
        >>> nms([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5)
        array([0, 2])
    """
    box_array, score_array = _as_boxes(boxes, scores)
    limit = box_array.shape[0] if max_output is None else max_output
    if box_array.shape[0] == 0 or limit <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-score_array, kind="stable")
    order = order[~np.isnan(score_array[order])]
    prefix = max(4 * limit, _FIRST_PREFIX)
    while prefix < order.size:
        keep = _greedy(order[:prefix], box_array, iou_threshold, limit)
        if keep.size == limit:
            return keep
        prefix *= 4
    return _greedy(order, box_array, iou_threshold, limit)


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    iou_threshold: float,
    *,
    max_output: int | None = None,
) -> IndexArray:
    """Class-aware NMS: boxes only suppress boxes of the same class.

    Uses the offset trick (as torchvision does): each class is shifted to its own region of the plane, far
    enough that boxes of different classes cannot overlap, and one class-agnostic pass does the work. The
    shift is computed in float64 from the actual coordinate span, so it costs no precision for realistic
    image sizes and class counts.

    Returns:
        Indices into `boxes` of the kept boxes (at most `max_output`), int64, sorted by descending score
        across all classes, ties by index.
    """
    box_array, score_array = _as_boxes(boxes, scores)
    id_array = np.asarray(class_ids)
    if id_array.shape != score_array.shape:
        raise ValueError(f"expected class_ids of shape {score_array.shape}, got {id_array.shape}")
    if box_array.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    low = float(box_array.min())
    span = float(box_array.max()) - low + 1.0
    shifted = box_array - low + id_array.astype(np.float64)[:, None] * span
    return nms(shifted, score_array, iou_threshold, max_output=max_output)
