"""visionrpc.v1.InferenceService/InferStream: frames pushed by the client, answered in order.

The protobuf edge of `streams.pushed`: the first message configures the call (model, options, analytics,
back-pressure), every later one is a frame. Errors of the call itself (no config first, a config twice, an
unknown model, bad options or analytics, a malformed message) end the call with their status; a frame that
cannot be served (an undecodable image, a sequence number that did not increase, a full queue) is answered
with a google.rpc.Status built exactly like Infer's errors and the call goes on.

One reader task per call reads the requests and hands frames to the session; the call's own coroutine writes
the session's answers. With BACKPRESSURE_WAIT the reader stops reading while max_in_flight frames are
unanswered, which is what makes the client's sends wait: gRPC only reads the stream as the server asks.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

import grpc.aio
from visionrpc.v1 import inference_pb2, types_pb2

from ..analytics.analyzer import StreamAnalyzer, validate_analytics
from ..budget import PixelBudget
from ..config import ServerConfig
from ..errors import FieldViolation, InvalidArgumentError, VisionRpcError
from ..models.manager import ModelLease, ModelManager
from ..models.repository import ModelId
from ..predictor import InputImage
from ..shared_memory import SharedMemoryRegistry
from ..streams.pushed import FrameAnswer, PushedFrame, PushSession, SessionSettings
from .convert import decode_request_image, infer_options_from_proto, prediction_to_proto, request_pixels
from .status import map_stream_errors, to_status
from .stream_convert import frame_analytics_to_proto, stream_analytics_from_proto

__all__ = ["InferStreamHandler"]

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Requests = AsyncIterator[inference_pb2.InferStreamRequest]

_BACKPRESSURE = {
    inference_pb2.BACKPRESSURE_UNSPECIFIED: False,
    inference_pb2.BACKPRESSURE_WAIT: False,
    inference_pb2.BACKPRESSURE_DROP: True,
}
_IMAGE_FIELD = "frame.image"


class InferStreamHandler:
    """Serves InferStream calls; InferenceServicer delegates to `serve`."""

    def __init__(
        self,
        models: ModelManager,
        config: ServerConfig,
        workers: Executor,
        pixels: PixelBudget,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        """`workers`: the pool for CPU work; `pixels`: the server's decoded-pixel budget (Infer's too);
        `shared_memory`: where frames in shared memory are read from (None: such frames are refused)."""
        self._shared_memory = shared_memory
        self._models = models
        self._config = config
        self._workers = workers
        self._pixels = pixels

    @map_stream_errors
    async def serve(
        self, requests: Requests, context: Context
    ) -> AsyncIterator[inference_pb2.InferStreamResponse]:
        first = await anext(requests, None)
        if first is None:  # the client closed without sending anything: nothing to answer
            return
        if first.WhichOneof("message") != "config":
            raise InvalidArgumentError.for_field(
                "config", "expected the first message to be a config", reason="CONFIG_EXPECTED"
            )
        config = first.config
        model_id = ModelId.parse(config.model_id or self._config.default_model, field="config.model_id")
        options = infer_options_from_proto(config.options, "config.options")
        analytics = stream_analytics_from_proto(config.analytics, "config.analytics")
        settings = _settings_from_proto(config)
        lease = await self._lease(model_id)
        try:
            decode_options = lease.predictor.resolve_options(options)
            # Class filters are checked against the model's classes, known only now.
            validate_analytics(analytics, lease.predictor.model.manifest.class_names, "config.analytics")
        except BaseException:
            lease.release()
            raise
        analyze = StreamAnalyzer(analytics).analyze if analytics.active else None
        session = PushSession(lease, decode_options, settings, self._workers, self._pixels, analyze)
        name, version = lease.predictor.name, lease.predictor.version
        reader = asyncio.create_task(self._read(requests, session))
        try:
            async for answer in session.answers():
                yield _answer_to_proto(answer, name, version)
        finally:
            # However the call ends (done, failed, cancelled): stop reading, drop queued frames, free the
            # lease.
            reader.cancel()
            session.close()

    async def _lease(self, model_id: ModelId) -> ModelLease:
        """Leases the model in the default executor (a load may take seconds); a lease taken for a call that
        was cancelled meanwhile is released, never leaked."""
        job = asyncio.get_running_loop().run_in_executor(None, self._models.lease, model_id)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_release_lease_of)
            raise

    async def _read(self, requests: Requests, session: PushSession) -> None:
        """The reader task: frames into the session until the client half-closes or the call fails."""
        try:
            while True:
                await session.wait_for_room()
                request = await anext(requests, None)
                if request is None:
                    session.end()
                    return
                kind = request.WhichOneof("message")
                if kind != "frame":
                    what = "a second config" if kind == "config" else "an empty message"
                    raise InvalidArgumentError.for_field(
                        "config" if kind == "config" else "frame",
                        f"expected a frame, got {what}",
                        reason="CONFIG_REPEATED" if kind == "config" else "EMPTY_MESSAGE",
                    )
                self._accept(session, request.frame)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the call ends with it, after the frames before it are answered
            session.fail(exc)

    def _accept(self, session: PushSession, frame: inference_pb2.InputFrame) -> None:
        max_pixels = self._config.max_image_pixels
        try:
            pixels = request_pixels([frame.image], max_pixels=max_pixels)
        except InvalidArgumentError as exc:
            session.refuse(frame.source_index, frame.sequence_number, _as_frame_field(exc))
            return
        session.accept(
            PushedFrame(
                source_index=frame.source_index,
                sequence_number=frame.sequence_number,
                timestamp_ms=frame.timestamp_ms,
                pixels=pixels,
                decode=functools.partial(_decode, frame.image, max_pixels, self._shared_memory),
            )
        )


def _settings_from_proto(config: inference_pb2.InferStreamConfig) -> SessionSettings:
    if config.backpressure not in _BACKPRESSURE:
        raise InvalidArgumentError.for_field(
            "config.backpressure",
            f"expected a known Backpressure value, got {config.backpressure}",
            reason="INVALID_OPTION",
        )
    return SessionSettings.resolve(config.max_in_flight, drop=_BACKPRESSURE[config.backpressure])


def _decode(
    image: types_pb2.Image, max_pixels: int, shared_memory: SharedMemoryRegistry | None
) -> InputImage:
    """Worker thread: Infer's decoding, with errors naming the frame's image field."""
    try:
        decoded = decode_request_image(image, 0, max_pixels=max_pixels, shared_memory=shared_memory)
    except InvalidArgumentError as exc:
        raise _as_frame_field(exc) from None
    return InputImage(decoded.pixels, decoded.order, decode_ms=decoded.decode_ms)


def _as_frame_field(error: VisionRpcError) -> VisionRpcError:
    """Infer's helpers name "images[0]..."; a frame's image is "frame.image..."."""
    clone = copy.copy(error)
    clone.violations = tuple(
        FieldViolation(_IMAGE_FIELD + v.field.removeprefix("images[0]"), v.description)
        for v in error.violations
    )
    return clone


def _answer_to_proto(answer: FrameAnswer, name: str, version: str) -> inference_pb2.InferStreamResponse:
    message = inference_pb2.InferStreamResponse(
        sequence_number=answer.sequence_number,
        source_index=answer.source_index,
        model_name=name,
        model_version=version,
    )
    if answer.prediction is not None:
        message.prediction.CopyFrom(prediction_to_proto(answer.prediction))
    elif answer.error is not None:
        message.error.CopyFrom(to_status(answer.error))
    else:
        message.dropped = answer.dropped
    if answer.analytics is not None:
        message.analytics.CopyFrom(frame_analytics_to_proto(answer.analytics))
    return message


def _release_lease_of(job: asyncio.Future[ModelLease]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().release()
