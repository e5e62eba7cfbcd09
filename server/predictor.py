"""One loaded model: preprocess -> engine -> decode, in-process, with no gRPC anywhere.

This is the whole inference path; the servicers only translate messages around it. Two ways in:

- `submit` (what Infer and stream pipelines use): through the model's `BatchScheduler`, which merges
  concurrent callers' images into shared engine calls (dynamic batching, `scheduler.py`); each caller
  preprocesses and decodes its own images in its own thread.
- `predict` / `run`: the images as one engine call in the calling thread, no scheduler; the benchmark runs
  this as the in-process baseline the server is held to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from visionrpc.engines import Engine, EngineError, EngineInfo

from .domain import ChannelOrder, ImageArray, ImageSize, InferOptions, Prediction, Timings
from .models.repository import ResolvedModel
from .processing import (
    Decoded,
    DecodeOptions,
    Transform,
    decode_batch,
    preprocess,
    resolve_options,
    stack_batch,
)
from .scheduler import BatchScheduler, BatchSettings, Origin

__all__ = ["BatchResult", "InputImage", "Predictor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputImage:
    """Decoded pixels ready for a model, with what decoding them cost."""

    pixels: ImageArray
    order: ChannelOrder
    decode_ms: float = 0.0
    queue_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The predictions of one batch and the engine that ran it (engines can change between batches)."""

    predictions: list[Prediction]
    engine: EngineInfo


class _EngineRef:
    """An engine plus the count of batches running on it. Mutable; guarded by Predictor._lock."""

    __slots__ = ("engine", "retired", "users")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.users = 0
        self.retired = False  # replaced (or the predictor closed): close when the last user finishes


class Predictor:
    """Runs one model version on batches of decoded images. Thread-safe (the engine serialises itself).

    The engine can be replaced while requests run (`swap_engine`, e.g. ONNX Runtime -> a freshly built
    TensorRT engine), read-copy-update style: each batch takes a reference to the current engine for its whole
    run; a swap only redirects later batches, and the old engine is closed by whichever finishes last, the
    swap or the last batch still running on it. No batch ever sees a closed engine, and no batch waits for a
    swap.
    """

    def __init__(self, model: ResolvedModel, engine: Engine, batching: BatchSettings | None = None) -> None:
        """Wraps a loaded engine. `batching`: the scheduler's settings (default: the device defaults)."""
        self.model = model
        self._input_name = engine.inputs[0].name
        self._lock = threading.Lock()
        self._current = _EngineRef(engine)
        self._closed = False
        self._scheduler = BatchScheduler(self, batching)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def key(self) -> str:
        return self.model.key

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def scheduler(self) -> BatchScheduler:
        return self._scheduler

    @property
    def engine(self) -> Engine:
        """The engine new batches run on (a later swap may replace it)."""
        return self._current.engine

    @property
    def engine_info(self) -> EngineInfo:
        return self._current.engine.info

    def resolve_options(self, options: InferOptions) -> DecodeOptions:
        """Checks request options against this model (class names exist, ...); raises InvalidArgumentError."""
        return resolve_options(options, self.model.manifest)

    def submit(
        self,
        images: Sequence[InputImage],
        options: DecodeOptions,
        *,
        origin: Origin = Origin.UNARY,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> BatchResult:
        """Runs the images through the batch scheduler, sharing engine calls with other callers' images.

        Preprocessing and decoding (with these options) run in this thread; only the engine call is shared.
        Each prediction's queue_ms adds the time spent waiting for a batch to the image's own queue_ms. The
        engine reported is the one that ran the first image (a swap may fall between two batches).

        Args:
            origin: whose work this is (unary request or stream frames), for fairness between the two.
            deadline: `time.monotonic()` after which the images are dropped instead of run.
            cancelled: set when the caller goes away; its images still queued are dropped.

        Raises:
            ResourceExhaustedError: the queue is full.  DeadlineExceededError: the deadline passed first.
            UnavailableError: the model is being unloaded.  EngineError: the engine failed.
        """
        manifest = self.model.manifest
        transforms: list[Transform] = []
        preprocess_ms: list[float] = []

        def prepare(index: int) -> npt.NDArray[np.float32]:
            t0 = time.perf_counter()
            tensor, transform = preprocess(images[index].pixels, images[index].order, manifest)
            transforms.append(transform)
            preprocess_ms.append((time.perf_counter() - t0) * 1000.0)
            return tensor

        items = self._scheduler.submit(
            len(images), prepare, origin=origin, deadline=deadline, cancelled=cancelled
        )
        predictions = []
        for image, item, transform, prep_ms in zip(images, items, transforms, preprocess_ms, strict=True):
            t0 = time.perf_counter()
            (decoded,) = decode_batch(manifest, item.outputs, [transform], options)
            timings = Timings(
                decode_ms=image.decode_ms,
                queue_ms=image.queue_ms + item.queue_ms,
                preprocess_ms=prep_ms,
                inference_ms=item.inference_ms,
                postprocess_ms=(time.perf_counter() - t0) * 1000.0,
            )
            predictions.append(_prediction(image, decoded, timings))
        return BatchResult(predictions, items[0].engine)

    def predict(self, images: Sequence[InputImage], options: DecodeOptions) -> list[Prediction]:
        """Runs the images as one batch in this thread (no scheduler); one Prediction per image, in order."""
        return self.run(images, options).predictions

    def run(self, images: Sequence[InputImage], options: DecodeOptions) -> BatchResult:
        """Like `predict`, also saying which engine ran the batch (for responses that report it)."""
        with self._lease() as engine:
            return BatchResult(self._predict_on(engine, images, options), engine.info)

    def warmup(self) -> None:
        """Runs a blank image through the whole path so the first request pays no lazy initialisation."""
        with self._lease() as engine:
            self._warmup_on(engine)

    def swap_engine(self, engine: Engine, *, warm: bool = True) -> bool:
        """Makes `engine` serve every later batch; batches already running finish on the old one, which is
        closed when the last of them finishes. The new engine is warmed up first (outside any lock), so the
        first request on it pays no lazy initialisation.

        Returns:
            False when the predictor was closed meanwhile: the caller still owns `engine` and must close it.

        Raises:
            EngineError: the new engine's inputs or outputs differ from the old one's, or its warm-up
                fails; the old engine keeps serving.
        """
        old = self._current.engine
        if [s.name for s in engine.inputs] != [s.name for s in old.inputs] or sorted(
            s.name for s in engine.outputs
        ) != sorted(s.name for s in old.outputs):
            raise EngineError(
                f"{self.model.key}: the new engine's tensors {_names(engine)} differ from the "
                f"current engine's {_names(old)}"
            )
        if warm:
            self._warmup_on(engine)
        with self._lock:
            if self._closed:
                return False
            retired, self._current = self._current, _EngineRef(engine)
            retired.retired = True
            close_now = retired.users == 0
        logger.info("%s: now serving on %s (was %s)", self.model.key, engine.info, retired.engine.info)
        if close_now:
            retired.engine.close()
        return True

    def close(self) -> None:
        """Fails images still queued in the scheduler, then closes the engine once no batch runs on it;
        later calls fail (UnavailableError from `submit`, EngineError from `run`). Idempotent."""
        self._scheduler.close()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            current = self._current
            current.retired = True
            close_now = current.users == 0
        if close_now:
            current.engine.close()

    def lease(self) -> AbstractContextManager[Engine]:
        """The current engine, kept open (a swap or close defers closing it) until the block ends."""
        return self._lease()

    @contextmanager
    def _lease(self) -> Iterator[Engine]:
        with self._lock:
            ref = self._current
            ref.users += 1
        try:
            yield ref.engine
        finally:
            with self._lock:
                ref.users -= 1
                close_now = ref.retired and ref.users == 0
            if close_now:  # the last batch on a swapped-out engine closes it, outside the lock
                ref.engine.close()

    def _predict_on(
        self, engine: Engine, images: Sequence[InputImage], options: DecodeOptions
    ) -> list[Prediction]:
        manifest = self.model.manifest
        start = time.perf_counter()
        tensors, transforms, preprocess_ms = [], [], []
        for image in images:
            t0 = time.perf_counter()
            tensor, transform = preprocess(image.pixels, image.order, manifest)
            tensors.append(tensor)
            transforms.append(transform)
            preprocess_ms.append((time.perf_counter() - t0) * 1000.0)
        batch = stack_batch(tensors)
        t_infer = time.perf_counter()
        outputs = engine.infer({self._input_name: batch})
        t_decode = time.perf_counter()
        decoded = decode_batch(manifest, outputs, transforms, options)
        t_end = time.perf_counter()
        inference_ms = (t_decode - t_infer) * 1000.0
        postprocess_ms = (t_end - t_decode) * 1000.0
        logger.debug("%s: batch of %d in %.1f ms", self.model.key, len(images), (t_end - start) * 1000.0)
        return [
            _prediction(
                image,
                result,
                Timings(
                    decode_ms=image.decode_ms,
                    queue_ms=image.queue_ms,
                    preprocess_ms=prep_ms,
                    inference_ms=inference_ms,
                    postprocess_ms=postprocess_ms,
                ),
            )
            for image, result, prep_ms in zip(images, decoded, preprocess_ms, strict=True)
        ]

    def _warmup_on(self, engine: Engine) -> None:
        manifest = self.model.manifest
        blank = np.zeros((manifest.input_height, manifest.input_width, 3), dtype=np.uint8)
        self._predict_on(engine, [InputImage(blank, ChannelOrder.BGR)], self.resolve_options(InferOptions()))


def _prediction(image: InputImage, decoded: Decoded, timings: Timings) -> Prediction:
    return Prediction(
        image_size=ImageSize(width=image.pixels.shape[1], height=image.pixels.shape[0]),
        detections=decoded.detections,
        classifications=decoded.classifications,
        timings=timings,
    )


def _names(engine: Engine) -> dict[str, list[str]]:
    return {"inputs": [s.name for s in engine.inputs], "outputs": sorted(s.name for s in engine.outputs)}
