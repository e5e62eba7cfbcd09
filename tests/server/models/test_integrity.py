"""Model integrity: checksums written at install, checked at load and by `models verify`.

One real install of the built-in yolov3-tiny (through `add_model`, as `visionrpc models add` does) is copied
into a repository once per case and then tampered with as the finding did: bytes flipped in one initializer's
raw weights, class names swapped in the manifest, a file removed, the record itself garbled. A real server
must refuse each one at load (FAILED with the file named, never served); `visionrpc models verify` must say
the same; the intact copy serves, and a copy installed before checksums existed loads with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest
from conftest import RunningServer, cache_root, start_server
from media import media
from server_process import ServerProcess
from visionrpc.client import Client, FailedPreconditionError, ModelState
from visionrpc.server.cli import main
from visionrpc.server.config import ServerConfig
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.importing import add_model
from visionrpc.server.models.integrity import INTEGRITY_FILE, verify_version
from visionrpc.server.models.repository import STALE_INSTALL_SECONDS, ModelId, ModelRepository

from .conftest import builtin_models


def flip_weights(version: Path) -> None:
    """Flips 64 bytes in the middle of the largest initializer's raw data (found in the file by its bytes)."""
    path = version / "model.onnx"
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(path.read_bytes())
    start = data.find(largest.raw_data)
    assert start > 0 and len(largest.raw_data) > 4096
    middle = start + len(largest.raw_data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def swap_class_names(version: Path) -> None:
    """Swaps "person" and "cup" in the manifest: still a valid manifest, now labelling a cup "person"."""
    manifest = ModelManifest.read(version)
    names = list(manifest.class_names)
    a, b = names.index("person"), names.index("cup")
    names[a], names[b] = names[b], names[a]
    (version / "manifest.json").unlink()
    dataclasses.replace(manifest, class_names=tuple(names)).write(version)


def remove_model_file(version: Path) -> None:
    (version / "model.onnx").unlink()


def garble_record(version: Path) -> None:
    (version / INTEGRITY_FILE).write_text("{not json", encoding="utf-8")


def untouched(version: Path) -> None:
    pass


def without_record(version: Path) -> None:
    """As a version installed before checksums were recorded."""
    (version / INTEGRITY_FILE).unlink()


# name, tampering, the files `models verify` and the load name ("" = serves)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("flipped", flip_weights, "model.onnx"),
    ("swapped", swap_class_names, "manifest.json"),
    ("missing", remove_model_file, "model.onnx (missing)"),
    ("garbled", garble_record, INTEGRITY_FILE),
    ("intact", untouched, ""),
    ("legacy", without_record, ""),
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real install (add_model: checked, written atomically, checksums recorded) of yolov3-tiny."""
    source = ModelRepository(
        tmp_path_factory.mktemp("unused"), builtin_models(), cache_root() / "downloads"
    ).resolve(ModelId("yolov3-tiny-coco"))
    repository = tmp_path_factory.mktemp("installed")
    return add_model(repository, "tiny", source.onnx_path, source.manifest)


@pytest.fixture(scope="module")
def tampered(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one copy of the install per case, each tampered with as its case says."""
    repository = tmp_path_factory.mktemp("models")
    for name, tamper, _ in CASES:
        shutil.copytree(installed, repository / name / "1")
        tamper(repository / name / "1")
    return repository


@pytest.fixture(scope="module")
def tampered_server(base_config: ServerConfig, tampered: Path) -> Iterator[RunningServer]:
    running = start_server(
        dataclasses.replace(base_config, model_repository=tampered, preload_default_model=False)
    )
    yield running
    running.server.stop(grace_s=0.5)


def test_install_records_the_checksums(installed: Path) -> None:
    record = json.loads((installed / INTEGRITY_FILE).read_text())
    assert record["algorithm"] == "sha256"
    assert sorted(record["files"]) == ["manifest.json", "model.onnx"]
    assert verify_version(installed).ok


@pytest.mark.parametrize(("name", "files"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_a_changed_model_is_failed_at_load(tampered_server: RunningServer, name: str, files: str) -> None:
    with Client(tampered_server.address, timeout_s=120) as client:
        if not files:
            result = client.infer(media("coffee.png"), model=name)
            cups = [d.confidence for d in result.predictions[0].detections if d.class_name == "cup"]
            assert cups and max(cups) >= 0.5
            assert client.get_model(name).state is ModelState.READY
            return
        with pytest.raises(FailedPreconditionError) as info:
            client.infer(media("coffee.png"), model=name)
        assert info.value.reason == "MODEL_FILES_CHANGED"
        assert f"model files changed since install: {files}" in info.value.message
        model = client.get_model(name)
    assert model.state is ModelState.FAILED
    assert model.state_reason == f"model files changed since install: {files}"


def test_models_verify_names_each_changed_file(
    capsys: pytest.CaptureFixture[str], tampered: Path, tmp_path: Path
) -> None:
    argv = ["models", "verify", "--model-repository", str(tampered), "--cache-dir", str(tmp_path)]
    code = main(argv)
    lines = capsys.readouterr().out.splitlines()
    expected = {
        "intact/1: ok: 2 files match",
        "legacy/1: unverified: no checksums (installed before they were recorded)",
        *(f"{name}/1: changed: files changed since install: {files}" for name, _, files in CASES if files),
    }
    assert (code, set(lines)) == (1, expected)

    code = main([*argv[:2], "intact", *argv[2:], "--json"])
    line = json.loads(capsys.readouterr().out)
    assert (code, line["model"], line["status"]) == (0, "intact/1", "ok")


def test_verifying_costs_little(installed: Path) -> None:
    """What every load pays: hashing the 35 MB ONNX file and the manifest (~50 ms on this machine)."""
    size = sum(p.stat().st_size for p in installed.iterdir())
    start = time.perf_counter()
    assert verify_version(installed).ok
    seconds = time.perf_counter() - start
    print(f"verified {size / 1e6:.1f} MB in {seconds * 1e3:.0f} ms")
    assert seconds < 2.0  # generous: two shared cores


def test_partial_installs_are_removed_at_start(base_config: ServerConfig, tmp_path: Path) -> None:
    """A crashed install's staging folder goes at start-up; a young one (another process's install in
    progress) stays."""
    repository = tmp_path / "models"
    stale = repository / "tiny" / ".install-1-crashed"
    young = repository / "tiny" / ".install-2-running"
    builtin_stale = base_config.builtin_repository / "centerface" / ".install-1-crashed-test"
    for folder in (stale, young, builtin_stale):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half a model")
    old = time.time() - STALE_INSTALL_SECONDS - 60
    for folder in (stale, builtin_stale):
        os.utime(folder, (old, old))
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    try:
        assert not stale.exists() and not builtin_stale.exists()
        assert young.is_dir()
        with Client(running.address, timeout_s=30) as client:
            # The young staging folder is never a version: names and versions cannot start with a dot.
            assert [m.versions for m in client.list_models() if m.name == "tiny"] == [()]
    finally:
        running.server.stop(grace_s=0.5)
        shutil.rmtree(builtin_stale, ignore_errors=True)


def test_onnxruntime_writes_inside_the_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ONNX Runtime writes a device id and a SQLite file under $XDG_CACHE_HOME/Microsoft at import and first
    session: `visionrpc serve` points that into its --cache-dir, so nothing lands in the home folder."""
    cache = cache_root()
    monkeypatch.setenv("VISIONRPC_CACHE", str(cache))  # the shared built-ins, whatever HOME says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    with ServerProcess(tmp_path) as server:  # serving: the default model is loaded on ONNX Runtime
        assert server.alive()
    assert not (tmp_path / "home" / ".cache").exists()
    assert (
        cache / "downloads" / "xdg" / "Microsoft" / "DeveloperTools" / ".onnxruntime" / "deviceid"
    ).is_file()
