"""Drawing predictions on images with OpenCV, for the SDK (`visionrpc.client.annotate`, `visionrpc infer
--annotate`) and the server (annotated stream frames) alike.

It is typed against what it reads, not against either side's classes: `PredictionLike` is satisfied by the
server's `domain.Prediction` and by the SDK's `ImagePrediction`, so neither imports the other. OpenCV is
imported on first use (an optional dependency of the SDK, which can run without it).

Tracked detections (a `track_id` above 0) are labelled `#<id>`; stream analytics' zones and lines are passed
in as plain numbers (`ZoneOverlay`, `LineOverlay`), so callers map their own types onto them.

Example:
    from visionrpc.common.annotate import LineOverlay, annotate

    image = cv2.imread("coffee.png")
    result = client.infer(image)
    gate = LineOverlay("gate", start=(0, 200), end=(640, 200), counts=(3, 1))
    cv2.imwrite("coffee-annotated.jpg", annotate(image, result.predictions[0], lines=[gate]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "BoxLike",
    "ClassificationLike",
    "DetectionLike",
    "KeypointLike",
    "LineOverlay",
    "PredictionLike",
    "ZoneOverlay",
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


@dataclass(frozen=True, slots=True)
class ZoneOverlay:
    """A polygon zone to draw: its corners in pixels of the image, optionally how many objects are inside."""

    name: str
    polygon: tuple[tuple[float, float], ...]
    count: int | None = None

    def __post_init__(self) -> None:
        if len(self.polygon) < 3:
            raise ValueError(f"expected a polygon of at least 3 points, got {len(self.polygon)}")


@dataclass(frozen=True, slots=True)
class LineOverlay:
    """A counting line from `start` to `end`, optionally with its (left_to_right, right_to_left) counts.

    Directions are seen from `start` facing `end` on the image as displayed (y down), as stream analytics
    count them; the arrow drawn at the middle of the line points to the side a left-to-right crossing goes to.
    """

    name: str
    start: tuple[float, float]
    end: tuple[float, float]
    counts: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"expected a line with distinct ends, got {self.start} twice")


# Distinct BGR colours, picked by class id so a class keeps its colour across images and runs.
_PALETTE = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
]  # fmt: skip
_KEYPOINT_COLOR = (0, 255, 255)
_WHITE, _BLACK = (255, 255, 255), (0, 0, 0)
# Zones and lines in colours of their own (not in the class palette), so they never pass for a detection.
_ZONE_COLOR, _LINE_COLOR = (255, 0, 255), (0, 255, 255)
_ZONE_FILL_ALPHA = 0.25


def annotate(
    image: npt.NDArray[np.uint8],
    prediction: PredictionLike,
    *,
    zones: Sequence[ZoneOverlay] = (),
    lines: Sequence[LineOverlay] = (),
) -> npt.NDArray[np.uint8]:
    """Returns a copy of a BGR image with zones, boxes, labels, track ids, keypoints, lines and
    classifications drawn on it.

    Args:
        image: HxWx3 uint8 BGR pixels (what `cv2.imread` returns); HxW grayscale is converted.
        prediction: the predictions for this image, in its pixel coordinates. A detection with a `track_id`
            above 0 is labelled `#<id>` before its class.
        zones: polygons drawn translucent under the detections, labelled with their name and count.
        lines: counting lines drawn over the detections, labelled with their name and counts.

    Raises:
        ValueError: the image is not uint8 HxWx3 or HxW.
    """
    import cv2  # on first use: the SDK does not depend on OpenCV

    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected a uint8 HxWx3 BGR or HxW image, got {image.dtype} {image.shape}")
    out = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8) if image.ndim == 2 else image.copy()
    height, width = out.shape[:2]
    # Line width and text size grow with the image so the drawing stays legible on large photos.
    thickness = max(1, round(min(height, width) / 300))
    scale = max(0.4, min(height, width) / 900)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if zones:
        _draw_zones(out, zones, thickness, scale)
    for det in prediction.detections:
        color = _PALETTE[det.class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (round(v) for v in det.box.as_tuple())
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        label = f"{_track_prefix(det)}{det.class_name or f'class {det.class_id}'} {det.confidence:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, font, scale, 1)
        # Above the box when there is room, otherwise just inside its top edge.
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        cv2.rectangle(out, (x1, top), (x1 + text_w, top + text_h + baseline), color, -1)
        cv2.putText(out, label, (x1, top + text_h), font, scale, _text_color(color), 1, cv2.LINE_AA)
        for k in det.keypoints:
            cv2.circle(out, (round(k.x), round(k.y)), thickness + 2, _KEYPOINT_COLOR, -1, cv2.LINE_AA)
    for line in lines:
        _draw_line(out, line, thickness, scale)
    for row, c in enumerate(prediction.classifications):
        text = f"{c.class_name or f'class {c.class_id}'} {c.confidence:.2f}"
        origin = (5, int((row + 1) * 30 * scale) + 5)
        _outlined_text(out, text, origin, scale, thickness)
    return out


def _track_prefix(det: DetectionLike) -> str:
    # Read, not declared in DetectionLike: detections of untracked sources (and SDKs older than tracking) have
    # no track id, and they must keep satisfying the Protocol.
    track_id = getattr(det, "track_id", 0)
    return f"#{track_id} " if isinstance(track_id, int) and track_id > 0 else ""


def _draw_zones(
    out: npt.NDArray[np.uint8], zones: Sequence[ZoneOverlay], thickness: int, scale: float
) -> None:
    import cv2

    polygons = [np.round(np.asarray(zone.polygon, dtype=np.float64)).astype(np.int32) for zone in zones]
    # Filled on a copy and blended once, so the detections under a zone stay visible.
    filled = out.copy()
    for polygon in polygons:
        cv2.fillPoly(filled, [polygon], _ZONE_COLOR, cv2.LINE_AA)
    cv2.addWeighted(filled, _ZONE_FILL_ALPHA, out, 1.0 - _ZONE_FILL_ALPHA, 0.0, dst=out)
    for zone, polygon in zip(zones, polygons, strict=True):
        cv2.polylines(out, [polygon], True, _ZONE_COLOR, thickness, cv2.LINE_AA)
        label = zone.name if zone.count is None else f"{zone.name}: {zone.count}"
        # At the corner nearest the top-left, where a label is least likely to leave the image.
        x, y = min(polygon.tolist(), key=lambda p: p[0] + p[1])
        _outlined_text(out, label, (int(x) + 4, int(y) + int(20 * scale) + 4), scale, thickness)


def _draw_line(out: npt.NDArray[np.uint8], line: LineOverlay, thickness: int, scale: float) -> None:
    import cv2

    start = (round(line.start[0]), round(line.start[1]))
    end = (round(line.end[0]), round(line.end[1]))
    cv2.line(out, start, end, _LINE_COLOR, thickness + 1, cv2.LINE_AA)
    for point in (start, end):
        cv2.circle(out, point, thickness + 3, _LINE_COLOR, -1, cv2.LINE_AA)
    # The right-hand normal (y down) at the middle: where a left-to-right crossing ends up.
    dx, dy = line.end[0] - line.start[0], line.end[1] - line.start[1]
    length = float(np.hypot(dx, dy))
    middle = ((line.start[0] + line.end[0]) / 2.0, (line.start[1] + line.end[1]) / 2.0)
    reach = 20.0 * max(1.0, scale)
    tip = (round(middle[0] - dy / length * reach), round(middle[1] + dx / length * reach))
    cv2.arrowedLine(
        out, (round(middle[0]), round(middle[1])), tip, _LINE_COLOR, thickness, cv2.LINE_AA, 0, 0.3
    )
    label = line.name if line.counts is None else f"{line.name}: {line.counts[0]} L>R  {line.counts[1]} R>L"
    _outlined_text(out, label, (start[0] + 6, start[1] - 6), scale, thickness)


def _outlined_text(
    out: npt.NDArray[np.uint8], text: str, origin: tuple[int, int], scale: float, thickness: int
) -> None:
    import cv2

    # Kept inside the image: labels of zones and lines at its edges would be cut off.
    x = min(max(origin[0], 0), out.shape[1] - 1)
    y = min(max(origin[1], round(20 * scale)), out.shape[0] - 1)
    origin = (x, y)
    # White on a black outline reads on any background.
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _BLACK, thickness + 2, cv2.LINE_AA)
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _WHITE, 1, cv2.LINE_AA)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light label backgrounds, white on dark ones (BT.601 luma of a BGR colour)."""
    blue, green, red = background
    return _BLACK if 0.114 * blue + 0.587 * green + 0.299 * red > 140 else _WHITE
