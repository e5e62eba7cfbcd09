"""Segmentation masks from a YOLOv8-seg head: coefficients x prototypes, sampled at each pixel of the box in
the original image (through the letterbox transform) and run-length encoded over the box (`Mask`)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ..domain import Mask
from ..manifest import ModelManifest
from .preprocess import Transform

__all__ = ["pixel_grid", "segment_masks"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _interpolation(positions: FloatArray, size: int) -> tuple[IntArray, IntArray, FloatArray, slice]:
    """Linear interpolation at `positions` (cell i centred on i), clamped at the ends as torch's bilinear
    interpolation with align_corners=False: for each position its two cells, relative to the window of cells
    the positions touch, and the weight of the second; and that window."""
    clamped = np.clip(positions, np.float32(0.0), np.float32(size - 1))
    low = np.floor(clamped).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    first = int(low.min()) if len(low) else 0
    last = int(high.max()) if len(high) else -1
    fraction = (clamped - low).astype(np.float32)
    return low - first, high - first, fraction, slice(first, last + 1)


def pixel_grid(x_min: float, y_min: float, x_max: float, y_max: float) -> tuple[int, int, int, int]:
    """The pixels whose centre (c + 0.5) lies in [min, max) on each axis, as left, top, right, bottom (right
    and bottom exclusive): c in [ceil(min - 0.5), ceil(max - 0.5))."""
    return (
        math.ceil(x_min - 0.5),
        math.ceil(y_min - 0.5),
        math.ceil(x_max - 0.5),
        math.ceil(y_max - 0.5),
    )


def segment_masks(
    coefficients: FloatArray,
    protos: FloatArray,
    boxes: FloatArray,
    transform: Transform,
    manifest: ModelManifest,
) -> list[Mask]:
    """Each kept box's mask in original-image pixels, run-length encoded over the box.

    Ultralytics computes coefficients @ prototypes, crops to the box, upsamples bilinearly to the input size,
    removes the letterbox and resizes to the image, then thresholds at 0 (sigmoid > 0.5). Here each pixel of
    the box is mapped through the letterbox transform to prototype coordinates and the
    logits are sampled there bilinearly, from the prototype cells under the box only: the same function
    without building a full-size mask per detection. The grid is the pixels whose centre lies in the box
    (`pixel_grid`), which is Ultralytics' crop to the box.
    """
    _, rows, columns = protos.shape
    per_x = np.float32(columns / manifest.input_width)
    per_y = np.float32(rows / manifest.input_height)
    masks = []
    for coefficient, (x_min, y_min, x_max, y_max) in zip(coefficients, boxes.tolist(), strict=True):
        left, top, right, bottom = pixel_grid(x_min, y_min, x_max, y_max)
        xs = np.arange(left, right, dtype=np.float32) + np.float32(0.5)
        ys = np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)
        x0, x1, fx, window_x = _interpolation(
            (xs * transform.scale_x + transform.pad_x) * per_x - 0.5, columns
        )
        y0, y1, fy, window_y = _interpolation((ys * transform.scale_y + transform.pad_y) * per_y - 0.5, rows)
        # Only the prototype cells under the box: a small box costs little, whatever the image size.
        logit = np.tensordot(coefficient, protos[:, window_y, window_x], axes=1)
        # Separable: interpolate the rows, then the columns; two gathers per axis, O(box pixels).
        by_row = logit[y0] * (np.float32(1.0) - fy)[:, None] + logit[y1] * fy[:, None]
        values = by_row[:, x0] * (np.float32(1.0) - fx) + by_row[:, x1] * fx
        masks.append(Mask.encode(left, top, values > 0))
    return masks
