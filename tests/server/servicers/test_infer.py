"""Infer through a real server and real stubs: real detectors on real photos, and every bad input."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from media import media
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[inference_pb2_grpc.InferenceServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield inference_pb2_grpc.InferenceServiceStub(channel)


def encoded(name: str) -> types_pb2.Image:
    return types_pb2.Image(encoded=media(name).read_bytes())


def infer(
    stub: inference_pb2_grpc.InferenceServiceStub,
    *images: types_pb2.Image,
    model: str = "",
    **options: object,
) -> inference_pb2.InferResponse:
    request = inference_pb2.InferRequest(
        model_id=model,
        images=images,
        options=types_pb2.InferOptions(**options),  # type: ignore[arg-type]
    )
    response: inference_pb2.InferResponse = stub.Infer(request, timeout=120)
    return response


def best(prediction: types_pb2.ImagePrediction, class_name: str) -> types_pb2.Detection:
    matches = [d for d in prediction.detections if d.class_name == class_name]
    assert matches, (
        f"no {class_name} among {[(d.class_name, round(d.confidence, 2)) for d in prediction.detections]}"
    )
    return max(matches, key=lambda d: d.confidence)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def as_tuple(box: types_pb2.BoundingBox) -> tuple[float, float, float, float]:
    return (box.x_min, box.y_min, box.x_max, box.y_max)


# -- real detections ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("photo", "class_name", "region"),
    [
        # region: a box the object surely overlaps (the cup sits centre-left, the motorbike fills the frame)
        ("coffee.png", "cup", (0.0, 0.0, 0.8, 1.0)),
        ("motorcycle_left.png", "motorbike", (0.0, 0.0, 1.0, 1.0)),
    ],
)
def test_default_model_finds_the_object(
    stub: inference_pb2_grpc.InferenceServiceStub, photo: str, class_name: str, region: tuple[float, ...]
) -> None:
    response = infer(stub, encoded(photo))
    assert response.model_name == "yolov3-tiny-coco"
    assert response.model_version == "1"
    assert response.engine.engine == "onnxruntime"
    assert response.engine.provider == "CPUExecutionProvider"
    prediction = response.predictions[0]
    height, width = cv2.imread(str(media(photo))).shape[:2]
    assert (prediction.image_size.width, prediction.image_size.height) == (width, height)
    detection = best(prediction, class_name)
    assert detection.confidence >= 0.5
    box = detection.box
    assert 0 <= box.x_min < box.x_max <= width and 0 <= box.y_min < box.y_max <= height
    # Boxes are in the original image's pixels and cover a real part of it.
    assert (box.x_max - box.x_min) * (box.y_max - box.y_min) > 0.02 * width * height
    cx, cy = (box.x_min + box.x_max) / 2 / width, (box.y_min + box.y_max) / 2 / height
    assert region[0] <= cx <= region[2] and region[1] <= cy <= region[3]
    timings = prediction.timings
    assert timings.decode_ms > 0 and timings.preprocess_ms > 0 and timings.inference_ms > 0
    assert math.isclose(
        timings.total_ms,
        timings.decode_ms
        + timings.queue_ms
        + timings.preprocess_ms
        + timings.inference_ms
        + timings.postprocess_ms,
        rel_tol=1e-6,
    )


def test_centerface_finds_the_astronauts_face_with_landmarks(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    response = infer(stub, encoded("astronaut.png"), model="centerface")
    faces = response.predictions[0].detections
    assert len(faces) == 1
    face = faces[0]
    assert face.class_name == "face" and face.confidence >= 0.8
    assert box_iou(as_tuple(face.box), (181, 58, 269, 177)) >= 0.7
    assert len(face.keypoints) == 5
    for point in face.keypoints:
        assert face.box.x_min <= point.x <= face.box.x_max and face.box.y_min <= point.y <= face.box.y_max
        assert point.name


def test_a_batch_returns_one_prediction_per_image_in_order(
    stub: inference_pb2_grpc.InferenceServiceStub,
) -> None:
    response = infer(stub, encoded("coffee.png"), encoded("motorcycle_left.png"), encoded("coffee.png"))
    assert [p.image_size.width for p in response.predictions] == [600, 741, 600]
    assert best(response.predictions[0], "cup").confidence == pytest.approx(
        best(response.predictions[2], "cup").confidence, abs=1e-5
    )
    best(response.predictions[1], "motorbike")


@pytest.mark.parametrize("order", ["bgr", "rgb", "rgba", "gray"])
def test_raw_pixels_give_the_same_detections_as_the_encoded_photo(
    stub: inference_pb2_grpc.InferenceServiceStub, order: str
) -> None:
    bgr = cv2.imread(str(media("motorcycle_left.png")), cv2.IMREAD_COLOR)
    conversions = {
        "bgr": (None, types_pb2.CHANNEL_ORDER_BGR),
        "rgb": (cv2.COLOR_BGR2RGB, types_pb2.CHANNEL_ORDER_RGB),
        "rgba": (cv2.COLOR_BGR2RGBA, types_pb2.CHANNEL_ORDER_RGBA),
        "gray": (cv2.COLOR_BGR2GRAY, types_pb2.CHANNEL_ORDER_GRAY),
    }
    code, channel_order = conversions[order]
    pixels = bgr if code is None else cv2.cvtColor(bgr, code)
    raw = types_pb2.Image(
        raw=types_pb2.RawImage(
            data=pixels.tobytes(), width=bgr.shape[1], height=bgr.shape[0], channel_order=channel_order
        )
    )
    from_raw = best(infer(stub, raw).predictions[0], "motorbike")
    from_png = best(infer(stub, encoded("motorcycle_left.png")).predictions[0], "motorbike")
    if order == "gray":  # colour is lost, the motorbike is still found
        assert box_iou(as_tuple(from_raw.box), as_tuple(from_png.box)) > 0.6
    else:
        assert from_raw.confidence == pytest.approx(from_png.confidence, abs=1e-4)
        assert box_iou(as_tuple(from_raw.box), as_tuple(from_png.box)) > 0.99


@pytest.mark.parametrize(
    ("options", "check"),
    [
        ({"confidence_threshold": 0.9}, lambda p: all(d.confidence >= 0.9 for d in p.detections)),
        ({"confidence_threshold": 0.05, "max_detections": 3}, lambda p: len(p.detections) == 3),
        ({"class_names": ["cup"]}, lambda p: {d.class_name for d in p.detections} == {"cup"}),
        ({"class_ids": [41]}, lambda p: {d.class_name for d in p.detections} == {"cup"}),
        ({"class_names": ["giraffe"]}, lambda p: len(p.detections) == 0),
    ],
    ids=["confidence", "max-detections", "class-name", "class-id", "absent-class"],
)
def test_request_options_shape_the_detections(
    stub: inference_pb2_grpc.InferenceServiceStub, options: dict[str, object], check: object
) -> None:
    prediction = infer(stub, encoded("coffee.png"), **options).predictions[0]
    assert check(prediction)  # type: ignore[operator]


# -- bad input: the right status, reason and field; the server keeps serving --------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: signature + IHDR and nothing else (a decompression-bomb probe)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def tiny_png() -> types_pb2.Image:
    ok, data = cv2.imencode(".png", np.full((8, 8, 3), 127, np.uint8))
    assert ok
    return types_pb2.Image(encoded=data.tobytes())


@dataclass(frozen=True)
class BadCase:
    request: inference_pb2.InferRequest
    code: grpc.StatusCode
    reason: str
    field: str | None


def request_with(*images: types_pb2.Image, model: str = "", **options: object) -> inference_pb2.InferRequest:
    return inference_pb2.InferRequest(
        model_id=model, images=images, options=types_pb2.InferOptions(**options)
    )  # type: ignore[arg-type]


def raw(data: bytes, width: int, height: int, order: int = types_pb2.CHANNEL_ORDER_RGB) -> types_pb2.Image:
    return types_pb2.Image(raw=types_pb2.RawImage(data=data, width=width, height=height, channel_order=order))


INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_CASES = {
    "no-images": BadCase(request_with(), INVALID, "INVALID_IMAGE_COUNT", "images"),
    "image-unset": BadCase(request_with(types_pb2.Image()), INVALID, "EMPTY_IMAGE", "images[0]"),
    "empty-bytes": BadCase(
        request_with(types_pb2.Image(encoded=b"")), INVALID, "EMPTY_IMAGE", "images[0].encoded"
    ),
    "not-an-image": BadCase(
        request_with(types_pb2.Image(encoded=b"hello, this is text")),
        INVALID,
        "UNSUPPORTED_IMAGE_FORMAT",
        "images[0].encoded",
    ),
    "bomb-png": BadCase(
        request_with(types_pb2.Image(encoded=png_header_only(100_000, 100_000))),
        INVALID,
        "IMAGE_TOO_LARGE",
        "images[0].encoded",
    ),
    "raw-size-mismatch": BadCase(
        request_with(raw(b"\x00" * 10, 4, 4)), INVALID, "RAW_SIZE_MISMATCH", "images[0].raw.data"
    ),
    "raw-zero-width": BadCase(
        request_with(raw(b"", 0, 4)), INVALID, "INVALID_DIMENSIONS", "images[0].raw.width"
    ),
    "raw-absurd-size": BadCase(
        request_with(raw(b"\x00" * 12, 100_000, 100_000)), INVALID, "IMAGE_TOO_LARGE", "images[0].raw"
    ),
    "raw-no-channel-order": BadCase(
        request_with(raw(b"\x00" * 48, 4, 4, types_pb2.CHANNEL_ORDER_UNSPECIFIED)),
        INVALID,
        "INVALID_CHANNEL_ORDER",
        "images[0].raw.channel_order",
    ),
    "header-only-png": BadCase(
        request_with(types_pb2.Image(encoded=png_header_only(8, 8))),
        INVALID,
        "UNDECODABLE_IMAGE",
        "images[0].encoded",
    ),
    "second-image-bad": BadCase(
        request_with(tiny_png(), types_pb2.Image(encoded=b"hello")),
        INVALID,
        "UNSUPPORTED_IMAGE_FORMAT",
        "images[1].encoded",
    ),
    "confidence-above-1": BadCase(
        request_with(types_pb2.Image(encoded=b"x"), confidence_threshold=1.5),
        INVALID,
        "INVALID_OPTION",
        "options.confidence_threshold",
    ),
    "iou-negative": BadCase(
        request_with(types_pb2.Image(encoded=b"x"), iou_threshold=-0.1),
        INVALID,
        "INVALID_OPTION",
        "options.iou_threshold",
    ),
    "confidence-nan": BadCase(
        request_with(types_pb2.Image(encoded=b"x"), confidence_threshold=float("nan")),
        INVALID,
        "INVALID_OPTION",
        "options.confidence_threshold",
    ),
    "max-detections-zero": BadCase(
        request_with(types_pb2.Image(encoded=b"x"), max_detections=0),
        INVALID,
        "INVALID_OPTION",
        "options.max_detections",
    ),
    "unknown-model": BadCase(
        request_with(tiny_png(), model="no-such-model"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", None
    ),
    "unknown-version": BadCase(
        request_with(tiny_png(), model="yolov3-tiny-coco/9"),
        grpc.StatusCode.NOT_FOUND,
        "MODEL_VERSION_NOT_FOUND",
        None,
    ),
    "malformed-model-id": BadCase(
        request_with(tiny_png(), model="../../etc/passwd"), INVALID, "INVALID_MODEL_ID", "model_id"
    ),
}


@pytest.fixture(scope="module")
def unknown_class_case() -> BadCase:
    return BadCase(
        request_with(encoded("coffee.png"), class_names=["unicorn"]),
        INVALID,
        "UNKNOWN_CLASS",
        "options.class_names",
    )


def assert_still_serving(server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    with grpc.insecure_channel(server.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert best(infer(stub, encoded("coffee.png")).predictions[0], "cup").confidence >= 0.5


def check_rejected(stub: inference_pb2_grpc.InferenceServiceStub, case: BadCase) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(case.request, timeout=60)
    error = info.value
    assert error.code() == case.code, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "expected rich google.rpc.Status details"
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    info_detail = found["ErrorInfo"]
    assert isinstance(info_detail, error_details_pb2.ErrorInfo)
    assert (info_detail.domain, info_detail.reason) == ("visionrpc.dev", case.reason)
    if case.field is not None:
        bad_request = found["BadRequest"]
        assert isinstance(bad_request, error_details_pb2.BadRequest)
        assert [v.field for v in bad_request.field_violations][:1] == [case.field]
        assert all(v.description for v in bad_request.field_violations)


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_is_rejected_with_details(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub, name: str
) -> None:
    check_rejected(stub, BAD_CASES[name])
    assert_still_serving(server, stub)


def test_unknown_class_name_is_rejected(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub, unknown_class_case: BadCase
) -> None:
    check_rejected(stub, unknown_class_case)
    assert_still_serving(server, stub)


def test_truncated_photo_is_undecodable(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub
) -> None:
    data = media("coffee.png").read_bytes()
    check_rejected(
        stub,
        BadCase(
            request_with(types_pb2.Image(encoded=data[: len(data) // 3])),
            INVALID,
            "UNDECODABLE_IMAGE",
            "images[0].encoded",
        ),
    )
    assert_still_serving(server, stub)


def test_oversize_message_is_resource_exhausted(
    server: RunningServer, stub: inference_pb2_grpc.InferenceServiceStub
) -> None:
    too_big = server.config.max_message_bytes + 1024
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request_with(types_pb2.Image(encoded=b"\xff" * too_big)), timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(server, stub)


def test_a_large_photo_under_the_limit_is_accepted(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    # Bigger than gRPC's 4 MiB default, under our explicit 16 MiB: a 2400x1800 noisy PNG is ~6 MiB or more.
    rng = np.random.default_rng(0)
    photo = cv2.resize(cv2.imread(str(media("coffee.png"))), (2400, 1800))
    noisy = np.clip(photo.astype(np.int16) + rng.integers(-20, 20, photo.shape), 0, 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", noisy)
    assert ok and 4 * 1024 * 1024 < len(png) < 16 * 1024 * 1024
    response = infer(stub, types_pb2.Image(encoded=png.tobytes()))
    assert response.predictions[0].image_size.width == 2400


def test_deadline_already_passed_is_deadline_exceeded(stub: inference_pb2_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request_with(encoded("coffee.png")), timeout=0.000001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
