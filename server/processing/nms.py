"""Greedy non-maximum suppression in NumPy, class-agnostic and class-aware.

Semantics follow torchvision.ops.nms: boxes are xyxy, visited in descending score order, and a box is
suppressed when its IoU with an already kept box is strictly greater than `iou_threshold`. Each step is one
vectorised IoU of the kept box against every remaining candidate, and the candidate list shrinks as it goes,
so the Python-level loop runs once per *kept* box, not once per pair.

Determinism: equal scores keep their input order (a stable sort), so the same input always gives the same
output. Degenerate boxes (zero or negative width or height) have zero area, overlap nothing and are never
suppressed by IoU. Candidates with a NaN score are dropped. IoU is computed in float64 so that results do not
flip on float32 rounding near the threshold.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["batched_nms", "box_iou", "nms"]

IndexArray = npt.NDArray[np.int64]


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


def nms(
    boxes: npt.ArrayLike, scores: npt.ArrayLike, iou_threshold: float, *, max_output: int | None = None
) -> IndexArray:
    """Class-agnostic NMS.

    Args:
        boxes: (K, 4) xyxy boxes with finite coordinates.
        scores: (K,) scores.
        iou_threshold: a candidate is dropped when its IoU with a kept box is > this.
        max_output: stop once this many boxes are kept. Greedy NMS decides boxes in score order, so the
            first n kept boxes are the same whether or not it goes on; stopping early bounds the cost when
            thresholds are low and candidates many.

    Returns:
        Indices into `boxes` of the kept boxes, int64, sorted by descending score (ties by index).

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
    x1, y1, x2, y2 = box_array.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size or len(keep) == limit:
            break
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# Above this many boxes, one NMS per class beats one pass over all of them: each greedy step then compares a
# kept box with its own class only, instead of with every remaining box of every class.
PER_CLASS_ABOVE = 1024


def batched_nms(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    iou_threshold: float,
    *,
    max_output: int | None = None,
) -> IndexArray:
    """Class-aware NMS: boxes only suppress boxes of the same class.

    Small inputs use the offset trick (as torchvision does): each class is shifted to its own region of the
    plane, far enough that boxes of different classes cannot overlap, and one class-agnostic pass does the
    work; the shift is computed in float64 from the actual coordinate span, so it costs no precision for
    realistic image sizes and class counts. Large inputs run one pass per class and merge. Both give the
    same answer.

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
    if box_array.shape[0] <= PER_CLASS_ABOVE:
        low = float(box_array.min())
        span = float(box_array.max()) - low + 1.0
        shifted = box_array - low + id_array.astype(np.float64)[:, None] * span
        return nms(shifted, score_array, iou_threshold, max_output=max_output)
    by_class = np.argsort(id_array, kind="stable")  # grouped by class, index order within each class
    groups = np.split(by_class, np.flatnonzero(np.diff(id_array[by_class])) + 1)
    kept = [
        members[nms(box_array[members], score_array[members], iou_threshold, max_output=max_output)]
        for members in groups
    ]
    merged = np.concatenate(kept)
    merged.sort()  # index order first, so the stable score sort below breaks ties by index
    merged = merged[np.argsort(-score_array[merged], kind="stable")]
    return merged[:max_output].astype(np.int64, copy=False)
