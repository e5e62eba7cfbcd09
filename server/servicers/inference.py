"""visionrpc.v1.InferenceService: unary Infer and server-streaming StreamPredictions."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import grpc
from visionrpc.v1 import inference_pb2, inference_pb2_grpc

from ..config import ServerConfig
from ..errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError, UnavailableError
from ..models.manager import ModelManager
from ..models.repository import ModelId
from ..predictor import InputImage
from ..scheduler import Origin
from ..streams.manager import StreamManager
from ..streams.pipeline import SHUTDOWN_REASON, Subscription
from ..streams.sources import SourcePolicy, resolve_source
from ..streams.types import Delivery, SourceSpec, StreamEnd
from .convert import decode_request_image, infer_options_from_proto, infer_response
from .status import map_errors, map_stream_errors
from .stream_convert import delivery_from_proto, stream_message_to_proto, stream_options_from_proto

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)

_MAX_SOURCES = 16
# How often a waiting stream wakes up to notice the end of the RPC when no message arrives; cancellation
# itself arrives through context.add_callback and closes the subscription, which wakes the wait sooner.
_STREAM_POLL_S = 0.5


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, models: ModelManager, streams: StreamManager, config: ServerConfig) -> None:
        self._models = models
        self._streams = streams
        self._config = config
        self._source_policy = SourcePolicy.from_config(config)

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
        # A cancelled or expired call drops its images still queued for a batch (add_callback also fires on
        # normal completion, when nothing is queued any more).
        gone = threading.Event()
        context.add_callback(gone.set)
        with self._models.acquire(model_id) as predictor:
            decode_options = predictor.resolve_options(options)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceededError(
                    "the deadline passed before inference started", reason="DEADLINE_PASSED"
                )
            deadline = None if remaining is None else time.monotonic() + remaining
            # Through the model's batch scheduler, shared with other calls and with stream frames. The engine
            # reported is the one that ran the images, not the current one: a background build may swap
            # engines meanwhile.
            result = predictor.submit(
                images, decode_options, origin=Origin.UNARY, deadline=deadline, cancelled=gone
            )
            return infer_response(predictor.name, predictor.version, result.engine, result.predictions)

    @map_stream_errors
    def StreamPredictions(  # noqa: N802
        self, request: inference_pb2.StreamPredictionsRequest, context: grpc.ServicerContext
    ) -> Iterator[inference_pb2.StreamPredictionsResponse]:
        delivery = delivery_from_proto(request.stream_options)
        if request.stream_id:
            subscription = self._streams.join(request.stream_id, delivery)
        else:
            subscription = self._subscribe(request, delivery)
        # Cancellation and deadlines end the subscription at once through the callback, not by polling.
        finished = threading.Event()

        def on_rpc_done() -> None:
            finished.set()
            subscription.close()

        context.add_callback(on_rpc_done)
        name, _, version = subscription.model_id.partition("/")
        try:
            while not finished.is_set():
                message = subscription.get(timeout_s=_STREAM_POLL_S)
                if message is None:
                    continue
                if isinstance(message, StreamEnd):
                    if message.error == SHUTDOWN_REASON:  # retryable: another replica can serve the stream
                        raise UnavailableError(
                            f"stream {subscription.stream_id} ended: {message.error}",
                            reason="SHUTTING_DOWN",
                            metadata={"stream_id": subscription.stream_id},
                        )
                    if message.error:
                        raise FailedPreconditionError(
                            f"stream {subscription.stream_id} failed: {message.error}",
                            reason="SOURCE_ERROR",
                            metadata={"stream_id": subscription.stream_id},
                        )
                    return
                yield stream_message_to_proto(message, subscription.stream_id, name, version)
        finally:
            subscription.close()

    def _subscribe(self, request: inference_pb2.StreamPredictionsRequest, delivery: Delivery) -> Subscription:
        model_id = str(ModelId.parse(request.model_id or self._config.default_model))
        options = infer_options_from_proto(request.options)
        stream_options = stream_options_from_proto(request.stream_options)
        count = len(request.sources)
        if not 1 <= count <= _MAX_SOURCES:
            raise InvalidArgumentError.for_field(
                "sources", f"expected 1 to {_MAX_SOURCES} sources, got {count}", reason="INVALID_SOURCE_COUNT"
            )
        specs = [self._source(index, source) for index, source in enumerate(request.sources)]
        # Resolving the model first gives NOT_FOUND / bad class names before any source is opened.
        with self._models.acquire(model_id) as predictor:
            decode_options = predictor.resolve_options(options)
            resolved_id = f"{predictor.name}/{predictor.version}"
        return self._streams.subscribe(specs, resolved_id, decode_options, stream_options, delivery)

    def _source(self, index: int, source: inference_pb2.VideoSource) -> SourceSpec:
        kind = source.WhichOneof("source")
        if kind is None:
            raise InvalidArgumentError.for_field(
                f"sources[{index}]", "expected one of path, url or device to be set", reason="EMPTY_SOURCE"
            )
        return resolve_source(
            index,
            path=source.path if kind == "path" else None,
            url=source.url if kind == "url" else None,
            device=source.device if kind == "device" else None,
            policy=self._source_policy,
        )
