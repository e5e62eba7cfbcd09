"""visionrpc.common.annotate draws the server's domain predictions and the SDK's alike (its Protocols)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from visionrpc import client
from visionrpc.common.annotate import LineOverlay, PredictionLike, ZoneOverlay, annotate
from visionrpc.server import domain

Det = tuple[tuple[float, float, float, float], int, str, float, tuple[tuple[float, float], ...]]
Cls = tuple[int, str, float]
CUP: Det = ((10, 20, 120, 90), 41, "cup", 0.64, ())
UNNAMED: Det = ((0, 0, 50, 40), 3, "", 0.5, ())
AT_THE_TOP: Det = ((5, 0, 60, 30), 0, "person", 0.9, ())
FACE: Det = ((40, 30, 90, 100), 0, "face", 0.93, ((55, 50), (75, 50), (65, 65)))
# name: (detections: (box, class_id, class_name, confidence, keypoints), classifications: (id, name, conf))
CASES: dict[str, tuple[tuple[Det, ...], tuple[Cls, ...]]] = {
    "boxes": ((CUP, UNNAMED), ()),
    "box-at-the-top-edge": ((AT_THE_TOP,), ()),
    "face-with-landmarks": ((FACE,), ()),
    "classifications": ((), ((281, "tabby", 0.7), (285, "", 0.1))),
}


def server_prediction(
    dets: tuple[Det, ...], classes: tuple[Cls, ...], track_ids: tuple[int, ...] = ()
) -> domain.Prediction:
    return domain.Prediction(
        image_size=domain.ImageSize(160, 120),
        detections=tuple(
            domain.Detection(
                box=domain.BoundingBox(*box),
                class_id=class_id,
                class_name=name,
                confidence=conf,
                keypoints=tuple(domain.Keypoint(x, y) for x, y in points),
                track_id=track_ids[i] if track_ids else 0,
            )
            for i, (box, class_id, name, conf, points) in enumerate(dets)
        ),
        classifications=tuple(domain.Classification(i, name, conf) for i, name, conf in classes),
    )


def sdk_prediction(dets: tuple[Det, ...], classes: tuple[Cls, ...]) -> client.ImagePrediction:
    return client.ImagePrediction(
        image_size=client.ImageSize(160, 120),
        detections=tuple(
            client.Detection(
                box=client.BoundingBox(*box),
                class_id=class_id,
                class_name=name,
                confidence=conf,
                keypoints=tuple(client.Keypoint(x, y) for x, y in points),
            )
            for box, class_id, name, conf, points in dets
        ),
        classifications=tuple(client.Classification(i, name, conf) for i, name, conf in classes),
    )


def gradient() -> npt.NDArray[np.uint8]:
    row = np.linspace(0, 255, 160, dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (120, 160, 3)))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_server_and_sdk_predictions_draw_the_same_pixels(
    case: tuple[tuple[Det, ...], tuple[Cls, ...]],
) -> None:
    image = gradient()
    predictions: list[PredictionLike] = [server_prediction(*case), sdk_prediction(*case)]
    drawn = [annotate(image, prediction) for prediction in predictions]
    assert not np.array_equal(drawn[0], image), "something was drawn"
    assert np.array_equal(drawn[0], drawn[1])
    assert np.array_equal(image, gradient()), "the input is untouched"


def test_nothing_to_draw_is_an_equal_copy() -> None:
    image = gradient()
    drawn = annotate(image, server_prediction((), ()))
    assert drawn is not image and np.array_equal(drawn, image)


def test_grayscale_comes_back_as_bgr() -> None:
    drawn = annotate(gradient()[:, :, 0], sdk_prediction(*CASES["boxes"]))
    assert drawn.shape == (120, 160, 3) and drawn.dtype == np.uint8


@pytest.mark.parametrize(
    "image",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)],
    ids=["float", "four-channels", "batch"],
)
def test_other_images_are_refused(image: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(ValueError, match="expected a uint8 HxWx3 BGR or HxW image"):
        annotate(image, server_prediction((), ()))


def test_a_track_id_is_drawn_in_the_label() -> None:
    image = gradient()
    untracked = annotate(image, server_prediction((CUP,), ()))
    tracked = annotate(image, server_prediction((CUP,), (), track_ids=(7,)))
    changed = np.argwhere(np.any(tracked != untracked, axis=2))
    assert changed.size, "the label differs"
    # Only the label above the box changes (CUP's box starts at x=10, y=20).
    assert changed[:, 0].max() < 20 + 2 and changed[:, 1].min() >= 10


SQUARE = ZoneOverlay("square", ((20, 20), (100, 20), (100, 100), (20, 100)), count=2)
ACROSS = LineOverlay("gate", (0, 110), (160, 110), counts=(3, 1))
# name: (zones, lines, a pixel (row, col) that must change, a pixel that must not)
OVERLAYS: dict[
    str, tuple[tuple[ZoneOverlay, ...], tuple[LineOverlay, ...], tuple[int, int], tuple[int, int]]
] = {
    "zone-filled-inside": ((SQUARE,), (), (60, 60), (5, 150)),
    "zone-without-count": ((ZoneOverlay("z", ((20, 20), (100, 20), (60, 100))),), (), (50, 60), (110, 150)),
    "line": ((), (ACROSS,), (110, 140), (60, 140)),
    "line-uncounted-diagonal": ((), (LineOverlay("d", (0, 0), (159, 119)),), (60, 80), (110, 10)),
}


@pytest.mark.parametrize(("zones", "lines", "changes", "stays"), OVERLAYS.values(), ids=OVERLAYS.keys())
def test_zones_and_lines_are_drawn_where_they_are(
    zones: tuple[ZoneOverlay, ...],
    lines: tuple[LineOverlay, ...],
    changes: tuple[int, int],
    stays: tuple[int, int],
) -> None:
    image = gradient()
    drawn = annotate(image, server_prediction((), ()), zones=zones, lines=lines)
    assert not np.array_equal(drawn[changes], image[changes])
    assert np.array_equal(drawn[stays], image[stays])
    assert np.array_equal(image, gradient()), "the input is untouched"


def test_zones_lie_under_the_boxes_and_lines_over_them() -> None:
    image = gradient()
    box_only = annotate(image, server_prediction((CUP,), ()))
    with_zone = annotate(image, server_prediction((CUP,), ()), zones=(SQUARE,))
    # The box's edge (x=10..120 at y=90) is drawn after the zone's translucent fill: it keeps its colour
    # (but for anti-aliasing against what lies under it; the fill alone would move it by ~60).
    difference = np.abs(with_zone[90, 60].astype(int) - box_only[90, 60].astype(int))
    assert difference.max() <= 10, difference
    with_line = annotate(image, server_prediction((CUP,), ()), lines=(LineOverlay("l", (0, 90), (160, 90)),))
    assert not np.array_equal(with_line[90, 60], box_only[90, 60])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ZoneOverlay("z", ((0, 0), (1, 1))), "expected a polygon of at least 3 points, got 2"),
        (lambda: LineOverlay("l", (5, 5), (5, 5)), "expected a line with distinct ends"),
    ],
    ids=["zone-of-two-points", "line-of-one-point"],
)
def test_degenerate_overlays_are_refused(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match=message):
        make()
