"""The model manager with real engines on real models: ids, load once, LRU, failures, unload under load."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import cache_root
from visionrpc.engines import Engine
from visionrpc.server.app import OnnxRuntimeEngineFactory
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from visionrpc.server.manifest import FileSignature, ResolvedModel
from visionrpc.server.models.manager import ModelManager, ModelState
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import InputImage


class CountingFactory:
    """The real ONNX Runtime factory, counting how often it is called (and optionally slowed down)."""

    def __init__(self, delay: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self._real = OnnxRuntimeEngineFactory(("cpu",), 1)
        self._lock = threading.Lock()
        self._delay = delay

    def __call__(self, model: ResolvedModel) -> Engine:
        with self._lock:
            self.calls.append(model.key)
        if self._delay is not None:
            self._delay.wait(30)
        return self._real(model)


@pytest.fixture(scope="module")
def builtin_root() -> Path:
    return cache_root() / "downloads" / "builtin-models"


@pytest.fixture
def user_repo(tmp_path: Path, builtin_root: Path) -> Path:
    """A user repository of yolov3-tiny copies (alpha/1, alpha/2, beta/1, gamma/1) and a broken model."""
    repository = ModelRepository(tmp_path / "unused", builtin_root, cache_root() / "downloads")
    source = repository.resolve(ModelId("yolov3-tiny-coco")).directory
    root = tmp_path / "models"
    for name, version in [("alpha", "1"), ("alpha", "2"), ("beta", "1"), ("gamma", "1")]:
        shutil.copytree(source, root / name / version)
    broken = root / "broken" / "1"
    shutil.copytree(source, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    return root


def make_manager(
    user_repo: Path, builtin_root: Path, factory: Callable[[ResolvedModel], Engine], cap: int = 2
) -> ModelManager:
    repository = ModelRepository(user_repo, builtin_root, cache_root() / "downloads")
    return ModelManager(repository, factory, max_loaded=cap)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpha", ModelId("alpha")),
        ("alpha/2", ModelId("alpha", "2")),
        ("yolov3-tiny-coco", ModelId("yolov3-tiny-coco")),
        ("my_model.v2", ModelId("my_model.v2")),
    ],
)
def test_valid_model_ids_parse(text: str, expected: ModelId) -> None:
    assert ModelId.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../etc",
        "alpha/../../x",
        "/abs",
        "alpha/",
        "alpha/v1",
        "alpha/1/2",
        "a b",
        ".hidden",
        "..",
        "x" * 200,
        "al\x00pha",
    ],
)
def test_malformed_model_ids_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        ModelId.parse(text)
    assert info.value.reason == "INVALID_MODEL_ID"
    assert info.value.violations[0].field == "model_id"


def test_newest_version_is_default_and_explicit_versions_resolve(user_repo: Path, builtin_root: Path) -> None:
    manager = make_manager(user_repo, builtin_root, CountingFactory())
    with manager.acquire(ModelId.parse("alpha")) as predictor:
        assert predictor.version == "2"
    with manager.acquire(ModelId.parse("alpha/1")) as predictor:
        assert predictor.version == "1"
    assert manager.status(ModelId.parse("alpha")).versions == ("1", "2")
    manager.close()


def test_resolution_reads_the_disk_once_and_sees_every_change(user_repo: Path, builtin_root: Path) -> None:
    """Each request resolves its model; unchanged manifests and version lists come from memory, and any change
    on disk (a new version, an edited manifest) is seen by the very next resolution."""
    repository = ModelRepository(user_repo, builtin_root, cache_root() / "downloads")
    time.sleep(FileSignature.SETTLE_S + 0.1)  # files this fresh are never cached (coarse timestamps)
    first = repository.resolve(ModelId("alpha"))
    assert repository.resolve(ModelId("alpha")).manifest is first.manifest  # parsed once, shared
    assert first.version == "2"

    shutil.copytree(user_repo / "alpha" / "2", user_repo / "alpha" / "3")
    assert repository.resolve(ModelId("alpha")).version == "3"  # a new version, at once

    manifest_path = user_repo / "alpha" / "2" / "manifest.json"
    edited = json.loads(manifest_path.read_text())
    edited["default_confidence"] = 0.75
    manifest_path.write_text(json.dumps(edited))
    assert repository.resolve(ModelId("alpha", "2")).manifest.default_confidence == 0.75

    shutil.rmtree(user_repo / "alpha" / "3")
    assert repository.resolve(ModelId("alpha")).version == "2"


@pytest.mark.parametrize(
    ("model_id", "error", "reason"),
    [
        ("nosuchmodel", NotFoundError, "MODEL_NOT_FOUND"),
        ("alpha/7", NotFoundError, "MODEL_VERSION_NOT_FOUND"),
        ("broken", FailedPreconditionError, "MODEL_LOAD_FAILED"),
    ],
)
def test_lookup_failures(
    user_repo: Path, builtin_root: Path, model_id: str, error: type[Exception], reason: str
) -> None:
    manager = make_manager(user_repo, builtin_root, CountingFactory())
    with pytest.raises(error) as info, manager.acquire(ModelId.parse(model_id)):
        pass
    assert info.value.reason == reason  # type: ignore[attr-defined]
    manager.close()


def test_a_failed_model_reports_why_and_others_keep_serving(user_repo: Path, builtin_root: Path) -> None:
    manager = make_manager(user_repo, builtin_root, CountingFactory())
    with pytest.raises(FailedPreconditionError), manager.acquire(ModelId.parse("broken")):
        pass
    status = manager.status(ModelId.parse("broken"))
    assert status.state is ModelState.FAILED
    assert "broken/1" in status.reason or "onnx" in status.reason.lower()
    with manager.acquire(ModelId.parse("beta")) as predictor:
        assert predictor.name == "beta"
    assert manager.status(ModelId.parse("beta")).state is ModelState.READY
    manager.close()


def test_concurrent_first_requests_load_once(user_repo: Path, builtin_root: Path) -> None:
    gate = threading.Event()
    factory = CountingFactory(delay=gate)
    manager = make_manager(user_repo, builtin_root, factory)
    names: list[str] = []
    errors: list[BaseException] = []

    def request() -> None:
        try:
            with manager.acquire(ModelId.parse("alpha")) as predictor:
                names.append(predictor.model.key)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    # All eight are now waiting on the one load; it reports LOADING meanwhile.
    assert manager.status(ModelId.parse("alpha")).state is ModelState.LOADING
    gate.set()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert names == ["alpha/2"] * 8
    assert factory.calls == ["alpha/2"]
    manager.close()


def test_lru_cap_evicts_the_least_recently_used(user_repo: Path, builtin_root: Path) -> None:
    factory = CountingFactory()
    manager = make_manager(user_repo, builtin_root, factory, cap=2)
    for model_id in ["alpha", "beta", "alpha", "gamma"]:  # alpha touched again, so beta is the LRU
        with manager.acquire(ModelId.parse(model_id)):
            pass
    assert manager.loaded_keys() == ["alpha/2", "gamma/1"]
    assert manager.status(ModelId.parse("beta")).state is ModelState.AVAILABLE
    with manager.acquire(ModelId.parse("beta")):  # reloads on demand
        pass
    assert factory.calls == ["alpha/2", "beta/1", "gamma/1", "beta/1"]
    manager.close()


def test_unload_is_idempotent_and_waits_for_requests_in_flight(user_repo: Path, builtin_root: Path) -> None:
    manager = make_manager(user_repo, builtin_root, CountingFactory())
    blank = InputImage(np.zeros((64, 64, 3), np.uint8), ChannelOrder.BGR)
    with manager.acquire(ModelId.parse("beta")) as predictor:
        assert manager.unload(ModelId.parse("beta")).state is ModelState.AVAILABLE
        # Unloaded while in use: the engine stays open for this request.
        predictor.infer([blank], predictor.resolve_options(InferOptions()))
    assert manager.unload(ModelId.parse("beta")).state is ModelState.AVAILABLE
    assert manager.loaded_keys() == []
    manager.close()


def test_builtins_are_listed_before_they_are_installed(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "models", tmp_path / "builtin", tmp_path / "downloads")
    manager = ModelManager(repository, CountingFactory(), max_loaded=1)
    statuses = {s.name: s for s in manager.list_models()}
    assert {"yolov3-tiny-coco", "centerface"} <= set(statuses)
    assert statuses["centerface"].state is ModelState.AVAILABLE
    assert statuses["centerface"].builtin
