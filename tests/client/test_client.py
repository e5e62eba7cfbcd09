"""The Python SDK against a real visionrpc server (`server`, `fresh_server` fixtures) and real models."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest
from media import media
from visionrpc.client import (
    Client,
    DeadlineExceededError,
    Detection,
    ImagePrediction,
    ImageSize,
    InvalidArgumentError,
    ModelState,
    ModelTask,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    VisionRpcError,
    annotate,
)

DEFAULT_MODEL = "yolov3-tiny-coco"
INFERENCE_SERVICE = "visionrpc.v1.InferenceService"


@pytest.fixture(scope="module")
def client(server: Any) -> Iterator[Client]:
    with Client(server.address, timeout_s=120) as c:
        yield c


def bgr(name: str) -> npt.NDArray[np.uint8]:
    pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert pixels is not None
    return np.asarray(pixels, dtype=np.uint8)


def best(prediction: ImagePrediction, class_name: str) -> Detection:
    matches = [d for d in prediction.detections if d.class_name == class_name]
    assert matches, (
        f"no {class_name} in {[(d.class_name, round(d.confidence, 2)) for d in prediction.detections]}"
    )
    return max(matches, key=lambda d: d.confidence)


# One image in every form `infer` accepts: (builder from the file's path, extra infer kwargs).
IMAGE_FORMS: dict[str, tuple[Callable[[Path], Any], dict[str, Any]]] = {
    "bytes": (lambda p: p.read_bytes(), {}),
    "bytearray": (lambda p: bytearray(p.read_bytes()), {}),
    "str-path": (lambda p: str(p), {}),
    "pathlib": (lambda p: p, {}),
    "bgr-array": (lambda p: bgr(p.name), {}),
    "rgb-array": (lambda p: cv2.cvtColor(bgr(p.name), cv2.COLOR_BGR2RGB), {"channel_order": "rgb"}),
    "bgra-array": (lambda p: cv2.cvtColor(bgr(p.name), cv2.COLOR_BGR2BGRA), {}),
    "rgba-array": (lambda p: cv2.cvtColor(bgr(p.name), cv2.COLOR_BGR2RGBA), {"channel_order": "rgb"}),
    "non-contiguous-array": (lambda p: np.asfortranarray(bgr(p.name)), {}),
}

DETECTOR_CASES = [("coffee.png", "cup"), ("motorcycle_left.png", "motorbike")]


@pytest.mark.parametrize(("image", "label"), DETECTOR_CASES, ids=[c[0] for c in DETECTOR_CASES])
@pytest.mark.parametrize("form", list(IMAGE_FORMS))
def test_infer_finds_the_object_from_every_input_form(
    client: Client, image: str, label: str, form: str
) -> None:
    build, kwargs = IMAGE_FORMS[form]
    result = client.infer(build(media(image)), **kwargs)
    assert (result.model_name, result.model_version) == (DEFAULT_MODEL, "1")
    assert result.engine is not None and result.engine.engine == "onnxruntime"
    (prediction,) = result.predictions
    height, width = bgr(image).shape[:2]
    assert prediction.image_size == ImageSize(width, height)
    assert best(prediction, label).confidence >= 0.5
    assert prediction.timings.total_ms > 0


@pytest.mark.parametrize("form", [f for f in IMAGE_FORMS if f.endswith("-array")])
@pytest.mark.parametrize("image", ["coffee.png", "motorcycle_left.png"])
def test_raw_pixels_give_the_encoded_result(client: Client, image: str, form: str) -> None:
    encoded = client.infer(media(image)).predictions[0]
    build, kwargs = IMAGE_FORMS[form]
    raw = client.infer(build(media(image)), **kwargs).predictions[0]
    assert [d.class_name for d in raw.detections] == [d.class_name for d in encoded.detections]
    for a, b in zip(raw.detections, encoded.detections, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=0.01)
        assert a.box.as_tuple() == pytest.approx(b.box.as_tuple(), abs=1.0)


def test_grayscale_array_is_accepted(client: Client) -> None:
    gray = cv2.cvtColor(bgr("coffee.png"), cv2.COLOR_BGR2GRAY)
    (prediction,) = client.infer(gray).predictions
    assert prediction.image_size == ImageSize(gray.shape[1], gray.shape[0])


def test_batch_keeps_request_order_across_mixed_forms(client: Client) -> None:
    result = client.infer(
        [media("motorcycle_left.png").read_bytes(), bgr("coffee.png"), media("motorcycle_left.png")]
    )
    expected = ["motorbike", "cup", "motorbike"]
    assert [
        best(p, label).class_name for p, label in zip(result.predictions, expected, strict=True)
    ] == expected
    assert [p.image_size.width for p in result.predictions] == [741, 600, 741]


def test_centerface_finds_the_astronauts_face_with_landmarks(client: Client) -> None:
    result = client.infer(media("astronaut.png"), model="centerface")
    assert result.model_name == "centerface"
    (prediction,) = result.predictions
    (face,) = [d for d in prediction.detections if d.confidence >= 0.5]
    assert face.confidence >= 0.8
    assert face.box.as_tuple() == pytest.approx((181, 58, 269, 177), abs=12)
    assert len(face.keypoints) == 5
    assert all(
        face.box.x_min <= k.x <= face.box.x_max and face.box.y_min <= k.y <= face.box.y_max
        for k in face.keypoints
    )


OPTION_CASES: dict[str, tuple[dict[str, Any], Callable[[ImagePrediction], bool]]] = {
    "classes-by-name": ({"classes": ["cup"]}, lambda p: {d.class_name for d in p.detections} == {"cup"}),
    "classes-by-id": ({"classes": [41]}, lambda p: {d.class_id for d in p.detections} == {41}),
    "classes-bare-string": ({"classes": "cup"}, lambda p: {d.class_name for d in p.detections} == {"cup"}),
    "classes-none-match": ({"classes": ["giraffe"]}, lambda p: not p.detections),
    "max-detections": ({"max_detections": 1, "confidence": 0.01}, lambda p: len(p.detections) == 1),
    "high-confidence": ({"confidence": 0.99}, lambda p: not p.detections),
    "low-confidence-more": ({"confidence": 0.01}, lambda p: len(p.detections) > 1),
    "versioned-model": ({"model": f"{DEFAULT_MODEL}/1"}, lambda p: best(p, "cup").confidence >= 0.5),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_infer_options(client: Client, case: str) -> None:
    kwargs, check = OPTION_CASES[case]
    (prediction,) = client.infer(media("coffee.png"), **kwargs).predictions
    assert check(prediction), prediction.detections


SERVER_ERROR_CASES: dict[str, tuple[Any, dict[str, Any], type[VisionRpcError], str, str]] = {
    # case: (images, infer kwargs, error class, reason, field of the first violation)
    "unknown-model": (None, {"model": "no-such-model"}, NotFoundError, "MODEL_NOT_FOUND", ""),
    "malformed-model-id": (b"x", {"model": "a b"}, InvalidArgumentError, "INVALID_MODEL_ID", "model_id"),
    "undecodable-image": (b"not an image", {}, InvalidArgumentError, "", "images[0].encoded"),
    "empty-image": (b"", {}, InvalidArgumentError, "EMPTY_IMAGE", "images[0].encoded"),
    "no-images": ([], {}, InvalidArgumentError, "INVALID_IMAGE_COUNT", "images"),
    "confidence-out-of-range": (
        None,
        {"confidence": 2.0},
        InvalidArgumentError,
        "INVALID_OPTION",
        "options.confidence_threshold",
    ),
    "zero-top-k": (None, {"top_k": 0}, InvalidArgumentError, "INVALID_OPTION", "options.top_k"),
}


@pytest.mark.parametrize("case", list(SERVER_ERROR_CASES))
def test_server_errors_carry_rich_details(client: Client, case: str) -> None:
    images, kwargs, error, reason, field = SERVER_ERROR_CASES[case]
    with pytest.raises(error) as info:
        client.infer(media("coffee.png") if images is None else images, **kwargs)
    err = info.value
    assert err.domain == "visionrpc.dev"
    if reason:
        assert err.reason == reason
    else:
        assert err.reason  # every server error names its reason
    if field:
        assert err.field_violations and err.field_violations[0].field == field
        assert field in str(err)


CLIENT_ERROR_CASES: dict[str, tuple[Any, dict[str, Any], type[Exception], str]] = {
    "float-array": (np.zeros((8, 8, 3), np.float32), {}, ValueError, "expected a uint8 image array"),
    "two-channels": (np.zeros((8, 8, 2), np.uint8), {}, ValueError, "got shape (8, 8, 2)"),
    "batch-array": (np.zeros((2, 8, 8, 3), np.uint8), {}, ValueError, "a list for several images"),
    "empty-array": (np.zeros((0, 8, 3), np.uint8), {}, ValueError, "got shape (0, 8, 3)"),
    "bad-channel-order": (
        np.zeros((8, 8, 3), np.uint8),
        {"channel_order": "hsv"},
        ValueError,
        "channel_order",
    ),
    "not-an-image": ([12], {}, TypeError, "got int"),
    "missing-file": ("/no/such/image.png", {}, FileNotFoundError, "image.png"),
    "float-class": (b"x", {"classes": [1.5]}, TypeError, "class names (str) or ids (int)"),
    "negative-max-detections": (b"x", {"max_detections": -1}, ValueError, "max_detections"),
}


@pytest.mark.parametrize("case", list(CLIENT_ERROR_CASES))
def test_bad_inputs_fail_before_any_rpc(case: str) -> None:
    images, kwargs, error, text = CLIENT_ERROR_CASES[case]
    # Nothing listens at this address: reaching the network would raise UnavailableError instead.
    with Client("127.0.0.1:1", timeout_s=5) as offline, pytest.raises(error) as info:
        offline.infer(images, **kwargs)
    assert text in str(info.value)


def test_deadline_exceeded(client: Client) -> None:
    with pytest.raises(DeadlineExceededError):
        client.infer(media("coffee.png"), timeout_s=0.001)


def test_message_limit_is_enforced_client_side(server: Any) -> None:
    with Client(server.address, max_message_bytes=64 * 1024) as small, pytest.raises(ResourceExhaustedError):
        small.infer(media("coffee.png"))  # ~450 KB


def test_unreachable_server(server: Any) -> None:
    with Client("127.0.0.1:1", timeout_s=5) as offline, pytest.raises(UnavailableError) as info:
        offline.list_models()
    assert info.value.retryable


def test_closed_client_refuses_calls(server: Any) -> None:
    c = Client(server.address)
    c.close()
    c.close()  # idempotent
    assert "closed" in repr(c)
    with pytest.raises(RuntimeError, match="closed"):
        c.health()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"timeout_s": 0}, "timeout_s"), ({"max_message_bytes": 0}, "max_message_bytes")]
)
def test_client_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(**kwargs)


def test_results_are_frozen_and_keep_the_raw_response(client: Client) -> None:
    result = client.infer(media("coffee.png"))
    assert result.response.model_name == DEFAULT_MODEL
    assert len(result.response.predictions[0].detections) == len(result.predictions[0].detections)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.model_name = "x"  # type: ignore[misc]


def test_annotate_draws_on_a_copy(client: Client) -> None:
    image = bgr("astronaut.png")
    prediction = client.infer(image, model="centerface").predictions[0]
    drawn = annotate(image, prediction)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image)
    assert np.array_equal(image, bgr("astronaut.png"))  # the input is untouched


# ------------------------------------------------------------------------------------------------ models


def test_list_models_shows_the_builtins(client: Client) -> None:
    models = {m.name: m for m in client.list_models()}
    assert {DEFAULT_MODEL, "centerface"} <= set(models)
    assert all(
        m.builtin and m.task is ModelTask.DETECTION for m in (models[DEFAULT_MODEL], models["centerface"])
    )
    assert models[DEFAULT_MODEL].state is ModelState.READY  # preloaded by the session server


MODEL_CASES = {
    DEFAULT_MODEL: {
        "decoder": "yolov5",
        "classes": 80,
        "has_class": "cup",
        "keypoints": 0,
        "input": (416, 416),
    },
    "centerface": {
        "decoder": "centerface",
        "classes": 1,
        "has_class": "face",
        "keypoints": 5,
        "input": (640, 640),
    },
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_get_model(client: Client, name: str) -> None:
    expected = MODEL_CASES[name]
    model = client.get_model(name)
    assert (model.name, model.version, model.versions, model.id) == (name, "1", ("1",), f"{name}/1")
    assert model.decoder == expected["decoder"]
    assert len(model.class_names) == expected["classes"] and expected["has_class"] in model.class_names
    assert len(model.keypoint_names) == expected["keypoints"]
    assert model.input is not None and (model.input.width, model.input.height) == expected["input"]
    assert model.defaults is not None and 0 < model.defaults.confidence_threshold < 1
    assert model.proto.name == name


@pytest.mark.parametrize(
    ("model_id", "error"), [("no-such-model", NotFoundError), ("../etc", InvalidArgumentError)]
)
def test_get_model_errors(client: Client, model_id: str, error: type[VisionRpcError]) -> None:
    with pytest.raises(error):
        client.get_model(model_id)


def test_load_and_unload_round_trip(fresh_server: Any) -> None:
    with Client(fresh_server.address, timeout_s=300) as c:
        assert c.get_model("centerface").state is ModelState.AVAILABLE
        loaded = c.load_model("centerface")
        assert loaded.state is ModelState.READY
        assert loaded.engine is not None and loaded.engine.engine == "onnxruntime"
        assert c.load_model("centerface").state is ModelState.READY  # idempotent
        unloaded = c.unload_model("centerface")
        assert (unloaded.state, unloaded.engine) == (ModelState.AVAILABLE, None)
        assert c.unload_model("centerface").state is ModelState.AVAILABLE  # idempotent
        # Unloaded is not gone: the next request loads it again.
        assert c.infer(media("astronaut.png"), model="centerface").predictions[0].detections


# ------------------------------------------------------------------------------------------------ health


@pytest.mark.parametrize(
    "service", ["", INFERENCE_SERVICE, "visionrpc.v1.ModelService"], ids=["server", "inference", "models"]
)
def test_health_serving(client: Client, service: str) -> None:
    assert client.health(service) == "SERVING"


def test_health_unknown_service(client: Client) -> None:
    with pytest.raises(NotFoundError) as info:
        client.health("no.such.Service")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_sdk_stands_alone() -> None:
    code = (
        "import sys, visionrpc.client\nassert not [m for m in sys.modules if m.startswith('visionrpc.serv')]"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
