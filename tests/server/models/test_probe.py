"""Validation by running: dynamic-axes exports of the real yolov3-tiny weights, with the mistakes users make.

A dynamic-axes export declares its output as [batch, d1, d2]: the declared shapes fit any decoder and any
class list. Each mistake in the table must be refused by `add_model` (nothing written) and, when a manifest
says the same thing by hand, fail the model at load (FAILED with the reason, never served); the fitting
exports pass both and serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import onnx
import pytest
from conftest import cache_root
from media import media
from model_exports import (
    builtin_tiny,
    dynamic_axes,
    pin_batch_to_one,
    tiny_yolov5,
    tiny_yolov8,
    ultralytics_metadata,
    with_metadata,
)
from visionrpc.server.app import OnnxRuntimeEngineFactory
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.errors import FailedPreconditionError
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.server.models.importing import add_model, write_version_dir
from visionrpc.server.models.manager import ModelManager, ModelState
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import InputImage


@pytest.fixture(scope="module")
def exports() -> dict[str, onnx.ModelProto]:
    v8 = dynamic_axes(tiny_yolov8())
    return {
        "v5": dynamic_axes(tiny_yolov5()),
        "v8": v8,
        "v8-long-symbols": dynamic_axes(tiny_yolov8(), long_symbols=True),
        "v8-batch-of-one": pin_batch_to_one(v8),
        "v8-metadata": with_metadata(v8, ultralytics_metadata("detect", ["x"] * 80, (416, 416))),
    }


def manifest(**changes: Any) -> ModelManifest:
    """The built-in's manifest (416x416, 80 COCO names) for a YOLOv8-layout export, with `changes`."""
    base = dataclasses.replace(
        ModelManifest.read(builtin_tiny()), decoder=Decoder.YOLOV8, extra={}, description=""
    )
    return dataclasses.replace(base, **changes)


V8_AS_V5 = "(that is the YOLOv8/YOLO11 layout: use decoder yolov8)"
MISTAKES = [
    # (id, export, manifest changes, what the refusal says)
    (
        "yolov8-export-read-as-yolov5",
        "v8",
        {"decoder": Decoder.YOLOV5},
        f"expected output 'output0' shaped [N, boxes, 5 + 80], got [1, 84, 2535] {V8_AS_V5} "
        "(running a batch of 1 at 416x416)",
    ),
    (
        "yolov5-export-read-as-yolov8",
        "v5",
        {"decoder": Decoder.YOLOV8},
        "got [1, 2535, 85] (that is the YOLOv5 layout: use decoder yolov5)",
    ),
    (
        "two-class-names-for-80-classes",
        "v8",
        {"class_names": ("cat", "dog")},
        "expected output 'output0' shaped [N, 4 + 2, boxes], got [1, 84, 2535] "
        "(the model has 80 classes, the manifest 2 class names)",
    ),
    (
        "input-size-the-graph-cannot-run",
        "v8",
        {"input_width": 640, "input_height": 640},
        "the model does not run on a batch of 1 at the manifest's input size 640x640 (W x H): ",
    ),
    (
        "batch-declared-dynamic-but-pinned",
        "v8-batch-of-one",
        {},
        "does not run on a batch of 2 at the manifest's input size 416x416 (W x H): ",
    ),
    (
        "input-size-other-than-exported",
        "v8-metadata",
        {"input_width": 320, "input_height": 320},
        "expected input size 416x416 (W x H), the size the model was exported for (Ultralytics metadata "
        "imgsz), got 320x320",
    ),
    (
        "long-symbolic-dimensions-read-as-yolov5",
        "v8-long-symbols",
        {"decoder": Decoder.YOLOV5},
        f"got [1, 84, 2535] {V8_AS_V5}",
    ),
]
FITTING = [
    # (id, export, manifest changes)
    ("yolov8-export", "v8", {}),
    ("yolov5-export", "v5", {"decoder": Decoder.YOLOV5}),
    ("batch-of-one-declared", "v8-batch-of-one", {"max_batch_size": 1}),
    ("exported-size", "v8-metadata", {}),
]


@pytest.mark.parametrize(
    ("export", "changes", "message"), [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES]
)
def test_add_refuses_what_a_run_contradicts(
    tmp_path: Path, exports: dict[str, onnx.ModelProto], export: str, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        add_model(tmp_path / "models", "m", exports[export], manifest(**changes))
    assert message in str(caught.value)
    assert "floor(" not in str(caught.value) and len(str(caught.value)) < 600
    assert not (tmp_path / "models").exists()


@pytest.fixture
def load(tmp_path: Path) -> Callable[[onnx.ModelProto, ModelManifest], ModelManager]:
    """Writes a model with a manifest as a user could by hand (no checks), behind a real model manager."""
    managers: list[ModelManager] = []

    def make(model: onnx.ModelProto, written: ModelManifest) -> ModelManager:
        root = tmp_path / "models"
        assert write_version_dir(root / "m" / "1", model, written)
        downloads = cache_root() / "downloads"
        repository = ModelRepository(root, downloads / "builtin-models", downloads)
        manager = ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 1), max_loaded=2)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


@pytest.mark.parametrize(
    ("export", "changes", "message"), [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES]
)
def test_a_model_that_does_not_fit_fails_at_load(
    load: Callable[[onnx.ModelProto, ModelManifest], ModelManager],
    exports: dict[str, onnx.ModelProto],
    export: str,
    changes: dict[str, Any],
    message: str,
) -> None:
    manager = load(exports[export], manifest(**changes))
    with pytest.raises(FailedPreconditionError) as caught:
        manager.load(ModelId("m"))
    assert caught.value.reason == "MODEL_LOAD_FAILED" and message in caught.value.message
    status = manager.status(ModelId("m"))
    assert status.state is ModelState.FAILED and message in status.reason
    assert manager.loaded_keys() == []


@pytest.mark.parametrize(("export", "changes"), [c[1:] for c in FITTING], ids=[c[0] for c in FITTING])
def test_fitting_exports_are_added_and_serve(
    tmp_path: Path,
    load: Callable[[onnx.ModelProto, ModelManifest], ModelManager],
    exports: dict[str, onnx.ModelProto],
    export: str,
    changes: dict[str, Any],
) -> None:
    add_model(tmp_path / "added", "m", exports[export], manifest(**changes))
    manager = load(exports[export], manifest(**changes))
    assert manager.load(ModelId("m")).state is ModelState.READY
    pixels = cv2.imread(str(media("coffee.png")))
    with manager.acquire(ModelId("m")) as predictor:
        options = predictor.resolve_options(InferOptions())
        (prediction,) = predictor.infer([InputImage(pixels, ChannelOrder.BGR)], options).predictions
    cups = [d.confidence for d in prediction.detections if d.class_name == "cup"]
    assert cups and max(cups) > 0.5
