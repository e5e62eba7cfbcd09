"""The conformance table (cases.json) run through the Python client against a real server.

The Go and Node suites run the same table through their clients (tests/conformance/README.md).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import grpc
import pytest
from conftest import RunningServer, start_server
from media import media
from model_exports import install_conformance_models
from visionrpc.client import (
    Client,
    Detection,
    FrameResult,
    ImageInput,
    ImagePrediction,
    InputFrame,
    SharedMemoryImage,
    StreamEvent,
    StreamFrame,
    StreamStatus,
    VisionRpcError,
)
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import inference_pb2

CASES: list[dict[str, Any]] = json.loads((Path(__file__).parent / "cases.json").read_text())


def image_bytes(spec: dict[str, str]) -> bytes:
    return media(spec["file"]).read_bytes() if "file" in spec else base64.b64decode(spec["base64"])


def image_input(client: Client, spec: dict[str, Any], regions: contextlib.ExitStack) -> ImageInput:
    """The case's image: encoded bytes, or (shared_memory) a reference to BGR pixels in a region of its
    own."""
    shm = spec.get("shared_memory")
    if shm is None:
        return image_bytes(spec)
    if "region" in shm:  # a region nobody registered
        return SharedMemoryImage(shm["region"], 0, shm["width"], shm["height"])
    pixels = cv2.imread(str(media(shm["file"])), cv2.IMREAD_COLOR)
    region = regions.enter_context(client.create_shared_memory(pixels.nbytes))
    return dataclasses.replace(region.write(pixels), offset=shm.get("offset", 0))


def run(client: Client, case: dict[str, Any]) -> Any:
    request, expect = case["request"], case["expect"]
    options = request.get("options", {})
    common = {
        "model": request.get("model_id") or None,
        "confidence": options.get("confidence_threshold"),
        "classes": options.get("class_names"),
    }
    if case["rpc"] == "InferStream":
        config = request["config"]
        frames = [
            InputFrame(image_bytes(f), f["sequence_number"], f.get("source_index", 0))
            for f in request["frames"]
        ]
        options = config.get("options", {})
        return list(
            client.infer_stream(
                frames,
                model=config.get("model_id") or None,
                confidence=options.get("confidence_threshold"),
                classes=options.get("class_names"),
                max_in_flight=config.get("max_in_flight"),
                drop=config.get("backpressure") == "BACKPRESSURE_DROP",
                timeout_s=300,
            )
        )
    if case["rpc"] == "RegisterSharedMemory":
        client.create_shared_memory(request["byte_size"], prefix=request["prefix"]).close()
        return None
    if case["rpc"] == "Infer":
        with contextlib.ExitStack() as regions:
            images = [image_input(client, spec, regions) for spec in request["images"]]
            if not images:  # the SDK refuses an empty list itself; send the raw request to test the server
                return client._unary(client._inference.Infer, inference_pb2.InferRequest(), None)
            return client.infer(images, **common)
    sources = [s.get("path") or s.get("url") for s in request["sources"]]
    stream_options = request.get("stream_options", {})
    stream = client.stream(
        sources,
        max_fps=stream_options.get("max_fps"),
        every_frame_delivery=stream_options.get("delivery") == "DELIVERY_EVERY_FRAME",
        timeout_s=300,
        **common,
    )
    if "cancel_after_frames" in expect:
        frames = 0
        for event in stream:
            frames += isinstance(event, StreamFrame)
            if frames == expect["cancel_after_frames"]:
                stream.cancel()
        return frames
    return list(stream)


def check_prediction(prediction: ImagePrediction, expected: dict[str, Any]) -> None:
    if "image_size" in expected:
        assert [prediction.image_size.width, prediction.image_size.height] == expected["image_size"]
    for wanted in expected.get("detections_include", []):
        matches = [d for d in prediction.detections if detection_matches(d, wanted)]
        assert matches, f"no detection matching {wanted} in {prediction.detections}"
    if "only_classes" in expected:
        assert {d.class_name for d in prediction.detections} <= set(expected["only_classes"])


def check_answers(results: list[FrameResult], answers: list[dict[str, Any]]) -> None:
    """InferStream: one answer per frame, in order, each with its expected outcome."""
    assert [(r.source_index, r.sequence_number) for r in results] == [
        (a.get("source_index", 0), a["sequence_number"]) for a in answers
    ]
    for result, expected in zip(results, answers, strict=True):
        if "prediction" in expected:
            assert result.prediction is not None, result
            check_prediction(result.prediction, expected["prediction"])
        elif "error" in expected:
            error, wanted = result.error, expected["error"]
            assert error is not None, result
            assert (error.code, error.reason) == (getattr(grpc.StatusCode, wanted["code"]), wanted["reason"])
            if "field" in wanted:
                assert error.field_violations and error.field_violations[0].field == wanted["field"]
        else:
            assert expected["outcome"] == "prediction_or_dropped", f"unknown outcome {expected['outcome']!r}"
            assert result.prediction is not None or result.dropped, result


def detection_matches(d: Detection, wanted: dict[str, Any]) -> bool:
    if d.class_name != wanted["class_name"] or d.confidence < wanted["min_confidence"]:
        return False
    if "box" in wanted:
        tolerance = wanted["box_tolerance"]
        if any(abs(a - b) > tolerance for a, b in zip(d.box.as_tuple(), wanted["box"], strict=True)):
            return False
    if "keypoints" in wanted and len(d.keypoints) != wanted["keypoints"]:
        return False
    if wanted.get("keypoints_at_box_corners") and not keypoints_at_box_corners(d):
        return False
    if "mask" in wanted:
        assert wanted["mask"] == "lower_right_half", f"unknown mask expectation {wanted['mask']!r}"
        return mask_is_lower_right_half(d)
    return True


def keypoints_at_box_corners(d: Detection) -> bool:
    """Keypoints 0, 1, 3, 4 at the box's corners (0.01 px), each with the detection's confidence (1e-4)."""
    if len(d.keypoints) != 5:
        return False
    b = d.box
    corners = [(b.x_min, b.y_min), (b.x_max, b.y_min), (b.x_min, b.y_max), (b.x_max, b.y_max)]
    points = [d.keypoints[i] for i in (0, 1, 3, 4)]
    return all(
        abs(k.x - x) <= 0.01 and abs(k.y - y) <= 0.01 for k, (x, y) in zip(points, corners, strict=True)
    ) and all(abs(k.confidence - d.confidence) <= 1e-4 for k in d.keypoints)


def mask_is_lower_right_half(d: Detection) -> bool:
    """The mask's grid is the pixels whose centre is in the box; its top-left pixel is background, its
    bottom-right pixel object, and 40-60 % of it is object (the half below the top-right to bottom-left
    diagonal)."""
    m, b = d.mask, d.box
    if m is None:
        return False
    grid = (m.left, m.top, m.left + m.width, m.top + m.height)
    if grid != tuple(math.ceil(v - 0.5) for v in b.as_tuple()):
        return False
    rows = m.rows()
    return not rows[0][0] and rows[-1][-1] and 0.4 <= m.area / (m.width * m.height) <= 0.6


@pytest.fixture(scope="module")
def plain_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Like the harness's plain server: the built-ins plus the derived pose and segmentation models, shared
    memory on."""
    repository = tmp_path_factory.mktemp("conformance-models")
    install_conformance_models(repository)
    running = start_server(dataclasses.replace(base_config, model_repository=repository, shared_memory=True))
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


@pytest.fixture(scope="module")
def recycling_server(server: RunningServer, base_config: ServerConfig) -> Iterator[RunningServer]:
    """Like the harness's second server: connections recycled every ~2 s (after the session server, which
    installed the model)."""
    config = dataclasses.replace(
        base_config, max_connection_age_s=2.0, max_connection_age_grace_s=1.0, pipeline_linger_s=10.0
    )
    running = start_server(config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance_case(request: pytest.FixtureRequest, case: dict[str, Any]) -> None:
    expect = case["expect"]
    fixture = "recycling_server" if case.get("server") == "recycling" else "plain_server"
    server: RunningServer = request.getfixturevalue(fixture)
    with Client(server.address, timeout_s=300) as client:
        if "code" in expect:
            with pytest.raises(VisionRpcError) as info:
                result = run(client, case)
                if isinstance(result, list):  # a stream fails on iteration
                    list(result)
            error = info.value
            assert error.code == getattr(grpc.StatusCode, expect["code"])
            assert error.reason == expect["reason"]
            if "field" in expect:
                assert error.field_violations and error.field_violations[0].field == expect["field"]
            return
        result = run(client, case)
    if case["rpc"] == "Infer":
        assert len(result.predictions) == len(expect["predictions"])
        for prediction, expected in zip(result.predictions, expect["predictions"], strict=True):
            check_prediction(prediction, expected)
    elif case["rpc"] == "InferStream":
        check_answers(result, expect["answers"])
    elif "cancel_after_frames" in expect:
        assert result == expect["cancel_after_frames"]
    else:
        frames = [e for e in result if isinstance(e, StreamFrame)]
        statuses = [e for e in result if isinstance(e, StreamStatus) and e.event is not StreamEvent.RESUMED]
        resumed = [e for e in result if isinstance(e, StreamStatus) and e.event is StreamEvent.RESUMED]
        assert len(frames) == expect["frames"]
        assert "STREAM_EVENT_" + statuses[0].event.name == expect["first_status"]
        assert "STREAM_EVENT_" + statuses[-1].event.name == expect["last_status"]
        seen = {d.class_name for f in frames for d in f.prediction.detections}
        assert set(expect.get("classes_seen", [])) <= seen
        detections = [d for f in frames for d in f.prediction.detections]
        for wanted in expect.get("detections_seen", []):
            assert any(detection_matches(d, wanted) for d in detections), f"no detection matching {wanted}"
        if expect.get("sequence_numbers") == "each_once_in_order":
            assert [f.sequence_number for f in frames] == list(range(expect["frames"]))
        assert len(resumed) >= expect.get("min_resumes", 0)
        if "resume_outcome" in expect:
            wanted = expect["resume_outcome"].removeprefix("RESUME_OUTCOME_").lower()
            assert [r.resume and r.resume.outcome for r in resumed] == [wanted] * len(resumed)
