"""Background engine builds and the hot swap, with a slow builder of real ONNX Runtime engines standing in for
TensorRT (which cannot be installed here): the model serves during the build, requests keep succeeding across
the swap, failures keep the fallback serving, and the model service shows the build's state."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import cache_root, wait_for
from media import media
from onnx import TensorProto, helper
from visionrpc.client import Client, EngineBuildState
from visionrpc.engines import EngineError, EngineInfo, OnnxRuntimeEngine, TensorSpec
from visionrpc.engines.base import Tensor
from visionrpc.server.app import OnnxRuntimeEngineFactory, create_server
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.manifest import ResolvedModel
from visionrpc.server.models.builds import BuildProgress, BuildState, EngineBuilder
from visionrpc.server.models.manager import ModelManager, ModelState
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import InputImage, Predictor

from .conftest import builtin_models

BUILT = "standin-tensorrt"  # what engines from the stand-in builder call themselves

wait_for = functools.partial(wait_for, timeout_s=30.0)  # real engines built in the background


class RelabelledEngine:
    """A real ONNX Runtime engine that reports itself as `label`, so a test can tell which engine ran a batch.

    `gate`, when cleared, holds `infer` at its start (after `entered` is set): a batch caught mid-run.
    """

    def __init__(self, inner: OnnxRuntimeEngine, label: str) -> None:
        self._inner = inner
        self._info = replace(inner.info, engine=label)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.outputs

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.entered.set()
        assert self.gate.wait(30)
        return self._inner.infer(inputs)

    def warmup(self) -> None:
        self._inner.warmup()

    def close(self) -> None:
        self._inner.close()


def ort_engine(path: Path, label: str) -> RelabelledEngine:
    return RelabelledEngine(OnnxRuntimeEngine.load(path, intra_op_threads=1), label)


class SlowBuilder:
    """Stands in for the TensorRT builder: reports progress, waits until released, then "builds" a real ONNX
    Runtime engine (or fails with `fail`). Built models are remembered, like the on-disk engine cache."""

    def __init__(self, *, fail: str | None = None) -> None:
        self.fail = fail
        self.release = threading.Event()
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.calls: list[str] = []
        self.built: list[RelabelledEngine] = []
        self.cached: set[str] = set()

    @property
    def target(self) -> str:
        return "tensorrt"

    def load_cached(self, model: ResolvedModel) -> RelabelledEngine | None:
        return ort_engine(model.onnx_path, BUILT) if model.key in self.cached else None

    def build(self, model: ResolvedModel, progress: BuildProgress) -> RelabelledEngine:
        self.calls.append(model.key)
        self.started.set()
        progress(0.25, "building")
        # Like TensorRT's progress monitor: keep reporting, and stop when told to.
        while not self.release.wait(0.02):
            if not progress(0.25, "building"):
                self.cancelled.set()
                raise EngineError("cancelled")
        if self.fail is not None:
            raise EngineError(self.fail)
        progress(0.75, "serializing")
        engine = ort_engine(model.onnx_path, BUILT)
        self.cached.add(model.key)
        self.built.append(engine)
        return engine


@pytest.fixture(scope="module")
def coffee() -> InputImage:
    pixels = cv2.imread(str(media("coffee.png")), cv2.IMREAD_COLOR)
    assert pixels is not None
    return InputImage(pixels, ChannelOrder.BGR)


def make_manager(repo: Path, builder: EngineBuilder | None, *, cap: int = 2) -> ModelManager:
    repository = ModelRepository(repo, builtin_models(), cache_root() / "downloads")
    return ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 1), max_loaded=cap, builder=builder)


def build_state(manager: ModelManager, model_id: str) -> BuildState | None:
    build = manager.status(ModelId.parse(model_id)).build
    return build.state if build is not None else None


def test_the_model_serves_during_the_build_and_no_request_fails_across_the_swap(
    yolo_repo: Path, coffee: InputImage
) -> None:
    builder = SlowBuilder()
    manager = make_manager(yolo_repo, builder)
    loaded = manager.load(ModelId.parse("alpha"))  # returns at once: the build runs in the background
    assert loaded.state is ModelState.READY and loaded.engine is not None
    assert loaded.engine.engine == "onnxruntime"
    assert loaded.build is not None and loaded.build.target_engine == "tensorrt"
    assert loaded.build.state is BuildState.BUILDING
    assert builder.started.wait(10)
    assert wait_for(
        lambda: (
            manager.status(ModelId.parse("alpha")).build
            == replace(loaded.build, progress=0.25, reason="building")
        )
    )
    with manager.acquire(ModelId.parse("alpha")) as predictor:
        fallback = predictor.engine

    ran_on: list[str] = []
    classes: list[set[str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                with manager.acquire(ModelId.parse("alpha")) as predictor:
                    result = predictor.infer([coffee], predictor.resolve_options(InferOptions()))
                with lock:
                    ran_on.append(result.engine.engine)
                    classes.append({d.class_name for d in result.predictions[0].detections})
            except BaseException as exc:  # collected and asserted: any failure fails the test
                failures.append(exc)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    assert wait_for(lambda: len(ran_on) >= 6)
    builder.release.set()
    assert wait_for(lambda: build_state(manager, "alpha") is BuildState.READY)
    swapped_at = len(ran_on)
    assert wait_for(lambda: ran_on[swapped_at:].count(BUILT) >= 6)
    stop.set()
    for thread in clients:
        thread.join(30)

    assert failures == []
    assert ran_on[0] == "onnxruntime" and ran_on[-1] == BUILT
    first_built = ran_on.index(BUILT)
    # Batches that started before the swap may finish after it (3 clients), never more than that.
    assert ran_on[first_built:].count("onnxruntime") <= len(clients)
    assert all("cup" in found for found in classes)  # real predictions on both engines
    assert fallback.closed  # the replaced engine closed once its last batch finished
    status = manager.status(ModelId.parse("alpha"))
    assert status.engine is not None and status.engine.engine == BUILT
    assert status.build is not None and status.build.state is BuildState.READY
    assert status.build.progress == 1.0 and status.build.reason.startswith("built in ")
    manager.close()
    assert builder.built[0].closed


def test_a_batch_running_during_the_swap_finishes_on_the_old_engine(
    yolo_repo: Path, coffee: InputImage
) -> None:
    model = ModelRepository(yolo_repo, builtin_models(), cache_root() / "downloads").resolve(ModelId("alpha"))
    old = ort_engine(model.onnx_path, "old")
    predictor = Predictor(model, old)
    options = predictor.resolve_options(InferOptions())
    old.gate.clear()
    results: list[str] = []
    in_flight = threading.Thread(
        target=lambda: results.append(predictor.infer([coffee], options).engine.engine)
    )
    in_flight.start()
    assert old.entered.wait(10)  # that batch now runs on the old engine

    new = ort_engine(model.onnx_path, "new")
    assert predictor.swap_engine(new)  # does not wait for the batch in flight
    assert not old.closed  # still in use
    # The next batch waits for the one in flight (one batch per model at a time), then takes the new engine.
    later = threading.Thread(target=lambda: results.append(predictor.infer([coffee], options).engine.engine))
    later.start()
    old.gate.set()
    in_flight.join(30)
    later.join(30)
    assert results == ["old", "new"]
    assert old.closed  # closed by its last user
    predictor.close()
    assert new.closed
    assert not predictor.swap_engine(ort_engine(model.onnx_path, "late"))  # closed: the caller keeps it


def test_an_engine_with_other_tensors_is_refused_and_the_old_one_keeps_serving(
    yolo_repo: Path, tmp_path: Path, coffee: InputImage
) -> None:
    model = ModelRepository(yolo_repo, builtin_models(), cache_root() / "downloads").resolve(ModelId("alpha"))
    predictor = Predictor(model, ort_engine(model.onnx_path, "old"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 416, 416])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 416, 416])],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model_proto, tmp_path / "other.onnx")
    other = ort_engine(tmp_path / "other.onnx", "other")
    with pytest.raises(EngineError, match=r"tensors .* differ from the current engine's"):
        predictor.swap_engine(other)
    options = predictor.resolve_options(InferOptions())
    assert predictor.infer([coffee], options).engine.engine == "old"
    predictor.close()


def test_a_failed_build_keeps_serving_reports_why_and_is_retried_only_after_unload(
    yolo_repo: Path, coffee: InputImage
) -> None:
    builder = SlowBuilder(fail="ONNX parser: unsupported operator NonMaxSuppression")
    builder.release.set()
    manager = make_manager(yolo_repo, builder, cap=1)
    manager.load(ModelId.parse("alpha"))
    assert wait_for(lambda: build_state(manager, "alpha") is BuildState.FAILED)
    status = manager.status(ModelId.parse("alpha"))
    assert status.state is ModelState.READY  # the model itself is fine
    assert status.build is not None and status.build.progress is None
    assert status.build.reason == "ONNX parser: unsupported operator NonMaxSuppression"
    with manager.acquire(ModelId.parse("alpha")) as predictor:
        result = predictor.infer([coffee], predictor.resolve_options(InferOptions()))
    assert result.engine.engine == "onnxruntime" and result.predictions[0].detections

    manager.load(ModelId.parse("beta"))  # cap 1: evicts alpha
    assert wait_for(lambda: build_state(manager, "beta") is BuildState.FAILED)
    manager.load(ModelId.parse("alpha"))  # reloaded after eviction: the failure is remembered, no new build
    assert build_state(manager, "alpha") is BuildState.FAILED
    assert builder.calls == ["alpha/1", "beta/1"]
    manager.unload(ModelId.parse("alpha"))  # an explicit unload forgets it: the next load tries again
    manager.load(ModelId.parse("alpha"))
    assert wait_for(lambda: builder.calls.count("alpha/1") == 2)
    manager.close()


def test_a_built_engine_is_loaded_from_the_cache_next_time(yolo_repo: Path) -> None:
    builder = SlowBuilder()
    builder.release.set()
    manager = make_manager(yolo_repo, builder)
    manager.load(ModelId.parse("alpha"))
    assert wait_for(lambda: build_state(manager, "alpha") is BuildState.READY)
    manager.unload(ModelId.parse("alpha"))
    status = manager.load(ModelId.parse("alpha"))  # straight onto the built engine, no fallback, no build
    assert status.engine is not None and status.engine.engine == BUILT
    assert status.build is not None and status.build.state is BuildState.READY
    assert status.build.reason == "loaded from the engine cache"
    assert builder.calls == ["alpha/1"]
    manager.close()


def test_unloading_during_a_build_cancels_it(yolo_repo: Path) -> None:
    builder = SlowBuilder()
    manager = make_manager(yolo_repo, builder)
    manager.load(ModelId.parse("alpha"))
    assert builder.started.wait(10)
    assert manager.unload(ModelId.parse("alpha")).state is ModelState.AVAILABLE
    assert builder.cancelled.wait(10)  # the builder was told to stop at its next progress report
    assert builder.built == [] and manager.status(ModelId.parse("alpha")).build is None
    builder.started.clear()
    manager.load(ModelId.parse("alpha"))  # a cancelled build is no failure: loading again builds again
    assert builder.started.wait(10)
    builder.release.set()
    assert wait_for(lambda: build_state(manager, "alpha") is BuildState.READY)
    manager.close()


def test_builds_run_one_at_a_time_and_the_next_shows_as_queued(yolo_repo: Path) -> None:
    builder = SlowBuilder()
    manager = make_manager(yolo_repo, builder)
    manager.load(ModelId.parse("alpha"))
    assert builder.started.wait(10)
    queued = manager.load(ModelId.parse("beta")).build
    assert queued is not None and queued.state is BuildState.BUILDING
    assert (queued.progress, queued.reason) == (None, "queued")
    time.sleep(0.2)
    assert builder.calls == ["alpha/1"]  # beta waits for alpha's build
    builder.release.set()
    assert wait_for(lambda: build_state(manager, "alpha") is build_state(manager, "beta") is BuildState.READY)
    assert builder.calls == ["alpha/1", "beta/1"]
    manager.close()


@pytest.fixture
def served(yolo_repo: Path) -> Iterator[tuple[Client, SlowBuilder]]:
    builder = SlowBuilder()
    config = ServerConfig(
        port=0,
        model_repository=yolo_repo,
        cache_dir=cache_root() / "downloads",
        preload_default_model=False,
        shutdown_grace_s=0.5,
    )
    server, port = create_server(config, models=make_manager(yolo_repo, builder))
    server.start()
    try:
        with Client(f"127.0.0.1:{port}") as client:
            yield client, builder
    finally:
        builder.release.set()
        server.stop(grace_s=0.5)


def test_get_model_shows_the_build_through_a_real_server(served: tuple[Client, SlowBuilder]) -> None:
    client, builder = served
    photo = str(media("coffee.png"))
    loaded = client.load_model("alpha")
    assert loaded.engine is not None and loaded.engine.engine == "onnxruntime"
    assert loaded.build is not None and loaded.build.state is EngineBuildState.BUILDING
    assert loaded.build.target_engine == "tensorrt"
    assert wait_for(lambda: (b := client.get_model("alpha").build) is not None and b.progress == 0.25)
    building = client.get_model("alpha")
    assert building.build is not None and building.build.reason == "building"
    result = client.infer(photo, model="alpha")
    assert result.engine is not None and result.engine.engine == "onnxruntime"

    builder.release.set()
    assert wait_for(
        lambda: (b := client.get_model("alpha").build) is not None and b.state is EngineBuildState.READY
    )
    ready = client.get_model("alpha")
    assert ready.engine is not None and ready.engine.engine == BUILT
    assert ready.build is not None and ready.build.progress == 1.0
    result = client.infer(photo, model="alpha")
    assert result.engine is not None and result.engine.engine == BUILT
    assert any(d.class_name == "cup" for d in result.predictions[0].detections)
    # Not loaded: no build message at all; a listed model shows its build too.
    assert client.get_model("beta").build is None
    listed = {m.name: m for m in client.list_models()}
    assert listed["alpha"].build == ready.build
    assert np.isclose(ready.proto.build.progress, 1.0) and ready.proto.build.HasField("progress")
