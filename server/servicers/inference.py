"""visionrpc.v1.InferenceService: unary Infer and server-streaming StreamPredictions, on asyncio.

No call holds a thread while it waits. Infer decodes and preprocesses in the worker pool, awaits its batch
(the model's scheduler runs the engine), and decodes the outputs in the worker pool again; on an idle engine
the batch runs inline in the first worker call, and decoding follows there too. A stream subscriber is an
awaited queue. Calls that may block for long on something other than CPU (a model load, joining a pipeline)
run in the event loop's default executor, so they never occupy the CPU workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
import grpc.aio
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

from .. import metrics
from ..budget import PixelBudget, Reservation
from ..config import ServerConfig
from ..declared.supervisor import Supervisor
from ..domain import ImageSize, InferOptions
from ..errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from ..imaging import read_image_header
from ..manifest import ModelManifest
from ..models.manager import ModelLease, ModelManager
from ..models.repository import ModelId
from ..predictor import InputImage, Pending, decode_size
from ..processing import DecodeOptions
from ..scheduler import Origin
from ..shared_memory import SharedMemoryRegistry
from ..streams.manager import STOPPED_REASON, StreamManager, StreamRequest
from ..streams.pipeline import SHUTDOWN_REASON
from ..streams.source_policy import SourcePolicy, resolve_source
from ..streams.subscription import Subscription
from ..streams.types import Delivery, ResumeGap, ResumeOutcome, ResumePoint, SourceSpec, StreamEnd
from ..tracing import record_pipeline
from .convert import decode_request_image, infer_options_from_proto, infer_response, request_pixels
from .infer_stream import InferStreamHandler
from .status import map_errors, map_stream_errors
from .stream_convert import (
    ResponseCache,
    content_from_proto,
    delivery_from_proto,
    resume_point_from_proto,
    resumed_status_to_proto,
    stream_options_from_proto,
)

__all__ = ["InferenceServicer"]

logger = logging.getLogger(__name__)

_MAX_SOURCES = 16
Context = grpc.aio.ServicerContext[Any, Any]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(
        self,
        models: ModelManager,
        streams: StreamManager,
        config: ServerConfig,
        workers: Executor,
        shared_memory: SharedMemoryRegistry | None = None,
        pipelines: Supervisor | None = None,
    ) -> None:
        """`workers`: the bounded pool for requests' CPU work (decode, preprocess, NMS). `shared_memory`:
        the registry that images in shared memory are read from (None: such images are refused).
        `pipelines`: the declared pipelines that StreamPredictions(pipeline=NAME) joins (None: none)."""
        self._pipelines = pipelines
        self._models = models
        self._shared_memory = shared_memory
        self._streams = streams
        self._config = config
        self._workers = workers
        self._source_policy = SourcePolicy.from_config(config)
        self._responses = ResponseCache()
        self._pixels = PixelBudget(
            max_request_pixels=config.max_request_pixels, max_inflight_pixels=config.max_inflight_pixels
        )
        self._pushed = InferStreamHandler(models, config, workers, self._pixels, shared_memory)

    @map_errors
    async def Infer(  # noqa: N802 - the generated base class fixes the name
        self, request: inference_pb2.InferRequest, context: Context
    ) -> inference_pb2.InferResponse:
        # Cheap checks first, then decoding, and only then the model: bad input never triggers a model load.
        model_id = ModelId.parse(request.model_id or self._config.default_model)
        options = infer_options_from_proto(request.options)
        count = len(request.images)
        if not 1 <= count <= self._config.max_images_per_request:
            raise InvalidArgumentError.for_field(
                "images",
                f"expected 1 to {self._config.max_images_per_request} images, got {count}",
                reason="INVALID_IMAGE_COUNT",
            )
        # Pixel budgets (issue 11), from the images' headers before anything is decoded; held until the call
        # ends, however it ends.
        pixels = request_pixels(request.images, max_pixels=self._config.max_image_pixels)
        context.add_done_callback(_release_when_done(self._pixels.reserve(pixels)))
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # Set when the call goes away: the scheduler drops its images still queued for a batch.
        cancelled = threading.Event()
        reply = _Reply(asyncio.get_running_loop())
        self._in_a_worker(reply, self._begin, request, model_id, options, deadline, cancelled, reply)
        try:
            return await reply.answer
        except asyncio.CancelledError:
            cancelled.set()  # the workers still holding the call release its model lease themselves
            raise

    def _begin(
        self,
        request: inference_pb2.InferRequest,
        model_id: ModelId,
        options: InferOptions,
        deadline: float | None,
        cancelled: threading.Event,
        reply: _Reply,
    ) -> None:
        """Worker thread: decode, lease the model, preprocess and submit. On an idle engine the batch ran
        inline and its outputs are decoded here too; otherwise the thread that completes the batch hands the
        decoding to a worker. Either way the event loop hears of the call once, with its response."""
        started = (time.time_ns(), time.perf_counter())
        # The model's input size, to decode large JPEGs only as large as it needs; read without loading it.
        manifest = self._models.manifest(model_id)
        images = [self._decode(image, index, manifest) for index, image in enumerate(request.images)]
        lease = self._models.lease(model_id)
        try:
            predictor = lease.predictor
            decode_options = predictor.resolve_options(options)
            if deadline is not None and deadline <= time.monotonic():
                raise DeadlineExceededError(
                    "the deadline passed before inference started", reason="DEADLINE_PASSED"
                )
            pending = predictor.start(images, origin=Origin.UNARY, deadline=deadline, cancelled=cancelled)
        except BaseException:
            lease.release()
            raise
        finish = functools.partial(self._finish, lease, pending, decode_options, reply, started)
        if pending.ticket.finished:
            finish()
        else:
            pending.ticket.add_done_callback(functools.partial(self._in_a_worker, reply, finish))

    def _decode(self, image: types_pb2.Image, index: int, manifest: ModelManifest | None) -> InputImage:
        """`images[index]` as the model's input. A JPEG at least twice as large as what the model's
        preprocessing resizes it to is decoded at 1/2, 1/4 or 1/8 of its size (`decode_size`); the predictor
        maps the predictions back to the image's own size. Other images, and models whose predictions would
        not map back exactly, get the image as it is."""
        max_pixels = self._config.max_image_pixels
        needed = _reduced_size(image, manifest)
        decoded = decode_request_image(
            image, index, max_pixels=max_pixels, shared_memory=self._shared_memory, min_size=needed
        )
        if needed is not None and manifest is not None:
            # The header's size is the stored one; an EXIF orientation that transposes the image (5-8) may
            # leave the reduced pixels short of what a non-square input needs: decode those in full. (Pixels
            # decoded in full are all there is: a small image is enlarged by the preprocessing as before.)
            displayed = decode_size(manifest, decoded.size.width, decoded.size.height)
            if decoded.scale < 1.0 and displayed is not None and not _covers(decoded.pixel_size, displayed):
                logger.debug("images[%d]: reduced JPEG short of %s, decoding it in full", index, displayed)
                first_ms = decoded.decode_ms
                decoded = decode_request_image(image, index, max_pixels=max_pixels)
                decoded = dataclasses.replace(decoded, decode_ms=first_ms + decoded.decode_ms)
        return InputImage(
            decoded.pixels, decoded.order, decode_ms=decoded.decode_ms, size=decoded.size, scale=decoded.scale
        )

    def _finish(
        self,
        lease: ModelLease,
        pending: Pending,
        options: DecodeOptions,
        reply: _Reply,
        started: tuple[int, float],
    ) -> None:
        """Worker thread: decodes a finished batch's outputs and answers the call; releases the lease.
        `started`: when decoding began, (time.time_ns(), time.perf_counter()), for tracing and metrics."""
        try:
            outcome = lease.predictor.finish(pending, options)
            if metrics.ON:
                metrics.INFER_DURATION.labels(lease.predictor.key, outcome.engine.engine).observe(
                    time.perf_counter() - started[1]
                )
            record_pipeline(started[0], outcome.predictions)
            # The engine reported is the one that ran the images, not the current one: a background build
            # may swap engines meanwhile.
            reply.succeed(
                infer_response(
                    lease.predictor.name, lease.predictor.version, outcome.engine, outcome.predictions
                )
            )
        finally:
            lease.release()

    def _in_a_worker(self, reply: _Reply, step: Callable[..., None], *args: Any) -> None:
        """Runs one step of a call in the worker pool; whatever it raises becomes the call's outcome."""

        def run() -> None:
            try:
                step(*args)
            except BaseException as exc:  # handed to the call, which maps it to a status
                reply.fail(exc)

        try:
            # The call's context (its request id, its trace span) goes with each step into the worker.
            self._workers.submit(reply.context.copy().run, run)
        except RuntimeError as exc:  # the pool shut down: the server is stopping
            reply.fail(UnavailableError(f"the server is stopping: {exc}", reason="SHUTTING_DOWN"))

    @map_stream_errors
    async def StreamPredictions(  # noqa: N802
        self, request: inference_pb2.StreamPredictionsRequest, context: Context
    ) -> AsyncIterator[inference_pb2.StreamPredictionsResponse]:
        content = content_from_proto(request)
        subscription = await self._open(request)
        try:
            if subscription.gap is not None:
                yield resumed_status_to_proto(subscription.gap, subscription.stream_id, subscription.model)
            while True:
                message = await subscription.next()
                if isinstance(message, StreamEnd):
                    _raise_for_end(message, subscription.stream_id)
                    return
                response = self._responses.content_response(
                    message, subscription.stream_id, subscription.model, content
                )
                if response is not None:  # None: an events-only subscriber and a frame without events
                    yield response
        finally:
            # Cancellation and deadlines arrive here as CancelledError: the subscription is freed at once.
            subscription.close()

    def InferStream(  # noqa: N802
        self, request_iterator: AsyncIterator[inference_pb2.InferStreamRequest], context: Context
    ) -> AsyncIterator[inference_pb2.InferStreamResponse]:
        """Frames pushed by the client: see infer_stream.py."""
        return self._pushed.serve(request_iterator, context)

    async def _open(self, request: inference_pb2.StreamPredictionsRequest) -> Subscription:
        """Opens the subscription in the default executor (it may load a model or wait on a pipeline); a
        subscription opened for a call that was cancelled meanwhile is closed, never leaked."""
        delivery = delivery_from_proto(request.stream_options)
        resume = resume_point_from_proto(request)
        opener: Callable[[], Subscription]
        if request.pipeline:
            opener = functools.partial(self._join_pipeline, request.pipeline, delivery, resume)
        elif request.stream_id and resume is None:
            opener = functools.partial(self._streams.join, request.stream_id, delivery)
        elif resume is None:
            opener = functools.partial(self._streams.subscribe, self._stream_request(request), delivery)
        else:
            opener = functools.partial(self._streams.resume, self._stream_request(request), resume, delivery)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, opener)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_close_subscription_of)
            raise

    def _join_pipeline(self, name: str, delivery: Delivery, resume: ResumePoint | None) -> Subscription:
        """A declared pipeline's running stream (NOT_FOUND: no such pipeline; FAILED_PRECONDITION
        PIPELINE_NOT_RUNNING: not running now). A resumer continues on the stream it watched if it still runs
        here, else on the pipeline's present stream (RESTARTED)."""
        if self._pipelines is None:
            raise NotFoundError(
                f"no pipeline named {name!r} is declared on this server", reason="PIPELINE_NOT_FOUND"
            )
        if resume is not None:
            try:
                return self._streams.join(resume.stream_id, delivery, resume_after=resume.after_cursor)
            except NotFoundError:
                subscription = self._pipelines.subscribe(name, delivery)
                subscription.gap = ResumeGap(ResumeOutcome.RESTARTED, resume.stream_id)
                return subscription
        return self._pipelines.subscribe(name, delivery)

    def _stream_request(self, request: inference_pb2.StreamPredictionsRequest) -> StreamRequest:
        model_id = ModelId.parse(request.model_id or self._config.default_model)
        options = infer_options_from_proto(request.options)
        stream_options = stream_options_from_proto(request.stream_options)
        count = len(request.sources)
        if not 1 <= count <= _MAX_SOURCES and not (count == 0 and request.HasField("resume")):
            raise InvalidArgumentError.for_field(
                "sources", f"expected 1 to {_MAX_SOURCES} sources, got {count}", reason="INVALID_SOURCE_COUNT"
            )
        sources = tuple(self._source(index, source) for index, source in enumerate(request.sources))
        return StreamRequest(sources, model_id, options, stream_options)

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


def _raise_for_end(end: StreamEnd, stream_id: str) -> None:
    """A stream's end as the call's status: OK (its files ended, or its declared pipeline was stopped),
    retryable UNAVAILABLE (the server is draining: resume elsewhere), or FAILED_PRECONDITION (a source
    failed)."""
    if end.error == STOPPED_REASON:
        return
    if end.error == SHUTDOWN_REASON:
        raise UnavailableError(
            f"stream {stream_id[:8]} ended: {end.error}; resume it on another server",
            reason="SHUTTING_DOWN",
            metadata={"stream_id": stream_id},
        )
    if end.error:
        raise FailedPreconditionError(
            f"stream {stream_id[:8]} failed: {end.error}",
            reason="SOURCE_ERROR",
            metadata={"stream_id": stream_id},
        )


def _reduced_size(image: types_pb2.Image, manifest: ModelManifest | None) -> ImageSize | None:
    """The smallest pixels an encoded JPEG may be decoded to for this model, from its header; None: decode
    as usual (not a JPEG, a bad header that decoding reports, no manifest, a model that needs full size)."""
    if manifest is None or image.WhichOneof("source") != "encoded":
        return None
    try:
        header = read_image_header(image.encoded)
    except InvalidArgumentError:
        return None
    if header.format != "JPEG":
        return None
    return decode_size(manifest, header.width, header.height)


def _covers(size: ImageSize, needed: ImageSize) -> bool:
    return size.width >= needed.width and size.height >= needed.height


def _release_when_done(reservation: Reservation) -> Any:  # grpc-stubs type the callback as a class
    return lambda _context: reservation.release()


class _Reply:
    """A unary call's outcome, set from any thread and awaited on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.context = contextvars.copy_context()
        self.answer: asyncio.Future[inference_pb2.InferResponse] = loop.create_future()

    def succeed(self, response: inference_pb2.InferResponse) -> None:
        self._post(response, None)

    def fail(self, error: BaseException) -> None:
        self._post(None, error)

    def _post(self, response: inference_pb2.InferResponse | None, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nobody waits
            self._loop.call_soon_threadsafe(self._settle, response, error)

    def _settle(self, response: inference_pb2.InferResponse | None, error: BaseException | None) -> None:
        if self.answer.done():  # the call went away meanwhile
            return
        if error is not None:
            self.answer.set_exception(error)
        elif response is not None:
            self.answer.set_result(response)


def _close_subscription_of(job: asyncio.Future[Subscription]) -> None:
    if not job.cancelled() and job.exception() is None:
        job.result().close()
