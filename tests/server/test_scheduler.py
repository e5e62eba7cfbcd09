"""The batch scheduler on the real yolov3-tiny engine (ONNX Runtime, CPU), counted by a wrapper, never mocked.

`StepEngine` wraps the real engine: it records every batch it runs and, when stepping, holds each call at its
start until the test lets one through. A held call keeps the scheduler busy, so everything submitted
meanwhile is queued, and the next batches can be asserted one by one: by counts, never by wall-clock time.
"""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import cache_root, wait_for
from google.rpc import error_details_pb2
from media import media
from visionrpc.engines import EngineError, EngineInfo, OnnxRuntimeEngine, TensorSpec
from visionrpc.engines.base import Tensor
from visionrpc.server.app import OnnxRuntimeEngineFactory, batch_settings
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, InferOptions, Prediction
from visionrpc.server.errors import (
    DeadlineExceededError,
    EngineFailedError,
    ResourceExhaustedError,
    UnavailableError,
)
from visionrpc.server.manifest import ModelManifest, ResolvedModel
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.predictor import BatchResult, InputImage, Predictor
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.scheduler import BatchSettings, Origin
from visionrpc.server.servicers.status import to_status

MODEL = "yolov3-tiny-coco"
PHOTOS = (
    "coffee.png",
    "motorcycle_left.png",
    "astronaut.png",
    "chelsea.png",
    "rocket.jpg",
    "grace_hopper.jpg",
)

# The real engine runs the batches being waited for: generous on a busy machine.
wait_for = functools.partial(wait_for, timeout_s=60.0)


class StepEngine:
    """The real engine, recording each batch's size; `fixed_batch` / `max_batch` make it report the limits
    of a fixed-batch export / a TensorRT profile (and check them); `stepping` holds each call until `step`."""

    def __init__(
        self,
        inner: OnnxRuntimeEngine,
        *,
        label: str = "onnxruntime",
        fixed_batch: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        self._inner = inner
        self._info = replace(inner.info, engine=label)
        self._fixed = fixed_batch
        self.max_batch = max_batch
        self.batches: list[int] = []
        self.threads: list[str] = []  # the thread that ran each batch
        self.stepping = False
        self.fail_next = False
        self._steps = threading.Semaphore(0)
        self._cond = threading.Condition()
        self._entered = 0

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        spec = self._inner.inputs[0]
        if self._fixed is None:
            return self._inner.inputs
        return (replace(spec, shape=(self._fixed, *spec.shape[1:])),)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.outputs

    @property
    def closed(self) -> bool:
        return self._inner.closed

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        size = next(iter(inputs.values())).shape[0]
        assert self._fixed is None or size == self._fixed, f"fixed batch {self._fixed}, got {size}"
        assert self.max_batch is None or size <= self.max_batch, f"max batch {self.max_batch}, got {size}"
        with self._cond:
            self._entered += 1
            self._cond.notify_all()
        if self.stepping:
            assert self._steps.acquire(timeout=60), "the test never let this batch through"
        if self.fail_next:
            self.fail_next = False
            raise EngineError("the device fell off the bus")
        outputs = self._inner.infer(inputs)
        with self._cond:
            self.batches.append(size)
            self.threads.append(threading.current_thread().name)
        return outputs

    def warmup(self) -> None:
        self._inner.warmup()

    def close(self) -> None:
        self._inner.close()

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            self._steps.release()

    def wait_entered(self, count: int) -> None:
        """Until `count` calls have started (a stepping engine holds the last of them)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._entered >= count, timeout=60)


@dataclass
class Call:
    """One submission on a thread of its own: its result or its error."""

    thread: threading.Thread
    result: BatchResult | None = None
    error: BaseException | None = None

    def join(self) -> Call:
        self.thread.join(60)
        assert not self.thread.is_alive(), "the submission never finished"
        return self


def submit_in_thread(
    predictor: Predictor, images: list[InputImage], options: DecodeOptions, **kwargs: object
) -> Call:
    call = Call(threading.Thread(target=lambda: None))

    def run() -> None:
        try:
            call.result = predictor.infer(images, options, **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:  # asserted by the test
            call.error = exc

    call.thread = threading.Thread(target=run, daemon=True)
    call.thread.start()
    return call


@pytest.fixture(scope="module")
def model() -> ResolvedModel:
    root = cache_root() / "downloads"
    repository = ModelRepository(root / "unused-user-models", root / "builtin-models", root)
    return repository.resolve(ModelId(MODEL))


@pytest.fixture(scope="module")
def photos() -> list[InputImage]:
    images = []
    for name in PHOTOS:
        pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
        assert pixels is not None
        images.append(InputImage(pixels, ChannelOrder.BGR))
    return images


@pytest.fixture(scope="module")
def reference(model: ResolvedModel) -> Iterator[Predictor]:
    """A plain predictor for unbatched reference results (`predict`: one engine call, no scheduler)."""
    predictor = Predictor(model, OnnxRuntimeEngine.load(model.onnx_path, intra_op_threads=2))
    yield predictor
    predictor.close()


def make(
    model: ResolvedModel, settings: BatchSettings | None = None, **engine_options: int | None
) -> tuple[Predictor, StepEngine]:
    engine = StepEngine(OnnxRuntimeEngine.load(model.onnx_path, intra_op_threads=2), **engine_options)
    return Predictor(
        model, engine, settings or BatchSettings(max_batch_size=8, max_queue_delay_ms=2.0)
    ), engine


def options_for(predictor: Predictor, **overrides: object) -> DecodeOptions:
    return predictor.resolve_options(InferOptions(**overrides))  # type: ignore[arg-type]


def assert_same(batched: Prediction, alone: Prediction) -> None:
    assert batched.image_size == alone.image_size
    assert [d.class_name for d in batched.detections] == [d.class_name for d in alone.detections]
    for got, want in zip(batched.detections, alone.detections, strict=True):
        assert got.box.as_tuple() == pytest.approx(want.box.as_tuple(), abs=0.05)
        assert got.confidence == pytest.approx(want.confidence, abs=1e-4)


def hold_engine(predictor: Predictor, engine: StepEngine, photo: InputImage) -> Call:
    """A first batch (one stream frame) caught inside the engine: the scheduler is busy until `step`."""
    engine.stepping = True
    blocker = submit_in_thread(predictor, [photo], options_for(predictor), origin=Origin.STREAM)
    engine.wait_entered(1)
    return blocker


def test_concurrent_submissions_share_one_engine_call_and_match_unbatched_results(
    model: ResolvedModel, photos: list[InputImage], reference: Predictor
) -> None:
    predictor, engine = make(model)
    blocker = hold_engine(predictor, engine, photos[0])
    # Eight callers, each its own photo and its own options (defaults, a low threshold, a class filter).
    variants: list[dict[str, object]] = [
        {},
        {"confidence_threshold": 0.1},
        {"class_names": frozenset({"tie"})},
    ]
    jobs = [(photos[i % len(photos)], options_for(predictor, **variants[i % 3])) for i in range(8)]
    calls = [submit_in_thread(predictor, [photo], options) for photo, options in jobs]
    assert wait_for(lambda: predictor.scheduler_stats().queued_unary == 8)
    engine.step(2)
    results = [call.join() for call in calls]
    assert blocker.join().error is None
    assert engine.batches == [1, 8]  # the eight queued images ran as one engine call
    # The first ran inline in its caller's thread (idle engine); the queue, on the scheduler's thread.
    assert engine.threads == [blocker.thread.name, f"visionrpc-batch-{model.key}"]
    stats = predictor.scheduler_stats()
    assert (stats.batches, stats.images, stats.largest_batch) == (2, 9, 8)
    for call, (photo, options) in zip(results, jobs, strict=True):
        assert call.error is None and call.result is not None
        (batched,) = call.result.predictions
        (alone,) = reference.infer([photo], options).predictions
        assert_same(batched, alone)
        assert batched.timings.queue_ms > 0  # they waited for the held batch, and it shows
        assert batched.timings.inference_ms > 0
    found = {d.class_name for call in results for d in call.result.predictions[0].detections}  # type: ignore[union-attr]
    assert {"cup", "motorbike", "tie"} <= found
    predictor.close()


def test_a_lone_request_on_an_idle_engine_runs_at_once_in_its_own_thread(
    model: ResolvedModel, photos: list[InputImage]
) -> None:
    # A ten-minute window: if a lone request waited for company, this test would hang, not pass.
    predictor, engine = make(model, BatchSettings(max_batch_size=8, max_queue_delay_ms=600_000))
    for photo in photos[:2]:  # coffee, motorbike
        result = predictor.infer([photo], options_for(predictor))
        assert result.predictions[0].detections
    assert engine.batches == [1, 1]
    # No hand-off to the scheduler thread and back: the caller ran its batch itself.
    assert engine.threads == [threading.current_thread().name] * 2
    predictor.close()


@pytest.mark.parametrize(
    ("engine_options", "max_batch_size", "images", "batches"),
    [
        ({"max_batch": 3}, 8, 7, [3, 3, 1]),  # a TensorRT profile's max batch
        ({"fixed_batch": 1}, 8, 3, [1, 1, 1]),  # an export with a fixed batch dimension of 1
        ({"fixed_batch": 4}, 8, 3, [4]),  # a fixed batch of 4: padded, the padding's outputs thrown away
        ({"fixed_batch": 4}, 2, 3, [4, 4]),  # 2 + 1 images, each call padded to the engine's 4
        ({}, 8, 11, [8, 3]),  # the configured max_batch_size
    ],
)
def test_batches_larger_than_the_engine_takes_are_split(
    model: ResolvedModel,
    photos: list[InputImage],
    reference: Predictor,
    engine_options: dict[str, int],
    max_batch_size: int,
    images: int,
    batches: list[int],
) -> None:
    settings = BatchSettings(max_batch_size=max_batch_size, max_queue_delay_ms=2.0)
    predictor, engine = make(model, settings, **engine_options)
    request = [photos[i % len(photos)] for i in range(images)]
    options = options_for(predictor)
    result = predictor.infer(request, options)
    assert engine.batches == batches
    assert len(result.predictions) == images
    for photo, batched in zip(request, result.predictions, strict=True):
        assert_same(batched, reference.infer([photo], options).predictions[0])
    predictor.close()


def test_a_passed_deadline_or_a_departed_caller_is_dropped_before_compute(
    model: ResolvedModel, photos: list[InputImage]
) -> None:
    predictor, engine = make(model)
    blocker = hold_engine(predictor, engine, photos[0])
    options = options_for(predictor)
    deadline = time.monotonic() + 0.05
    late = submit_in_thread(predictor, [photos[1], photos[2]], options, deadline=deadline)
    gone = threading.Event()
    departed = submit_in_thread(predictor, [photos[3]], options, cancelled=gone)
    on_time = submit_in_thread(predictor, [photos[4]], options, deadline=time.monotonic() + 600)
    assert wait_for(lambda: predictor.scheduler_stats().queued_unary == 4)
    gone.set()
    assert wait_for(lambda: time.monotonic() > deadline)
    engine.step(2)
    assert isinstance(late.join().error, DeadlineExceededError)
    assert late.error.reason == "DEADLINE_PASSED"  # type: ignore[attr-defined]
    assert isinstance(departed.join().error, UnavailableError)
    assert on_time.join().error is None and on_time.result is not None
    assert blocker.join().error is None
    assert engine.batches == [1, 1]  # only the blocker and the request on time were computed
    stats = predictor.scheduler_stats()
    assert (stats.dropped_deadline, stats.dropped_cancelled, stats.images) == (1, 1, 2)
    predictor.close()


def test_a_full_queue_answers_resource_exhausted_with_a_retry_delay(
    model: ResolvedModel, photos: list[InputImage]
) -> None:
    predictor, engine = make(model, BatchSettings(max_batch_size=2, max_queue_delay_ms=0, max_queue_size=3))
    blocker = hold_engine(predictor, engine, photos[0])
    options = options_for(predictor)
    queued = [submit_in_thread(predictor, [photo], options) for photo in photos[1:4]]
    assert wait_for(lambda: predictor.scheduler_stats().queued_unary == 3)
    with pytest.raises(ResourceExhaustedError) as full:
        predictor.infer([photos[4]], options)
    assert full.value.reason == "QUEUE_FULL" and full.value.retry_after_s > 0
    details = to_status(full.value).details
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in details) and retry.retry_delay.ToMilliseconds() > 0
    # Each origin has its own bound: the unary flood does not shut stream frames out.
    frame = submit_in_thread(predictor, [photos[5]], options, origin=Origin.STREAM)
    assert wait_for(lambda: predictor.scheduler_stats().queued_stream == 1)
    engine.step(10)
    assert all(call.join().error is None for call in [blocker, frame, *queued])
    assert predictor.scheduler_stats().rejected == 1
    assert predictor.infer([photos[4]], options).predictions  # room again
    predictor.close()


@pytest.mark.parametrize(("flood", "lone"), [(Origin.STREAM, Origin.UNARY), (Origin.UNARY, Origin.STREAM)])
def test_a_flood_of_one_origin_cannot_starve_the_other(
    model: ResolvedModel, photos: list[InputImage], flood: Origin, lone: Origin
) -> None:
    predictor, engine = make(model)
    blocker = hold_engine(predictor, engine, photos[0])
    options = options_for(predictor)
    # 32 flood images queued first (four submissions of 8, like stream pipelines), then one lone image.
    flooders = [submit_in_thread(predictor, photos[:4] * 2, options, origin=flood) for _ in range(4)]
    queued = "queued_stream" if flood is Origin.STREAM else "queued_unary"
    assert wait_for(lambda: getattr(predictor.scheduler_stats(), queued) == 32)
    single = submit_in_thread(predictor, [photos[5]], options, origin=lone)
    assert wait_for(lambda: _queued(predictor) == 33)
    engine.step(2)  # the held batch, then exactly one more
    assert single.join().error is None  # served by the first batch after the hold, ahead of 32 older images
    assert engine.batches == [1, 8]
    stats = predictor.scheduler_stats()
    flooded = stats.stream_images if flood is Origin.STREAM else stats.unary_images
    # The batch that served the lone image: half its slots (or more, if unused) went to the flood.
    assert flooded == (1 + 7 if flood is Origin.STREAM else 7)  # the held batch was one stream frame
    engine.step(10)
    assert all(call.join().error is None for call in [blocker, *flooders])
    assert engine.batches == [1, 8, 8, 8, 8, 1]  # the rest of the flood in full batches
    predictor.close()


def _queued(predictor: Predictor) -> int:
    stats = predictor.scheduler_stats()
    return stats.queued_unary + stats.queued_stream


def test_close_fails_queued_work_at_once_and_lets_the_batch_in_flight_finish(
    model: ResolvedModel, photos: list[InputImage]
) -> None:
    predictor, engine = make(model)
    blocker = hold_engine(predictor, engine, photos[0])
    options = options_for(predictor)
    queued = [submit_in_thread(predictor, [photo], options) for photo in photos[1:4]]
    assert wait_for(lambda: predictor.scheduler_stats().queued_unary == 3)
    predictor.close()  # the model is being unloaded
    for call in queued:  # failed while the engine is still held: none of them was computed
        assert isinstance(call.join().error, UnavailableError)
        assert call.error.reason == "MODEL_UNLOADED"  # type: ignore[attr-defined]
    assert not engine.closed  # the batch in flight still leases it
    engine.step()
    assert blocker.join().error is None and blocker.result is not None
    assert blocker.result.predictions[0].detections
    assert engine.batches == [1]
    assert wait_for(lambda: engine.closed)  # closed by the last batch on it
    with pytest.raises(UnavailableError):
        predictor.infer([photos[1]], options)


def test_an_engine_failure_fails_that_batch_only(model: ResolvedModel, photos: list[InputImage]) -> None:
    predictor, engine = make(model)
    blocker = hold_engine(predictor, engine, photos[0])
    options = options_for(predictor)
    doomed = [submit_in_thread(predictor, [photo], options) for photo in photos[1:3]]
    assert wait_for(lambda: predictor.scheduler_stats().queued_unary == 2)
    engine.step()
    assert blocker.join().error is None
    engine.fail_next = True  # the batch holding both queued images
    engine.step(5)
    for call in doomed:
        assert isinstance(call.join().error, EngineFailedError)
    assert predictor.infer([photos[0]], options).predictions[0].detections  # the scheduler carries on
    predictor.close()


def test_a_batch_keeps_the_engine_it_started_on_across_a_swap(
    model: ResolvedModel, photos: list[InputImage]
) -> None:
    predictor, old = make(model)
    blocker = hold_engine(predictor, old, photos[0])
    new = StepEngine(OnnxRuntimeEngine.load(model.onnx_path, intra_op_threads=2), label="new")
    assert predictor.swap_engine(new)
    queued = submit_in_thread(predictor, [photos[1]], options_for(predictor))
    old.step()
    assert blocker.join().result is not None and blocker.result.engine.engine == "onnxruntime"
    assert queued.join().result is not None and queued.result.engine.engine == "new"
    assert wait_for(lambda: old.closed)
    assert old.batches == [1] and new.batches[-1:] == [1]
    predictor.close()


def test_the_manager_gives_each_model_its_scheduler_with_manifest_overrides(tmp_path: Path) -> None:
    root = cache_root() / "downloads"
    builtin = ModelRepository(tmp_path / "unused", root / "builtin-models", root).resolve(ModelId(MODEL))
    user = tmp_path / "models"
    shutil.copytree(builtin.directory, user / "alpha" / "1")
    shutil.copytree(builtin.directory, user / "beta" / "1")
    manifest = ModelManifest.read(user / "beta" / "1")
    replace(manifest, max_batch_size=2, max_queue_delay_ms=0.5).write(user / "beta" / "1")
    manager = ModelManager(
        ModelRepository(user, root / "builtin-models", root),
        OnnxRuntimeEngineFactory(("cpu",), 2),
        max_loaded=2,
        batching=batch_settings(ServerConfig(max_batch_size=4, batch_queue_size=16)),
    )
    with manager.acquire(ModelId.parse("alpha")) as alpha, manager.acquire(ModelId.parse("beta")) as beta:
        assert alpha.batching.limits("cpu") == (4, 2.0)  # the server's, the device's delay
        assert beta.batching.limits("cpu") == (2, 0.5)  # the manifest's
        assert beta.batching.max_queue_size == 16
        manager.unload(ModelId.parse("beta"))
    with pytest.raises(UnavailableError):  # unloaded: its scheduler closed with it
        beta.infer(
            [InputImage(np.zeros((32, 32, 3), np.uint8), ChannelOrder.BGR)],
            beta.resolve_options(InferOptions()),
        )
    manager.close()


@pytest.mark.parametrize(
    ("settings", "device", "expected"),
    [
        (BatchSettings(), "cpu", (8, 2.0)),
        (BatchSettings(), "cuda:0", (16, 1.0)),
        (BatchSettings(max_batch_size=1, max_queue_delay_ms=0.0), "cpu", (1, 0.0)),
        (BatchSettings().overridden(4, None), "cpu", (4, 2.0)),
    ],
)
def test_batch_settings_resolve_per_device(
    settings: BatchSettings, device: str, expected: tuple[int, float]
) -> None:
    assert settings.limits(device) == expected


@pytest.mark.parametrize(
    "make_invalid",
    [
        lambda: ServerConfig(max_batch_size=-1),
        lambda: ServerConfig(batch_queue_size=0),
        lambda: ServerConfig(max_queue_delay_ms=5000.0),
        lambda: ModelManifest.from_dict(
            {
                "task": "detection",
                "decoder": "yolov5",
                "input_width": 32,
                "input_height": 32,
                "max_batch_size": 0,
            }
        ),
        lambda: ModelManifest.from_dict(
            {
                "task": "detection",
                "decoder": "yolov5",
                "input_width": 32,
                "input_height": 32,
                "max_queue_delay_ms": -1,
            }
        ),
    ],
)
def test_invalid_batching_settings_are_refused(make_invalid: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="expected"):
        make_invalid()
