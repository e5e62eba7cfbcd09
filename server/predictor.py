"""One loaded model: preprocess -> engine -> decode, in-process, with no gRPC anywhere.

This is the whole inference path; the servicers only translate messages around it, and the benchmark runs
it directly as the in-process baseline the server is held to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from visionrpc.engines import Engine, EngineInfo

from .domain import ChannelOrder, ImageArray, ImageSize, InferOptions, Prediction, Timings
from .models.repository import ResolvedModel
from .processing import DecodeOptions, decode_batch, preprocess, resolve_options, stack_batch

__all__ = ["InputImage", "Predictor"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputImage:
    """Decoded pixels ready for a model, with what decoding them cost."""

    pixels: ImageArray
    order: ChannelOrder
    decode_ms: float = 0.0
    queue_ms: float = 0.0


class Predictor:
    """Runs one model version on batches of decoded images. Thread-safe (the engine serialises itself)."""

    def __init__(self, model: ResolvedModel, engine: Engine) -> None:
        self.model = model
        self.engine = engine
        self._input_name = engine.inputs[0].name

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def engine_info(self) -> EngineInfo:
        return self.engine.info

    def resolve_options(self, options: InferOptions) -> DecodeOptions:
        """Checks request options against this model (class names exist, ...); raises InvalidArgumentError."""
        return resolve_options(options, self.model.manifest)

    def predict(self, images: Sequence[InputImage], options: DecodeOptions) -> list[Prediction]:
        """Runs the images as one batch and returns one Prediction per image, in order."""
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
        outputs = self.engine.infer({self._input_name: batch})
        t_decode = time.perf_counter()
        decoded = decode_batch(manifest, outputs, transforms, options)
        t_end = time.perf_counter()
        inference_ms = (t_decode - t_infer) * 1000.0
        postprocess_ms = (t_end - t_decode) * 1000.0
        logger.debug("%s: batch of %d in %.1f ms", self.model.key, len(images), (t_end - start) * 1000.0)
        return [
            Prediction(
                image_size=ImageSize(width=image.pixels.shape[1], height=image.pixels.shape[0]),
                detections=result.detections,
                classifications=result.classifications,
                timings=Timings(
                    decode_ms=image.decode_ms,
                    queue_ms=image.queue_ms,
                    preprocess_ms=prep_ms,
                    inference_ms=inference_ms,
                    postprocess_ms=postprocess_ms,
                ),
            )
            for image, result, prep_ms in zip(images, decoded, preprocess_ms, strict=True)
        ]

    def warmup(self) -> None:
        """Runs a blank image through the whole path so the first request pays no lazy initialisation."""
        manifest = self.model.manifest
        blank = np.zeros((manifest.input_height, manifest.input_width, 3), dtype=np.uint8)
        self.predict([InputImage(blank, ChannelOrder.BGR)], self.resolve_options(InferOptions()))

    def close(self) -> None:
        self.engine.close()
