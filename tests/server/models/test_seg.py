"""YOLOv8-seg models: masks through Infer and streams, from a segmentation head derived from the real weights.

The derived head (tests/model_exports.py `derive_seg`) gives every box a mask known from the box itself: the
half below the diagonal from its top-right to its bottom-left corner. Each served detection's mask is checked
against its own box, in original-image pixels, so the letterbox mapping, the run-length encoding and every
conversion on the way (domain -> proto -> Python client) are checked together. The model is added the way a
user would, with Ultralytics segment metadata and no flags.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import RunningServer, start_server
from media import media
from model_exports import coco_names, derive_seg, tiny_yolov8, ultralytics_metadata, with_metadata
from visionrpc.client import Client, Detection, StreamFrame
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import Mask
from visionrpc.server.manifest import Decoder
from visionrpc.server.models.autofill import fill_manifest
from visionrpc.server.models.importing import add_model, check_file_by_running


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = ultralytics_metadata("segment", coco_names(), (416, 416))
    path = tmp_path_factory.mktemp("exports") / "tiny-seg.onnx"
    onnx.save(with_metadata(derive_seg(tiny_yolov8()), metadata), str(path))
    return path


@pytest.fixture(scope="module")
def seg_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory, seg_export: Path
) -> Iterator[RunningServer]:
    repository = tmp_path_factory.mktemp("seg-models")
    filled = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {})
    add_model(repository, "tiny-seg", seg_export, filled.manifest)
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield running
    running.server.stop(grace_s=0.5)


def test_ultralytics_segment_metadata_fills_the_manifest(seg_export: Path) -> None:
    manifest = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {}).manifest
    assert (manifest.decoder, len(manifest.class_names)) == (Decoder.YOLOV8_SEG, 80)
    check_file_by_running(seg_export, manifest)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"decoder": Decoder.YOLOV8},
            "got [1, 116, 2535] (with mask coefficients and prototypes: that is a segmentation export, "
            "use decoder yolov8-seg)",
        ),
        (
            {"class_names": tuple(coco_names()[:79])},
            "expected output 'seg' shaped [N, 4 + 79 + 32, boxes], got [1, 116, 2535]",
        ),
        ({"extra": {"protos": "masks"}}, "expected two outputs for decoder yolov8-seg"),
    ],
)
def test_seg_mismatches_are_refused_by_running(
    seg_export: Path, changes: dict[str, object], message: str
) -> None:
    manifest = fill_manifest(onnx.load(str(seg_export), load_external_data=False), {}).manifest
    with pytest.raises(ValueError) as caught:
        check_file_by_running(seg_export, dataclasses.replace(manifest, **changes))  # type: ignore[arg-type]
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "grid",
    [
        np.zeros((0, 0), dtype=bool),
        np.zeros((2, 3), dtype=bool),
        np.ones((2, 3), dtype=bool),
        np.array([[True, False, False], [False, True, True]]),
        np.array([[False, False, True], [True, True, False]]),
    ],
)
def test_mask_run_lengths_round_trip(grid: np.ndarray) -> None:
    mask = Mask.encode(7, 9, grid)
    assert (mask.left, mask.top, mask.width, mask.height) == (7, 9, grid.shape[1], grid.shape[0])
    if grid.size:
        assert mask.counts[0] == 0 or not grid.ravel()[0]  # the first run is background
    assert np.array_equal(mask.decode(), grid)
    assert mask.area == int(grid.sum())


def check_mask(detection: Detection, image_size: tuple[int, int]) -> bool:
    """The mask covers the pixels whose centre is in the box; for boxes off the image edge it is the known
    lower-right half.

    Returns whether the content was checked (the box not cut by the image edge).
    """
    box, mask = detection.box, detection.mask
    assert mask is not None
    grid = tuple(math.ceil(v - 0.5) for v in box.as_tuple())
    assert (mask.left, mask.top, mask.left + mask.width, mask.top + mask.height) == grid
    assert sum(mask.counts) == mask.width * mask.height
    width, height = image_size
    if box.x_min < 1 or box.y_min < 1 or box.x_max > width - 1 or box.y_max > height - 1:
        return False  # clipped: the unclipped box, which the mask follows, is unknown here
    got = np.array(mask.rows(), dtype=bool)
    xs = np.arange(mask.left, mask.left + mask.width) + 0.5
    ys = np.arange(mask.top, mask.top + mask.height) + 0.5
    w, h = box.x_max - box.x_min, box.y_max - box.y_min
    value = (xs[None, :] - box.x_min) / w + (ys[:, None] - box.y_min) / h - 1
    expected = value > 0
    # Pixels within about a pixel of the diagonal may go either way (float32, box rounding).
    undecided = np.abs(value) <= 1.5 * (1 / w + 1 / h)
    assert not np.any((got != expected) & ~undecided), "mask differs from the box's lower-right half"
    assert mask.area == pytest.approx(expected.sum(), rel=0.05, abs=3)
    return True


def test_infer_returns_masks(seg_server: RunningServer) -> None:
    with Client(seg_server.address, timeout_s=120) as client:
        result = client.infer(media("coffee.png"), model="tiny-seg")
    prediction = result.predictions[0]
    detections = prediction.detections
    assert any(d.class_name == "cup" and d.confidence > 0.5 for d in detections)
    size = (prediction.image_size.width, prediction.image_size.height)
    assert sum(check_mask(d, size) for d in detections) >= 1


def test_streams_return_masks(seg_server: RunningServer) -> None:
    frames: list[StreamFrame] = []
    with (
        Client(seg_server.address) as client,
        client.stream(["bikes.mp4"], model="tiny-seg", max_fps=50, timeout_s=120) as stream,
    ):
        for event in stream:
            if isinstance(event, StreamFrame):
                frames.append(event)
                if len(frames) == 5:
                    break
    checked = 0
    for frame in frames:
        size = (frame.prediction.image_size.width, frame.prediction.image_size.height)
        for detection in frame.prediction.detections:
            checked += check_mask(detection, size)
    assert checked >= 1, "no detection off the image edge on five bikes.mp4 frames"
