"""Detections from a JPEG decoded at reduced size stay within the conformance tolerances of the full decode.

Large JPEGs are the test photos upscaled x4 (1804-2964 px wide, as a phone would send them). Each goes
through the real yolov3-tiny twice: decoded at full size, and decoded by `decode_image(min_size=...)` at the
smallest libjpeg scale still covering what the preprocessing resizes to, with the boxes mapped back to the
image's own coordinates by the decode scale. Every detection either way at confidence >= 0.3 must have a
counterpart of the same class within the conformance cases' box tolerance (12 px, tests/conformance/
cases.json, measured at the photo's own size) and 0.1 in confidence. Weaker detections come and go either
way: the two decodes are two slightly different downscalings of the same photo.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from detection_match import (
    UPSCALE,
    Found,
    unmatched,
)
from media import media
from model_exports import builtin_tiny
from visionrpc.server.domain import ImageSize, InferOptions
from visionrpc.server.imaging import DecodedImage, decode_image
from visionrpc.server.manifest import ModelManifest, ResizeMode
from visionrpc.server.processing import Transform, decode_batch, preprocess, resolve_options

REPORTED = 0.1  # counterparts are looked for down to this confidence
PHOTOS = [
    "coffee.png",
    "motorcycle_left.png",
    "grace_hopper.jpg",
    "astronaut.png",
    "rocket.jpg",
    "chelsea.png",
]


@functools.cache
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(builtin_tiny() / "model.onnx"), providers=["CPUExecutionProvider"])


@functools.cache
def large_jpeg(name: str) -> bytes:
    photo = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert photo is not None
    large = cv2.resize(photo, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def detect(image: DecodedImage, manifest: ModelManifest) -> tuple[Found, Transform]:
    """Detections in the image's own coordinates, divided by UPSCALE (the photo's size), and the
    preprocessing's transform of the pixels as decoded."""
    tensor, transform = preprocess(image.pixels, image.order, manifest)
    model = session()
    output = np.asarray(model.run(None, {model.get_inputs()[0].name: tensor[np.newaxis]})[0])
    # Pixels decoded at `scale` map to the image's own pixels by 1 / scale (exact at pixel edges).
    to_image = dataclasses.replace(
        transform,
        scale_x=transform.scale_x * image.scale,
        scale_y=transform.scale_y * image.scale,
        original=image.size,
    )
    options = resolve_options(InferOptions(confidence_threshold=REPORTED), manifest)
    (decoded,) = decode_batch(manifest, {"output": output}, [to_image], options)
    found = [
        (d.class_name, d.confidence, [v / UPSCALE for v in d.box.as_tuple()]) for d in decoded.detections
    ]
    return found, transform


@pytest.mark.parametrize("mode", list(ResizeMode), ids=[m.value for m in ResizeMode])
@pytest.mark.parametrize("name", PHOTOS)
def test_reduced_decoding_keeps_the_detections(name: str, mode: ResizeMode) -> None:
    manifest = dataclasses.replace(ModelManifest.read(builtin_tiny()), resize=mode)
    data = large_jpeg(name)
    full = decode_image(data, max_pixels=100_000_000)
    expected, transform = detect(full, manifest)
    # What the caller asks for: the size the preprocessing resizes the image to (before a crop or padding).
    needed = ImageSize(
        round(full.size.width * transform.scale_x), round(full.size.height * transform.scale_y)
    )

    reduced = decode_image(data, max_pixels=100_000_000, min_size=needed)
    found, _ = detect(reduced, manifest)

    assert reduced.size == full.size
    assert reduced.scale in (0.25, 0.5)  # it was reduced: the case tests something
    assert reduced.pixel_size.width >= needed.width and reduced.pixel_size.height >= needed.height
    assert unmatched(expected, found) == [], f"full-size detections lost: {expected} -> {found}"
    assert unmatched(found, expected) == [], f"detections that appear only reduced: {expected} -> {found}"
