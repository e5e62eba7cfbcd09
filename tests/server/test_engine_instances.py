"""Several engine instances per model: the slot hands each batch a free instance, the scheduler runs one batch
per instance at once, and the manifest and ONNX Runtime settings that size them; then the same through the
server: the engine factory makes the manifest's `instances` (else --engine-instances), and a served model
with two answers concurrent Infer calls on both.

Two real yolov3-tiny ONNX Runtime sessions serve as the instances. `GatedEngine` wraps a real one and holds
its calls until the test opens the gate (counted and ordered by events, never by wall-clock time), so that
"the second batch ran while the first was still running" is a fact the test observes, and the instances
used are read from the scheduler's public per-instance counter (`SchedulerStats.instance_batches`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from conftest import cache_root, wait_for
from media import media
from visionrpc.engines import EngineError, EngineInfo, OnnxRuntimeEngine, TensorSpec
from visionrpc.engines.base import Tensor
from visionrpc.engines.onnxruntime_engine import available_cores, threads_per_instance
from visionrpc.server.app import build_model_manager, create_server, onnxruntime_engine_factory
from visionrpc.server.config import ServerConfig, add_server_arguments
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.engine_slot import EngineSlot
from visionrpc.server.errors import UnavailableError
from visionrpc.server.manifest import MAX_INSTANCES, ModelManifest, ResolvedModel
from visionrpc.server.models.integrity import write_integrity_record
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.processing import decode_batch, preprocess, resolve_options
from visionrpc.server.scheduler import BatchScheduler, BatchSettings, Origin, Ticket
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

PHOTOS = ("coffee.png", "motorcycle_left.png", "astronaut.png", "grace_hopper.jpg")


class GatedEngine:
    """A real engine whose calls wait at a gate while it is closed; counts the calls that entered and those
    that returned."""

    def __init__(self, inner: OnnxRuntimeEngine) -> None:
        self._inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0
        self.returned = 0
        self._lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return self._inner.info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.outputs

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with self._lock:
            self.entered += 1
        assert self.gate.wait(60), "the test never opened the gate"
        outputs = self._inner.infer(inputs)
        with self._lock:
            self.returned += 1
        return outputs

    def warmup(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        self._inner.warmup(shapes)

    def close(self) -> None:
        self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed


@pytest.fixture(scope="module")
def model() -> ResolvedModel:
    root = cache_root() / "downloads"
    repository = ModelRepository(root / "unused-user-models", root / "builtin-models", root)
    return repository.resolve(ModelId("yolov3-tiny-coco"))


@pytest.fixture(scope="module")
def tensors(model: ResolvedModel) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    result = []
    for name in PHOTOS:
        pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
        assert pixels is not None
        tensor, _ = preprocess(np.asarray(pixels, np.uint8), ChannelOrder.BGR, model.manifest)
        result.append(tensor)
    return result


@pytest.fixture
def instances(model: ResolvedModel) -> Iterator[list[GatedEngine]]:
    """Two instances with the machine's cores split between them, as a model with `instances: 2` gets."""
    engines = [GatedEngine(e) for e in OnnxRuntimeEngine.load_instances(model.onnx_path, 2)]
    yield engines
    for engine in engines:
        engine.gate.set()
        engine.close()


def submit_in_thread(scheduler: BatchScheduler, tensor: np.ndarray[Any, Any]) -> Callable[[], Ticket]:
    """Admits and submits one image from a thread of its own (a submission may run its batch inline)."""
    box: list[Ticket] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            admission = scheduler.admit(1, Origin.UNARY)
            box.append(scheduler.submit(admission, [tensor]))
        except BaseException as exc:  # surfaced by ticket(): a thread's exception is otherwise lost
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def ticket() -> Ticket:
        assert wait_for(lambda: bool(box) or bool(failed), timeout_s=60)
        assert not failed, f"the submission failed: {failed[0]!r}"
        return box[0]

    return ticket


def detections(model: ResolvedModel, outputs: Mapping[str, Tensor]) -> list[tuple[str, float]]:
    manifest = model.manifest
    options = resolve_options(InferOptions(), manifest)
    transform = preprocess(np.zeros((416, 416, 3), np.uint8), ChannelOrder.BGR, manifest)[1]
    (decoded,) = decode_batch(manifest, outputs, [transform], options)
    return [(d.class_name, round(d.confidence, 4)) for d in decoded.detections]


def test_a_second_batch_runs_on_the_free_instance_while_the_first_is_held(
    model: ResolvedModel, instances: list[GatedEngine], tensors: list[np.ndarray[Any, Any]]
) -> None:
    first, second = instances
    slot = EngineSlot(model.key, first, second)
    scheduler = BatchScheduler(slot, BatchSettings(max_batch_size=1, max_queue_delay_ms=0.0))
    first.gate.clear()
    try:
        held = submit_in_thread(scheduler, tensors[0])
        assert wait_for(lambda: first.entered == 1 or second.entered > 0, timeout_s=60)
        assert (first.entered, second.entered) == (1, 0), "an idle slot gives the first instance first"

        others = [submit_in_thread(scheduler, tensor) for tensor in tensors[1:]]

        # All three finish on the second instance while the first still holds its batch (the held
        # submission runs inline, so its ticket only comes back once its batch is done).
        assert wait_for(lambda: all(t().finished for t in others), timeout_s=60)
        assert (first.returned, second.returned) == (0, 3)
        assert scheduler.stats().instance_batches == (0, 3)
        first.gate.set()
        assert wait_for(lambda: held().finished, timeout_s=60)
        assert scheduler.stats().instance_batches == (1, 3)
    finally:
        first.gate.set()
        scheduler.close()
    with OnnxRuntimeEngine.load(model.onnx_path) as alone:
        for ticket, tensor in zip([held, *others], tensors, strict=True):
            (item,) = ticket().result()
            expected = alone.infer({slot.input_name: tensor[np.newaxis]})
            assert detections(model, item.outputs) == detections(model, expected)
            got, want = (np.asarray(o["output"], np.float32) for o in (item.outputs, expected))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_concurrent_requests_use_both_instances_and_get_their_own_answers(
    model: ResolvedModel, instances: list[GatedEngine], tensors: list[np.ndarray[Any, Any]]
) -> None:
    """Eight requests from eight threads, batches of one: every answer is its own image's, and with one
    instance held until both have entered a batch, both instances must have served."""
    first, second = instances
    slot = EngineSlot(model.key, first, second)
    scheduler = BatchScheduler(slot, BatchSettings(max_batch_size=1, max_queue_delay_ms=0.0))
    first.gate.clear()
    second.gate.clear()
    try:
        tickets = [submit_in_thread(scheduler, tensors[i % len(tensors)]) for i in range(8)]
        assert wait_for(lambda: first.entered >= 1 and second.entered >= 1, timeout_s=60)
        first.gate.set()
        second.gate.set()
        assert wait_for(lambda: all(t().finished for t in tickets), timeout_s=120)
    finally:
        first.gate.set()
        second.gate.set()
        scheduler.close()
    served = scheduler.stats().instance_batches
    assert sum(served) == 8 and len(served) == 2 and min(served) >= 1, served
    with OnnxRuntimeEngine.load(model.onnx_path) as alone:
        expected = [detections(model, alone.infer({slot.input_name: t[np.newaxis]})) for t in tensors]
    for index, ticket in enumerate(tickets):
        (item,) = ticket().result()
        assert detections(model, item.outputs) == expected[index % len(tensors)]


def test_a_swap_replaces_every_instance_and_closes_each_after_its_batch(
    model: ResolvedModel, instances: list[GatedEngine]
) -> None:
    first, second = instances
    slot = EngineSlot(model.key, first, second)
    replacement = OnnxRuntimeEngine.load(model.onnx_path, intra_op_threads=1)
    with slot.lease() as busy:
        assert busy is first
        assert slot.swap(replacement)
        assert slot.instances == 1
        assert second.closed and not first.closed  # the idle one at once, the busy one after its batch
    assert first.closed
    with slot.lease() as engine:
        assert engine is replacement
    slot.close()
    assert replacement.closed
    with pytest.raises(UnavailableError), slot.lease():
        pass


class RenamedInput(GatedEngine):
    """A real engine reporting another input name: what an instance of a different model would have."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        spec = super().inputs[0]
        return (TensorSpec("pixels", spec.dtype, spec.shape),)


def test_instances_must_have_the_same_tensors(model: ResolvedModel, instances: list[GatedEngine]) -> None:
    other = RenamedInput(OnnxRuntimeEngine.load(model.onnx_path))
    try:
        with pytest.raises(EngineError, match="differ from the current engine's"):
            EngineSlot(model.key, instances[0], other)
    finally:
        other.close()


@pytest.mark.parametrize(
    ("count", "threads", "expected"),
    [
        pytest.param(1, 2, 2, id="one-instance-keeps-all"),
        pytest.param(2, 2, 1, id="two-on-two-cores-one-each"),
        pytest.param(2, 8, 4, id="two-on-eight"),
        pytest.param(3, 8, 2, id="uneven-rounds-down"),
        pytest.param(4, 2, 1, id="more-instances-than-threads-still-one"),
        pytest.param(2, 0, max(1, available_cores() // 2), id="zero-means-the-machine"),
        pytest.param(2, None, max(1, available_cores() // 2), id="none-means-the-machine"),
    ],
)
def test_threads_per_instance(count: int, threads: int | None, expected: int) -> None:
    assert threads_per_instance(count, threads) == expected


def test_load_instances_makes_independent_sessions(model: ResolvedModel) -> None:
    engines = OnnxRuntimeEngine.load_instances(model.onnx_path, 2, intra_op_threads=2)
    try:
        assert len(engines) == 2 and engines[0] is not engines[1]
        engines[0].close()
        assert not engines[1].closed  # closing one leaves the other serving
    finally:
        for engine in engines:
            engine.close()
    with pytest.raises(EngineError, match="at least one engine instance, got 0"):
        OnnxRuntimeEngine.load_instances(model.onnx_path, 0)


BASE = {"task": "detection", "decoder": "yolov5", "input_width": 32, "input_height": 32}


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(None, None, id="null-follows-the-server"),
        pytest.param(1, None, id="one"),
        pytest.param(MAX_INSTANCES, None, id="the-most"),
        pytest.param(0, "expected instances in [1, 16] or null, got 0", id="zero"),
        pytest.param(-2, "got -2", id="negative"),
        pytest.param(MAX_INSTANCES + 1, "got 17", id="too-many"),
        pytest.param("2", "got '2'", id="a-string"),
        pytest.param(2.0, "got 2.0", id="a-float"),
        pytest.param(True, "got True", id="a-boolean"),
    ],
)
def test_manifest_instances(value: object, error: str | None) -> None:
    data = {**BASE, "instances": value}
    if error is None:
        manifest = ModelManifest.from_dict(data)
        assert manifest.instances == value
        assert ModelManifest.from_dict(manifest.to_dict()) == manifest
    else:
        with pytest.raises(ValueError) as caught:
            ModelManifest.from_dict(data)
        assert error in str(caught.value)


# -- wired into the server: the engine factory, the model manager and Infer ------------------------------


def user_model(root: Path, model: ResolvedModel, name: str, instances: int | None) -> None:
    """yolov3-tiny copied as user model `name`/1, its manifest asking for `instances` (None: the server's)."""
    version = root / name / "1"
    version.mkdir(parents=True)
    shutil.copyfile(model.onnx_path, version / model.manifest.onnx_file)
    manifest = dataclasses.replace(model.manifest, instances=instances)
    (version / "manifest.json").write_text(json.dumps(manifest.to_dict()))
    write_integrity_record(version)


@pytest.mark.parametrize(
    ("in_manifest", "server_default", "expected"),
    [
        pytest.param(None, 1, 1, id="neither-says-one"),
        pytest.param(None, 2, 2, id="the-server-flag"),
        pytest.param(2, 1, 2, id="the-manifest"),
        pytest.param(1, 2, 1, id="the-manifest-wins"),
    ],
)
def test_a_loaded_model_has_the_instances_its_manifest_or_the_server_asks_for(
    tmp_path: Path, model: ResolvedModel, in_manifest: int | None, server_default: int, expected: int
) -> None:
    user_model(tmp_path / "models", model, "twin", in_manifest)
    config = ServerConfig(
        model_repository=tmp_path / "models",
        cache_dir=cache_root() / "downloads",
        intra_op_threads=2,
        engine_instances=server_default,
    )
    repository = ModelRepository(config.model_repository, config.builtin_repository, config.cache_dir)
    manager = ModelManager(repository, onnxruntime_engine_factory(config), max_loaded=1)
    try:
        with manager.acquire(ModelId("twin")) as predictor:
            assert predictor.instances == expected
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param([], 1, id="default-one"),
        pytest.param(["--engine-instances", "3"], 3, id="flag"),
        pytest.param(["--engine-instances", "0"], "expected engine_instances in [1, 16], got 0", id="zero"),
        pytest.param(["--engine-instances", "17"], "got 17", id="too-many"),
    ],
)
def test_engine_instances_flag(argv: list[str], expected: int | str) -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    namespace = parser.parse_args(argv)
    if isinstance(expected, int):
        assert ServerConfig.from_namespace(namespace, environ={}).engine_instances == expected
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            ServerConfig.from_namespace(namespace, environ={})


EXPECTED = {"coffee.png": "cup", "motorcycle_left.png": "motorbike"}


def test_a_served_model_with_two_instances_answers_concurrent_calls_on_both(
    tmp_path: Path, model: ResolvedModel
) -> None:
    user_model(tmp_path / "models", model, "twin", 2)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        model_repository=tmp_path / "models",
        cache_dir=cache_root() / "downloads",
        intra_op_threads=2,
        preload_default_model=False,
        shutdown_grace_s=1.0,
    )
    manager = build_model_manager(config)
    server, port = create_server(config, models=manager)
    server.start()
    photos = {name: media(name).read_bytes() for name in EXPECTED}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(8) as pool:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)

            def infer(name: str) -> tuple[str, list[str], tuple[int, int]]:
                request = inference_pb2.InferRequest(
                    model_id="twin", images=[types_pb2.Image(encoded=photos[name])]
                )
                response: inference_pb2.InferResponse = stub.Infer(request, timeout=120)
                (prediction,) = response.predictions
                size = (prediction.image_size.width, prediction.image_size.height)
                return name, [d.class_name for d in prediction.detections], size

            def both_used() -> bool:
                # Waves of 16 concurrent calls until each instance has run batches: which one a batch gets
                # depends on what else is running then, so the test waits for the fact, not for a count.
                for name, classes, size in pool.map(infer, list(EXPECTED) * 8):
                    assert EXPECTED[name] in classes, f"{name}: {classes}"  # each call its own image's answer
                    assert size == {"coffee.png": (600, 400), "motorcycle_left.png": (741, 500)}[name]
                batches = manager.scheduler_stats()["twin/1"].instance_batches
                return len(batches) == 2 and min(batches) > 0

            assert wait_for(both_used, timeout_s=120), manager.scheduler_stats()["twin/1"]
    finally:
        server.stop(grace_s=1.0)
