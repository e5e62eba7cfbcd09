"""The stream manager: one pipeline per distinct request, shared by every identical one; limits; shutdown.

Sharing: LOSSY subscribers of the same sources, model version, decode options and stream options join one
running pipeline (`PipelineKey`), so decoding and inference happen once however many watch. An EVERY_FRAME
subscriber needs a pipeline to itself from its first frame, so it always starts a private pipeline (reachable
by stream id, never by key), and a LOSSY request whose shared pipeline became private starts a new one.

The stream manager is the only way into streams: it takes the model's lease once per request (loading the
model if needed), checks the options against it, and hands the lease to a new pipeline or releases it when
the request joins a running one. Resuming (docs/stream-resume.md): a known stream id continues on its
pipeline with the replay ring; an unknown one starts the stream again from the request, file sources at the
client's next sequence numbers, and says so in the subscription's gap.

Locking: the manager's lock guards only its maps and counters. Models are resolved (and loaded) before it is
taken, and pipelines start their threads in Pipeline.subscribe, called after it is released; pipelines
report that they stopped (`on_stopped`) without holding their own lock, so the two locks never nest the
other way round. Every call may block (model loads, pipeline joins): call it from a worker thread, never
from the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..analytics.validation import validate_analytics
from ..config import ServerConfig
from ..domain import InferOptions
from ..errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError, UnavailableError
from ..models.manager import ModelLease, ModelManager
from ..models.repository import ModelId
from ..processing import DecodeOptions
from .pipeline import Pipeline, PipelineStoppedError, new_stream_id
from .reading import ReaderFactory, source_reader
from .redaction import check_face_model, redactor_for
from .subscription import Subscription
from .types import (
    Delivery,
    ReconnectPolicy,
    ResumeGap,
    ResumeOutcome,
    ResumePoint,
    SourceKind,
    SourceSpec,
    StreamOptions,
)

__all__ = ["STOPPED_REASON", "PipelineKey", "StreamManager", "StreamRequest"]

logger = logging.getLogger(__name__)

# A pipeline that stops between being found and being joined is replaced; more than a few in a row is a bug.
_JOIN_ATTEMPTS = 3
_CLOSE_TIMEOUT_S = 10.0
# The end a stopped declared pipeline's subscribers receive: a normal end for them, not a failure.
STOPPED_REASON = "the pipeline was stopped"


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """What a subscriber asks for: validated sources, a model, and its options (the servicer builds it)."""

    sources: tuple[SourceSpec, ...]
    model_id: ModelId
    options: InferOptions = dataclasses.field(default_factory=InferOptions)
    stream_options: StreamOptions = dataclasses.field(default_factory=StreamOptions)


@dataclass(frozen=True, slots=True)
class PipelineKey:
    """What makes two requests the same pipeline. `model` is resolved ("name/version"), so "name" and
    "name/<newest>" share, and a new version published later starts a new pipeline."""

    sources: tuple[tuple[SourceKind, str, int], ...]  # kind, location, first frame
    model: ModelId  # resolved: name and version
    decode_options: DecodeOptions
    options: StreamOptions


class StreamManager:
    """Starts, shares, limits and stops the server's stream pipelines. Thread-safe.

    Example:
        streams = StreamManager(models, config)
        subscription = streams.subscribe(StreamRequest((spec,), ModelId("yolov3-tiny-coco")))
        message = subscription.get(timeout_s=1.0)
    """

    def __init__(
        self, models: ModelManager, config: ServerConfig, *, reader_factory: ReaderFactory = source_reader
    ) -> None:
        self._models = models
        self._config = config
        self._reader_factory = reader_factory
        self._reconnect = ReconnectPolicy(
            initial_backoff_s=config.reconnect_initial_backoff_s,
            max_backoff_s=config.reconnect_max_backoff_s,
            open_timeout_s=config.source_open_timeout_s,
            read_timeout_s=config.source_read_timeout_s,
        )
        # A lingering pipeline frees its slot within the linger, so that is when a retry can succeed.
        self._retry_after_s = max(1.0, config.pipeline_linger_s)
        self._lock = threading.Lock()
        self._by_id: dict[str, Pipeline] = {}
        self._keys: dict[str, PipelineKey] = {}
        self._shared: dict[PipelineKey, Pipeline] = {}
        self._ended: dict[str, Pipeline] = {}  # stopped pipelines a resumer may still find, oldest first
        self._subscribers = 0  # open subscriptions, finished pipelines' included until they close
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return self._subscribers

    def pipelines(self) -> list[Pipeline]:
        """The pipelines not yet stopped (running or lingering), for tests and metrics."""
        with self._lock:
            return list(self._by_id.values())

    def subscribe(self, request: StreamRequest, delivery: Delivery = Delivery.LOSSY) -> Subscription:
        """Joins the running pipeline of an identical request, or starts one.

        Raises:
            InvalidArgumentError: no sources; EVERY_FRAME delivery with a live source; bad options.
            NotFoundError / FailedPreconditionError: unknown model, or it failed to load.
            ResourceExhaustedError: reasons TOO_MANY_PIPELINES, TOO_MANY_SUBSCRIBERS (with retry_after_s).
            UnavailableError: the manager is closed (server shutting down).
        """
        if not request.sources:
            raise InvalidArgumentError.for_field("sources", "expected at least one source")
        if delivery is Delivery.EVERY_FRAME and any(spec.live for spec in request.sources):
            raise InvalidArgumentError.for_field(
                "stream_options.delivery",
                "every-frame delivery needs file sources; live sources run in real time",
                reason="EVERY_FRAME_DELIVERY_UNAVAILABLE",
            )
        key, lease = self._key_and_lease(request)
        return self._subscribe(key, request.sources, lease, delivery)

    def start_private(self, request: StreamRequest, *, keep_pixels: bool = False) -> Subscription:
        """Starts a pipeline of its own for `request` (a declared pipeline): never shared with identical
        requests, joinable by its stream id, stopped by `stop` or when its subscribers are gone. Returns its
        first (lossy) subscription, whose holder keeps it running.

        Args:
            keep_pixels: results carry the frame's pixels (FrameResult.pixels), for a sink that draws them.

        Raises:
            as `subscribe`.
        """
        if not request.sources:
            raise InvalidArgumentError.for_field("sources", "expected at least one source")
        key, lease = self._key_and_lease(request)
        return self._subscribe(
            key, request.sources, lease, Delivery.LOSSY, private=True, keep_pixels=keep_pixels
        )

    def stop(self, stream_id: str, reason: str = STOPPED_REASON) -> None:
        """Stops a running pipeline now, whoever watches it: its subscribers receive StreamEnd(error=reason).
        Does nothing when no pipeline runs under `stream_id`."""
        with self._lock:
            pipeline = self._by_id.get(stream_id)
        if pipeline is not None:
            pipeline.close(reason, timeout_s=0)

    def pipeline_stats(self, stream_id: str) -> tuple[int, int] | None:
        """(frames inferred, subscribers) of the pipeline running under `stream_id`; None when none runs."""
        with self._lock:
            pipeline = self._by_id.get(stream_id)
        if pipeline is None:
            return None
        return pipeline.frames_inferred, pipeline.subscriber_count

    def resume(self, request: StreamRequest, point: ResumePoint, delivery: Delivery) -> Subscription:
        """Continues a broken subscription: on its pipeline when it still runs here (replayed from the ring),
        else by starting the request again (file sources at `point.next_sequence_numbers`). Either way the
        subscription's `gap` says how it continued.

        Raises:
            NotFoundError: STREAM_NOT_FOUND: the stream is not running here and the request names no sources.
            as `subscribe` otherwise.
        """
        replayed = self._join_running(point.stream_id, delivery, resume_after=point.after_cursor)
        if replayed is not None:
            return replayed
        if not request.sources:
            raise _stream_not_found()
        positions = point.next_sequence_numbers
        restarted = dataclasses.replace(
            request,
            sources=tuple(
                dataclasses.replace(spec, start_frame=positions[spec.index])
                if spec.kind is SourceKind.FILE and spec.index < len(positions)
                else spec
                for spec in request.sources
            ),
        )
        subscription = self.subscribe(restarted, delivery)
        subscription.gap = ResumeGap(ResumeOutcome.RESTARTED, point.stream_id)
        return subscription

    def join(
        self, stream_id: str, delivery: Delivery = Delivery.LOSSY, *, resume_after: int | None = None
    ) -> Subscription:
        """Joins a running pipeline by its stream id; the first message is its STARTED status (once known),
        or with `resume_after` (a resumer's last cursor) what the replay ring holds after it (see `gap`).

        Raises:
            NotFoundError: reason STREAM_NOT_FOUND (unknown, or stopped).
            InvalidArgumentError: reason EVERY_FRAME_DELIVERY_UNAVAILABLE.
            ResourceExhaustedError: reason TOO_MANY_SUBSCRIBERS.
        """
        subscription = self._join_running(stream_id, delivery, resume_after=resume_after)
        if subscription is None:
            raise _stream_not_found()
        return subscription

    def close(self) -> None:
        """Stops every pipeline (server shutdown): subscribers receive an error end. Idempotent."""
        with self._lock:
            self._closed = True
            pipelines = list(self._by_id.values())
            self._by_id.clear()
            self._keys.clear()
            self._shared.clear()
            self._ended.clear()
        # Signal all first, then wait: the pipelines stop in parallel, not one after the other.
        for pipeline in pipelines:
            pipeline.close(timeout_s=0)
        for pipeline in pipelines:
            if not pipeline.join(_CLOSE_TIMEOUT_S):
                logger.warning(
                    "stream %s did not stop within %.0f s", pipeline.stream_id[:8], _CLOSE_TIMEOUT_S
                )

    # -- internals ---------------------------------------------------------------------------------------

    def _key_and_lease(self, request: StreamRequest) -> tuple[PipelineKey, ModelLease]:
        """The request's pipeline key, and the model's one lease for this request: handed to a new pipeline,
        released when joining one."""
        lease = self._models.lease(request.model_id)
        try:
            # Class filters are checked against this model's classes: the servicer does not know them.
            validate_analytics(
                request.stream_options.analytics, lease.predictor.model.manifest.class_names,
                "stream_options.analytics", sources=len(request.sources),
            )  # fmt: skip
            key = PipelineKey(
                sources=tuple((spec.kind, spec.location, spec.start_frame) for spec in request.sources),
                model=ModelId(lease.predictor.name, lease.predictor.version),
                decode_options=lease.predictor.resolve_options(request.options),
                options=request.stream_options,
            )
            check_face_model(self._models, request.stream_options.face_redaction)
        except BaseException:
            lease.release()
            raise
        return key, lease

    def _join_running(
        self, stream_id: str, delivery: Delivery, *, resume_after: int | None = None
    ) -> Subscription | None:
        """Subscribes to the pipeline running under `stream_id`; None when there is none (or it stopped). A
        resumer may also meet a stream that ended while it was away: it gets the rest and the end."""
        with self._lock:
            self._check_open()
            pipeline = self._by_id.get(stream_id)
            ended = self._ended.get(stream_id) if pipeline is None and resume_after is not None else None
            if pipeline is None and ended is None:
                return None
            self._reserve_subscriber()
        if ended is not None and resume_after is not None:
            finished = ended.resume_ended(delivery, resume_after)
            if finished is None:
                self._release_subscriber()
                return None
            finished.add_close_callback(lambda _: self._release_subscriber())
            return finished
        assert pipeline is not None
        try:
            return self._attach(pipeline, delivery, resume_after=resume_after)
        except PipelineStoppedError:
            self._forget(pipeline)
            return self._join_running(stream_id, delivery, resume_after=resume_after)

    def _subscribe(
        self,
        key: PipelineKey,
        sources: Sequence[SourceSpec],
        lease: ModelLease,
        delivery: Delivery,
        *,
        private: bool = False,
        keep_pixels: bool = False,
    ) -> Subscription:
        """Joins the shared pipeline of `key` or creates one (always a new one when `private`); owns `lease`
        (gives it to a new pipeline)."""
        owned: ModelLease | None = lease
        try:
            for _ in range(_JOIN_ATTEMPTS):
                with self._lock:
                    self._check_open()
                    self._reserve_subscriber()
                    shared = delivery is Delivery.LOSSY and not private
                    pipeline = self._shared.get(key) if shared else None
                    created = pipeline is None or pipeline.exclusive
                    if created:
                        try:
                            pipeline = self._create(
                                key, sources, lease, shared=shared, keep_pixels=keep_pixels
                            )
                        except ResourceExhaustedError:
                            self._subscribers -= 1
                            raise
                        owned = None  # the pipeline owns it now
                assert pipeline is not None
                try:
                    return self._attach(pipeline, delivery)
                except PipelineStoppedError:
                    self._forget(pipeline)
                    if created:  # stopped before its first subscriber: only a shutdown does that
                        raise UnavailableError(
                            "the server is shutting down", reason="SHUTTING_DOWN"
                        ) from None
                except InvalidArgumentError:
                    if created:
                        pipeline.close(timeout_s=0)
                        raise
                    # An every-frame subscriber took the shared pipeline between our look and our join.
            raise UnavailableError("stream pipelines keep stopping while being joined; try again")
        finally:
            if owned is not None:  # joined a running pipeline (or failed): it holds a lease of its own
                owned.release()

    def _check_open(self) -> None:
        """Caller holds the lock."""
        if self._closed:
            raise UnavailableError("the server is shutting down", reason="SHUTTING_DOWN")

    def _reserve_subscriber(self) -> None:
        """Caller holds the lock. Counted before joining so concurrent requests cannot overshoot the limit."""
        limit = self._config.max_subscribers
        if self._subscribers >= limit:
            raise ResourceExhaustedError(
                f"too many stream subscribers (limit {limit})",
                reason="TOO_MANY_SUBSCRIBERS",
                retry_after_s=self._retry_after_s,
                metadata={"limit": str(limit)},
            )
        self._subscribers += 1

    def _release_subscriber(self) -> None:
        with self._lock:
            self._subscribers -= 1

    def _create(
        self,
        key: PipelineKey,
        sources: Sequence[SourceSpec],
        lease: ModelLease,
        *,
        shared: bool,
        keep_pixels: bool = False,
    ) -> Pipeline:
        """Caller holds the lock. Builds the pipeline object only; its first subscriber starts its threads."""
        limit = self._config.max_pipelines
        if len(self._by_id) >= limit:
            raise ResourceExhaustedError(
                f"too many stream pipelines (limit {limit})",
                reason="TOO_MANY_PIPELINES",
                retry_after_s=self._retry_after_s,
                metadata={"limit": str(limit)},
            )
        pipeline = Pipeline(
            sources,
            lease,
            key.decode_options,
            key.options,
            stream_id=new_stream_id(),
            subscriber_queue=self._config.subscriber_queue,
            replay_messages=self._config.stream_replay_messages,
            linger_s=self._config.pipeline_linger_s,
            reconnect=self._reconnect,
            reader_factory=self._reader_factory,
            on_stopped=self._forget,
            keep_pixels=keep_pixels,
            redactor=redactor_for(self._models, key.options.face_redaction),  # released with the pipeline
        )
        self._by_id[pipeline.stream_id] = pipeline
        self._keys[pipeline.stream_id] = key
        if shared:
            # Replaces a shared pipeline that an every-frame subscriber made private, if any.
            self._shared[key] = pipeline
        return pipeline

    def _attach(
        self, pipeline: Pipeline, delivery: Delivery, *, resume_after: int | None = None
    ) -> Subscription:
        """Subscribes to the pipeline with a subscriber slot already reserved; releases it on failure."""
        try:
            subscription = pipeline.subscribe(delivery, resume_after=resume_after)
        except BaseException:
            self._release_subscriber()
            raise
        subscription.add_close_callback(lambda _: self._release_subscriber())
        if delivery is Delivery.EVERY_FRAME:
            with self._lock:  # joined by id: it is private from now on
                key = self._keys.get(pipeline.stream_id)
                if key is not None and self._shared.get(key) is pipeline:
                    del self._shared[key]
        return subscription

    def _forget(self, pipeline: Pipeline) -> None:
        with self._lock:
            if self._by_id.get(pipeline.stream_id) is pipeline:
                del self._by_id[pipeline.stream_id]
                key = self._keys.pop(pipeline.stream_id)
                if self._shared.get(key) is pipeline:
                    del self._shared[key]
                # A stream that ended stays resumable for its linger: a subscriber cut just before the end
                # (messages still on the wire) gets them from the ring, not a restarted stream. Bounded:
                # older entries go first, and each ended pipeline holds only its ring.
                if pipeline.finished and not self._closed:
                    self._ended[pipeline.stream_id] = pipeline
                    while len(self._ended) > self._config.max_pipelines:
                        del self._ended[next(iter(self._ended))]


def _stream_not_found() -> NotFoundError:
    # The id is not echoed: it is a capability, and error messages end up in logs.
    return NotFoundError("no running stream has this id", reason="STREAM_NOT_FOUND")
