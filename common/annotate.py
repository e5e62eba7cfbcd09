"""Drawing predictions on images with OpenCV, for the SDK (`visionrpc.client.annotate`, `visionrpc infer
--annotate`) and the server (annotated stream frames) alike.

It is typed against what it reads, not against either side's classes: `PredictionLike` is satisfied by the
server's `domain.Prediction` and by the SDK's `ImagePrediction`, so neither imports the other. OpenCV is
imported on first use (an optional dependency of the SDK, which can run without it).

Example:
    from visionrpc.common.annotate import annotate

    image = cv2.imread("coffee.png")
    result = client.infer(image)
    cv2.imwrite("coffee-annotated.jpg", annotate(image, result.predictions[0]))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoxLike",
    "ClassificationLike",
    "DetectionLike",
    "KeypointLike",
    "PredictionLike",
    "annotate",
]


# Read-only properties, so frozen dataclasses (whose fields cannot be assigned) satisfy them.
class BoxLike(Protocol):
    """A box in pixel coordinates of the image it is drawn on."""

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max)."""
        ...


class KeypointLike(Protocol):
    @property
    def x(self) -> float: ...

    @property
    def y(self) -> float: ...


class DetectionLike(Protocol):
    @property
    def box(self) -> BoxLike: ...

    @property
    def class_id(self) -> int: ...

    @property
    def class_name(self) -> str: ...

    @property
    def confidence(self) -> float: ...

    @property
    def keypoints(self) -> Sequence[KeypointLike]: ...


class ClassificationLike(Protocol):
    @property
    def class_id(self) -> int: ...

    @property
    def class_name(self) -> str: ...

    @property
    def confidence(self) -> float: ...


class PredictionLike(Protocol):
    """What `annotate` reads of one image's predictions."""

    @property
    def detections(self) -> Sequence[DetectionLike]: ...

    @property
    def classifications(self) -> Sequence[ClassificationLike]: ...


# Distinct BGR colours, picked by class id so a class keeps its colour across images and runs.
_PALETTE = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
]  # fmt: skip
_KEYPOINT_COLOR = (0, 255, 255)
_WHITE, _BLACK = (255, 255, 255), (0, 0, 0)


def annotate(image: npt.NDArray[np.uint8], prediction: PredictionLike) -> npt.NDArray[np.uint8]:
    """Returns a copy of a BGR image with boxes, labels, keypoints and classifications drawn on it.

    Args:
        image: HxWx3 uint8 BGR pixels (what `cv2.imread` returns); HxW grayscale is converted.
        prediction: the predictions for this image, in its pixel coordinates.

    Raises:
        ValueError: the image is not uint8 HxWx3 or HxW.
    """
    import cv2  # on first use: the SDK does not depend on OpenCV

    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 HxWx3 BGR or HxW image, got {image.dtype} {image.shape}")
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    height, width = out.shape[:2]
    # Line width and text size grow with the image so the drawing stays legible on large photos.
    thickness = max(1, round(min(height, width) / 300))
    scale = max(0.4, min(height, width) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for det in prediction.detections:
        color = _PALETTE[det.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (round(v) for v in det.box.as_tuple())
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{det.class_name or f'class {det.class_id}'} {det.confidence:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, font, scale, 1)
        # Above the box when there is room, otherwise just inside its top edge.
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + text_w, top + text_h + baseline), color, -1)
        cv2.putText(out, label, (x1, top + text_h), font, scale, _text_color(color), 1, cv2.LINE_AA)
        for k in det.keypoints:
            cv2.circle(out, (round(k.x), round(k.y)), thickness + 2, _KEYPOINT_COLOR, -1, cv2.LINE_AA)
    for row, c in enumerate(prediction.classifications):
        text = f"{c.class_name or f'class {c.class_id}'} {c.confidence:.2f}"
        origin = (5, int((row + 1) * 30 * scale) + 5)
        # White on a black outline reads on any background.
        cv2.putText(out, text, origin, font, scale, _BLACK, thickness + 2, cv2.LINE_AA)
        cv2.putText(out, text, origin, font, scale, _WHITE, 1, cv2.LINE_AA)
    return np.asarray(out, dtype=np.uint8)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones (BT.601 luma of a BGR colour)."""
    blue, green, red = background
    return _BLACK if 0.114 * blue + 0.587 * green + 0.299 * red > 140 else _WHITE
