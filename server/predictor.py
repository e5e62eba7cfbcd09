"""One loaded model: preprocess -> batch scheduler (engine) -> decode, in-process, with no gRPC anywhere.

This is the one inference path; the servicers and stream pipelines only translate around it. It runs in two
halves so that an asyncio front end holds no thread while a batch computes:

    pending = predictor.start(images, origin=Origin.UNARY)   # admit, preprocess, submit (worker thread)
    ... await pending.ticket (or pending.ticket.result()) ...
    result = predictor.finish(pending, options)              # decode + NMS (worker thread)

`infer` does both in the calling thread (stream pipelines, tests, the benchmark's in-process baseline).

Images may arrive smaller than they are: a JPEG decoded at 1/2, 1/4 or 1/8 of its size (`decode_size` says
how small a model's preprocessing allows). `InputImage.size` and `scale` say so, the preprocessing's
transform is composed with the scale, and predictions refer to the image's own size as if it had been
decoded in full.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from visionrpc.engines import Engine, EngineInfo

from .domain import ChannelOrder, ImageArray, ImageSize, InferOptions, Prediction, Timings
from .engine_slot import EngineSlot
from .manifest import Decoder, ModelManifest, ResizeMode, ResolvedModel
from .processing import (
    Decoded,
    DecodeOptions,
    Transform,
    decode_batch,
    preprocess,
    resolve_options,
    stack_batch,
)
from .scheduler import BatchScheduler, BatchSettings, Origin, SchedulerStats, Ticket

__all__ = ["BatchResult", "InputImage", "Pending", "Predictor", "decode_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputImage:
    """Decoded pixels ready for a model, with what decoding them cost.

    `size`: the image's own size, which predictions refer to (None: the pixels' size). `scale`: the pixels'
    size relative to it (1, or 1/2, 1/4, 1/8 for a JPEG decoded at reduced size; pixel edges map back by
    exactly 1 / scale).
    """

    pixels: ImageArray
    order: ChannelOrder
    decode_ms: float = 0.0
    queue_ms: float = 0.0
    size: ImageSize | None = None
    scale: float = 1.0

    @property
    def image_size(self) -> ImageSize:
        """The size predictions refer to."""
        if self.size is not None:
            return self.size
        return ImageSize(width=int(self.pixels.shape[1]), height=int(self.pixels.shape[0]))


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The predictions of one submission and the engine that ran it (engines can change between batches)."""

    predictions: list[Prediction]
    engine: EngineInfo


@dataclass(frozen=True, slots=True)
class Pending:
    """Images submitted to the scheduler: their ticket, and what `finish` needs to decode them."""

    images: tuple[InputImage, ...]
    transforms: tuple[Transform, ...]
    preprocess_ms: tuple[float, ...]
    ticket: Ticket


class Predictor:
    """Runs one model version on decoded images through its batch scheduler. Thread-safe.

    The engine can be replaced while requests run (`swap_engine`, e.g. ONNX Runtime -> a freshly built
    TensorRT engine): see `EngineSlot`.
    """

    def __init__(
        self, model: ResolvedModel, engine: Engine | Sequence[Engine], batching: BatchSettings | None = None
    ) -> None:
        """Wraps a loaded engine, or several instances of one that run batches at once (`EngineSlot`).
        `batching`: the scheduler's settings (default: the device defaults)."""
        self.model = model
        engines = tuple(engine) if isinstance(engine, Sequence) else (engine,)
        if not engines:
            raise ValueError(f"{model.key}: expected at least one engine instance, got none")
        self._slot = EngineSlot(model.key, *engines)
        self._scheduler = BatchScheduler(self._slot, batching)
        self._instances = engines  # the current group, for warmup (a swap replaces it)

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
    def engine(self) -> Engine:
        """The engine new batches run on (a later swap may replace it)."""
        return self._slot.engine

    @property
    def engine_info(self) -> EngineInfo:
        return self._slot.info

    @property
    def instances(self) -> int:
        """How many instances of the engine serve this model: how many batches may run at once."""
        return self._slot.instances

    @property
    def batching(self) -> BatchSettings:
        return self._scheduler.settings

    def scheduler_stats(self) -> SchedulerStats:
        return self._scheduler.stats()

    def resolve_options(self, options: InferOptions) -> DecodeOptions:
        """Checks request options against this model (class names exist, ...); raises InvalidArgumentError."""
        return resolve_options(options, self.model.manifest)

    def start(
        self,
        images: Sequence[InputImage],
        *,
        origin: Origin,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> Pending:
        """Admits the images into the model's queue, preprocesses them in this thread and submits them.

        Never call it on an event loop: preprocessing is CPU work, and on an idle engine the batch runs here.

        Args:
            origin: whose work this is (unary request or stream frames), for fairness between the two.
            deadline: `time.monotonic()` after which the images are dropped instead of run.
            cancelled: set when the caller goes away; its images still queued are dropped.

        Raises:
            ResourceExhaustedError: the queue is full.  UnavailableError: the model is being unloaded.
        """
        admission = self._scheduler.admit(len(images), origin)
        manifest = self.model.manifest
        tensors, transforms, preprocess_ms = [], [], []
        try:
            for image in images:
                t0 = time.perf_counter()
                tensor, transform = preprocess(image.pixels, image.order, manifest)
                tensors.append(tensor)
                transforms.append(_to_image(transform, image))
                preprocess_ms.append((time.perf_counter() - t0) * 1000.0)
        except BaseException:
            self._scheduler.cancel(admission)
            raise
        ticket = self._scheduler.submit(admission, tensors, deadline=deadline, cancelled=cancelled)
        return Pending(tuple(images), tuple(transforms), tuple(preprocess_ms), ticket)

    def finish(self, pending: Pending, options: DecodeOptions) -> BatchResult:
        """Waits for the pending images' batch (if it is still running), then decodes them with `options`.

        Each prediction's queue_ms adds the time spent waiting for a batch to the image's own queue_ms. The
        engine reported is the one that ran the first image (a swap may fall between two batches).

        Raises:
            DeadlineExceededError, UnavailableError, EngineFailedError: the batch did not run (see `Ticket`).
        """
        items = pending.ticket.result()
        manifest = self.model.manifest
        predictions = []
        for image, item, transform, prep_ms in zip(
            pending.images, items, pending.transforms, pending.preprocess_ms, strict=True
        ):
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

    def infer(
        self,
        images: Sequence[InputImage],
        options: DecodeOptions,
        *,
        origin: Origin = Origin.UNARY,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> BatchResult:
        """`start` then `finish` in this thread: blocks until the images are predicted."""
        return self.finish(self.start(images, origin=origin, deadline=deadline, cancelled=cancelled), options)

    def warmup(self) -> None:
        """Runs a blank image through the whole path on every engine instance, so the first request on any
        of them pays no lazy initialisation."""
        for engine in self._instances:
            warm_up(self.model, engine)

    def swap_engine(self, engine: Engine, *, warm: bool = True) -> bool:
        """Makes `engine` serve every later batch; batches already running finish on the old one. The new
        engine is warmed up first (outside any lock), so the first request on it pays no lazy initialisation.

        Returns:
            False when the predictor was closed meanwhile: the caller still owns `engine` and must close it.

        Raises:
            EngineError: the new engine's inputs or outputs differ from the old one's, or its warm-up fails;
                the old engine keeps serving.
        """
        self._slot.check_compatible(engine)
        if warm:
            warm_up(self.model, engine)
        swapped = self._slot.swap(engine)
        if swapped:
            self._instances = (engine,)
        return swapped

    def close(self) -> None:
        """Fails images still queued, then closes the engine once no batch runs on it. Idempotent."""
        self._scheduler.close()
        self._slot.close()


def warm_up(model: ResolvedModel, engine: Engine) -> None:
    """One blank image through preprocess -> this engine -> decode, outside the scheduler: an engine is warmed
    before it serves (at load, and before a swap), when no request may reach it yet."""
    manifest = model.manifest
    blank = np.zeros((manifest.input_height, manifest.input_width, 3), dtype=np.uint8)
    tensor, transform = preprocess(blank, ChannelOrder.BGR, manifest)
    outputs = engine.infer({engine.inputs[0].name: stack_batch([tensor])})
    decode_batch(manifest, outputs, [transform], resolve_options(InferOptions(), manifest))


def decode_size(manifest: ModelManifest, width: int, height: int) -> ImageSize | None:
    """How small the pixels of a `width` x `height` image may be decoded for this model: at least what its
    preprocessing resizes the image to (letterbox: the fitted size; stretch: the input size; centre-crop: the
    resized size before the crop), so the preprocessing still only shrinks. A bound, rounded up: the exact
    geometry is the preprocessing's, and the predictions are mapped back through its transform.

    None where predictions from reduced pixels would not map back simply and exactly: segmentation masks
    (run-length encoded on the image's own pixel grid) and classifiers (whose scores depend on how the image
    was shrunk, and which were not measured that way). Decode those at full size.
    """
    if manifest.decoder not in _REDUCIBLE or width < 1 or height < 1:
        return None
    in_w, in_h = manifest.input_width, manifest.input_height
    if manifest.resize is ResizeMode.STRETCH:
        return ImageSize(in_w, in_h)
    if manifest.resize is ResizeMode.CENTRE_CROP:
        ratio = max(in_w / width, in_h / height) / manifest.crop_fraction
    else:
        ratio = min(in_w / width, in_h / height)
    return ImageSize(math.ceil(width * ratio), math.ceil(height * ratio))


# Decoders whose results are boxes and keypoints, which the composed transform maps back exactly.
_REDUCIBLE = frozenset({Decoder.YOLOV5, Decoder.YOLOV8, Decoder.YOLOV8_POSE, Decoder.CENTERFACE})


def _to_image(transform: Transform, image: InputImage) -> Transform:
    """The preprocessing's transform of the pixels, composed with their scale: it maps to the image itself."""
    if image.scale == 1.0 and image.size is None:
        return transform
    return dataclasses.replace(
        transform,
        scale_x=transform.scale_x * image.scale,
        scale_y=transform.scale_y * image.scale,
        original=image.image_size,
    )


def _prediction(image: InputImage, decoded: Decoded, timings: Timings) -> Prediction:
    return Prediction(
        image_size=image.image_size,
        detections=decoded.detections,
        classifications=decoded.classifications,
        timings=timings,
    )
