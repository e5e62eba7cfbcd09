"""visionrpc.v1.InferenceService: unary Infer now, StreamPredictions when the streaming pipelines land."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
from visionrpc.v1 import inference_pb2, inference_pb2_grpc

from ..config import ServerConfig
from ..errors import DeadlineExceededError, InvalidArgumentError
from ..models.manager import ModelManager
from ..models.repository import ModelId
from ..predictor import InputImage
from .convert import decode_request_image, infer_options_from_proto, infer_response
from .status import map_errors

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, models: ModelManager, config: ServerConfig) -> None:
        self._models = models
        self._config = config

    @map_errors
    def Infer(  # noqa: N802 - the generated base class fixes the name
        self, request: inference_pb2.InferRequest, context: grpc.ServicerContext
    ) -> inference_pb2.InferResponse:
        # Cheap checks first, then decoding, and only then the model: bad input never triggers a model load.
        model_id = str(ModelId.parse(request.model_id or self._config.default_model))
        options = infer_options_from_proto(request.options)
        count = len(request.images)
        if not 1 <= count <= self._config.max_images_per_request:
            raise InvalidArgumentError.for_field(
                "images",
                f"expected 1 to {self._config.max_images_per_request} images, got {count}",
                reason="INVALID_IMAGE_COUNT",
            )
        images = []
        for index, image in enumerate(request.images):
            decoded = decode_request_image(image, index, max_pixels=self._config.max_image_pixels)
            images.append(InputImage(decoded.pixels, decoded.order, decode_ms=decoded.decode_ms))
        with self._models.acquire(model_id) as predictor:
            decode_options = predictor.resolve_options(options)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(
                    "the deadline passed before inference started", reason="DEADLINE_PASSED"
                )
            predictions = predictor.predict(images, decode_options)
            return infer_response(predictor.name, predictor.version, predictor.engine_info, predictions)

    def StreamPredictions(  # noqa: N802
        self, request: inference_pb2.StreamPredictionsRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.StreamPredictionsResponse]:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "StreamPredictions is not implemented yet in this release"
        )
        yield from ()  # unreachable: abort raises; this makes the method a generator like the real one
