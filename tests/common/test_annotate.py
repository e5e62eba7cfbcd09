"""visionrpc.common.annotate draws the server's domain predictions and the SDK's alike (its Protocols)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from visionrpc import client
from visionrpc.common.annotate import PredictionLike, annotate
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


def server_prediction(dets: tuple[Det, ...], classes: tuple[Cls, ...]) -> domain.Prediction:
    return domain.Prediction(
        image_size=domain.ImageSize(160, 120),
        detections=tuple(
            domain.Detection(
                box=domain.BoundingBox(*box),
                class_id=class_id,
                class_name=name,
                confidence=conf,
                keypoints=tuple(domain.Keypoint(x, y) for x, y in points),
            )
            for box, class_id, name, conf, points in dets
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
