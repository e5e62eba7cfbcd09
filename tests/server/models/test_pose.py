"""YOLOv8-pose models: keypoints through Infer and streams, from a pose head derived from the real weights.

The derived head (tests/model_exports.py `derive_pose`) gives every box five keypoints that are known from the
box itself - its corners and centre, visibility = its score - so each served detection's keypoints can be
checked against the detection: corners equal to the (clipped) box corners, visibility equal to the
confidence. The model is added the way a user would, with Ultralytics pose metadata and no flags.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from conftest import RunningServer, start_server
from media import media
from model_exports import (
    POSE_KEYPOINTS,
    coco_names,
    derive_pose,
    tiny_yolov8,
    ultralytics_metadata,
    with_metadata,
)
from visionrpc.client import Client, Detection, StreamFrame
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import Task
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.server.models.autofill import fill_manifest
from visionrpc.server.models.importing import add_model, check_file_by_running


@pytest.fixture(scope="module")
def pose_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = ultralytics_metadata("pose", coco_names(), (416, 416), kpt_shape=(5, 3))
    path = tmp_path_factory.mktemp("exports") / "tiny-pose.onnx"
    onnx.save(with_metadata(derive_pose(tiny_yolov8()), metadata), str(path))
    return path


@pytest.fixture(scope="module")
def pose_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory, pose_export: Path
) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("pose-models")
    filled = fill_manifest(onnx.load(str(pose_export), load_external_data=False), {})
    add_model(repository, "tiny-pose", pose_export, filled.manifest)
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield running
    running.server.stop(grace_s=0.5)


def test_ultralytics_pose_metadata_fills_the_manifest(pose_export: Path) -> None:
    filled = fill_manifest(onnx.load(str(pose_export), load_external_data=False), {})
    manifest = filled.manifest
    assert (manifest.decoder, manifest.keypoint_dims, len(manifest.class_names)) == (
        Decoder.YOLOV8_POSE,
        3,
        80,
    )
    assert manifest.keypoint_names == ("k0", "k1", "k2", "k3", "k4")  # not COCO's 17: numbered
    check_file_by_running(pose_export, manifest)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"keypoint_names": POSE_KEYPOINTS[:4]}, "(the model has 5 keypoints, the manifest 4 names)"),
        ({"decoder": Decoder.YOLOV8}, "expected output 'pose' shaped [N, 4 + 80, boxes], got [1, 99, 2535]"),
        ({"keypoint_dims": 2}, "expected output 'pose' shaped [N, 4 + 80 + 5 x 2, boxes], got [1, 99, 2535]"),
    ],
)
def test_pose_mismatches_are_refused_by_running(
    pose_export: Path, changes: dict[str, object], message: str
) -> None:
    manifest = fill_manifest(onnx.load(str(pose_export), load_external_data=False), {}).manifest
    with pytest.raises(ValueError) as caught:
        check_file_by_running(pose_export, dataclasses.replace(manifest, **changes))  # type: ignore[arg-type]
    assert message in str(caught.value)


def check_keypoints(detection: Detection) -> None:
    box = detection.box
    points = {k.name: k for k in detection.keypoints}
    assert list(points) == ["k0", "k1", "k2", "k3", "k4"]
    corners = [points["k0"], points["k1"], points["k3"], points["k4"]]
    expected = [
        (box.x_min, box.y_min),
        (box.x_max, box.y_min),
        (box.x_min, box.y_max),
        (box.x_max, box.y_max),
    ]
    got = [coordinate for k in corners for coordinate in (k.x, k.y)]
    assert got == pytest.approx([coordinate for point in expected for coordinate in point], abs=1e-3)
    assert all(k.confidence == pytest.approx(detection.confidence, abs=1e-5) for k in points.values())


def test_infer_returns_keypoints(pose_server: RunningServer) -> None:
    with Client(pose_server.address, timeout_s=120) as client:
        result = client.infer(media("coffee.png"), model="tiny-pose")
    detections = result.predictions[0].detections
    assert any(d.class_name == "cup" and d.confidence > 0.5 for d in detections)
    for detection in detections:
        check_keypoints(detection)


def test_streams_return_keypoints(pose_server: RunningServer) -> None:
    frames: list[StreamFrame] = []
    with (
        Client(pose_server.address) as client,
        client.stream(["bikes.mp4"], model="tiny-pose", max_fps=50, timeout_s=120) as stream,
    ):
        for event in stream:
            if isinstance(event, StreamFrame):
                frames.append(event)
                if len(frames) == 5:
                    break
    detections = [d for frame in frames for d in frame.prediction.detections]
    assert detections, "no detections on five bikes.mp4 frames"
    for detection in detections:
        check_keypoints(detection)


def test_pose_manifest_needs_keypoint_names() -> None:
    with pytest.raises(ValueError, match="yolov8-pose decoder needs keypoint_names"):
        ModelManifest(
            task=Task.DETECTION,
            decoder=Decoder.YOLOV8_POSE,
            input_width=416,
            input_height=416,
            class_names=("person",),
        )
