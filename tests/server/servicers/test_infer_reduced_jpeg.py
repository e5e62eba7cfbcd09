"""Infer decodes a large JPEG at reduced size, and answers as if it had decoded it in full.

Through a real server and the real yolov3-tiny (416x416 letterbox): the test photos upscaled x4 and encoded
as JPEG (as a phone would send them) are decoded by libjpeg-turbo at 1/4 of their size; the same pixels
decoded in full by OpenCV and sent as a PNG (never reduced) give the reference. Every detection at
confidence >= 0.3 either way must have a counterpart of the same class within the conformance cases' box
tolerance (12 px at the photo's own size, tests/conformance/cases.json) and 0.1 in confidence, and
`image_size` is the image's own size, EXIF orientation included. That the reduction applies at all is
checked on the same public functions the servicer uses (`decode_size`, `jpeg_scale`); how much decoding
time it saves is the benchmark's business (docs/performance.md), not asserted here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer
from detection_match import (
    COMPARED,
    UPSCALE,
    Found,
    unmatched,
)
from media import media
from visionrpc.server.domain import ImageSize
from visionrpc.server.imaging import jpeg_scale, read_image_header
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import decode_size
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

REPORTED = 0.1  # counterparts are looked for down to this confidence


@pytest.fixture(scope="module")
def tiny_manifest(server: RunningServer) -> ModelManifest:
    """The default model's manifest, as the server installed it."""
    config = server.config
    repository = ModelRepository(config.model_repository, config.builtin_repository, config.cache_dir)
    return repository.resolve(ModelId(config.default_model), install=False).manifest


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment holding only an orientation tag, right after its SOI marker."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@functools.cache
def large_jpeg(name: str, orientation: int) -> bytes:
    photo = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert photo is not None
    large = cv2.resize(photo, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    if orientation == 6:  # "rotate 90 degrees clockwise to display": stored on its side, displayed upright
        large = cv2.rotate(large, cv2.ROTATE_90_COUNTERCLOCKWISE)
    ok, encoded = cv2.imencode(".jpg", large, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return with_exif_orientation(encoded.tobytes(), orientation) if orientation != 1 else encoded.tobytes()


def full_decode_as_png(jpeg: bytes) -> bytes:
    """The JPEG decoded in full (EXIF orientation applied, as the server does), losslessly re-encoded."""
    pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert pixels is not None
    ok, png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    return png.tobytes()


def detect(stub: inference_pb2_grpc.InferenceServiceStub, data: bytes) -> tuple[tuple[int, int], Found]:
    request = inference_pb2.InferRequest(
        images=[types_pb2.Image(encoded=data)],
        options=types_pb2.InferOptions(confidence_threshold=REPORTED),
    )
    response: inference_pb2.InferResponse = stub.Infer(request, timeout=120)
    (prediction,) = response.predictions
    found = [
        (
            d.class_name,
            d.confidence,
            [v / UPSCALE for v in (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max)],
        )
        for d in prediction.detections
    ]
    return (prediction.image_size.width, prediction.image_size.height), found


@pytest.mark.parametrize(
    ("name", "orientation", "size"),
    [
        pytest.param("coffee.png", 1, (2400, 1600), id="coffee"),
        pytest.param("motorcycle_left.png", 1, (2964, 2000), id="motorcycle"),
        pytest.param("grace_hopper.jpg", 1, (2048, 2400), id="grace-hopper"),
        pytest.param("coffee.png", 6, (2400, 1600), id="coffee-stored-sideways-upright-by-exif"),
    ],
)
def test_a_large_jpeg_is_decoded_reduced_with_the_full_decodes_detections(
    tiny_manifest: ModelManifest,
    stub: inference_pb2_grpc.InferenceServiceStub,
    name: str,
    orientation: int,
    size: tuple[int, int],
) -> None:
    jpeg = large_jpeg(name, orientation)
    # The case tests something: the servicer's own sizing reduces this JPEG (by 1/4 at 416x416).
    header = read_image_header(jpeg)
    needed = decode_size(tiny_manifest, header.width, header.height)
    assert needed is not None and jpeg_scale(header.width, header.height, needed) == 0.25

    reduced_size, reduced = detect(stub, jpeg)
    full_size, full = detect(stub, full_decode_as_png(jpeg))

    assert reduced_size == full_size == size
    assert [d for d in full if d[1] >= COMPARED], "the photo should have a confident detection to compare"
    assert unmatched(full, reduced) == [], f"full-size detections lost: {full} -> {reduced}"
    assert unmatched(reduced, full) == [], f"detections that appear only reduced: {full} -> {reduced}"


def test_a_sideways_jpeg_on_a_non_square_input_that_reduced_falls_short_is_decoded_in_full(
    fresh_server: RunningServer, tmp_path: Path
) -> None:
    """The one case where the header's stored size misleads: stored 3580x3903 and turned upright by EXIF
    orientation 6, the JPEG's 1/8 decode is 488x448 as displayed where a 576x448 letterbox needs 489x448 (the
    servicer sized it from the stored orientation). The servicer sees the shortfall and decodes in full; the
    answer is the photo's face, in the image's own coordinates."""
    config = fresh_server.config
    repository = ModelRepository(tmp_path / "unused", config.builtin_repository, config.cache_dir)
    centerface = repository.resolve(ModelId("centerface"))
    version = config.model_repository / "wide-faces" / "1"
    version.mkdir(parents=True)
    shutil.copyfile(centerface.onnx_path, version / centerface.manifest.onnx_file)
    manifest = dataclasses.replace(centerface.manifest, input_width=576, input_height=448)
    (version / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    photo = cv2.imread(str(media("astronaut.png")), cv2.IMREAD_COLOR)
    assert photo is not None
    upright = cv2.resize(photo, (3903, 3580), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE))
    assert ok
    jpeg = with_exif_orientation(encoded.tobytes(), 6)
    # The case is the one described: reduced to 1/8 from the stored size, and short of the displayed need.
    stored = decode_size(manifest, 3580, 3903)
    assert stored is not None and jpeg_scale(3580, 3903, ImageSize(stored.height, stored.width)) == 0.125
    assert decode_size(manifest, 3903, 3580) == ImageSize(489, 448)  # 1/8 of 3903 is 488

    with grpc.insecure_channel(fresh_server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        request = inference_pb2.InferRequest(model_id="wide-faces", images=[types_pb2.Image(encoded=jpeg)])
        response: inference_pb2.InferResponse = stub.Infer(request, timeout=120)

    (prediction,) = response.predictions
    assert (prediction.image_size.width, prediction.image_size.height) == (3903, 3580)
    sx, sy = 3903 / 512, 3580 / 512
    faces = [
        (d.confidence, [d.box.x_min / sx, d.box.y_min / sy, d.box.x_max / sx, d.box.y_max / sy])
        for d in prediction.detections
        if d.class_name == "face" and len(d.keypoints) == 5
    ]
    # The conformance case's face on astronaut.png, at the photo's own size: >= 0.8, within 12 px.
    assert any(
        confidence >= 0.8 and max(abs(a - b) for a, b in zip(box, [181, 58, 269, 177], strict=True)) <= 12
        for confidence, box in faces
    ), faces


LETTERBOX = {"task": "detection", "decoder": "yolov5", "input_width": 416, "input_height": 416}
WIDE = {**LETTERBOX, "input_width": 640, "input_height": 384}
STRETCH = {**LETTERBOX, "resize": "stretch"}
CROP = {**LETTERBOX, "input_width": 224, "input_height": 224, "resize": "centre-crop", "crop_fraction": 0.875}
CLASSIFIER = {**LETTERBOX, "task": "classification", "decoder": "classification"}
SEGMENTER = {**LETTERBOX, "decoder": "yolov8-seg"}


@pytest.mark.parametrize(
    ("manifest", "size", "expected"),
    [
        pytest.param(LETTERBOX, (2400, 1600), ImageSize(416, 278), id="letterbox-wide-image"),
        pytest.param(LETTERBOX, (1600, 2400), ImageSize(278, 416), id="letterbox-tall-image"),
        pytest.param(WIDE, (1920, 1080), ImageSize(640, 360), id="letterbox-wide-input"),
        pytest.param(STRETCH, (2400, 1600), ImageSize(416, 416), id="stretch"),
        pytest.param(CROP, (2400, 1600), ImageSize(384, 256), id="centre-crop-before-cropping"),
        pytest.param({**LETTERBOX, "decoder": "yolov8"}, (2400, 1600), ImageSize(416, 278), id="yolov8"),
        pytest.param(
            {**LETTERBOX, "decoder": "centerface"}, (800, 800), ImageSize(416, 416), id="centerface"
        ),
        pytest.param(CLASSIFIER, (2400, 1600), None, id="classifier-decodes-in-full"),
        pytest.param(SEGMENTER, (2400, 1600), None, id="masks-decode-in-full"),
    ],
)
def test_decode_size(manifest: dict[str, object], size: tuple[int, int], expected: ImageSize | None) -> None:
    """How small a JPEG may be decoded: what the preprocessing resizes it to, rounded up; None: in full."""
    assert decode_size(ModelManifest.from_dict(manifest), *size) == expected
