"""One video pipeline: sources decoded once, inferred once, fanned out to every subscriber.

    SourceReader thread per source --Frame/SourceEvent--> SourceBuffer (this source's FrameSink)
    one inference thread: ready frames round-robin over sources -> the model's batch scheduler (shared with
        unary requests and other pipelines) -> FrameResult -> ring -> each Subscription's bounded queue

Decisions (the status semantics are in docs/architecture.md):
- STARTED (one StreamStatus listing every source) goes out once every source has reported; a joiner gets it
  first. A live source still failing its first connection is not waited for; its late start re-sends STARTED.
- A source that ENDS ends only itself (SOURCE_ENDED; StreamEnd once all have ended). A source ERROR ends the
  whole pipeline: the request named all its sources, so a partial pipeline would answer another question.
- While nobody watches (the linger) the inference thread idles: files wait, live sources keep their newest.
- Every published message gets the next cursor and goes into a bounded replay ring first, so a subscriber
  whose call broke resumes after its last cursor with nothing lost, even shortly after the stream ended
  (docs/stream-resume.md). The pipeline holds its model's lease (taken by the stream manager) for life.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence

from .. import metrics
from ..analytics.analyzer import StreamAnalyzer
from ..domain import ChannelOrder, Prediction
from ..errors import InvalidArgumentError, ResourceExhaustedError, VisionRpcError
from ..models.manager import ModelLease
from ..models.repository import ModelId
from ..predictor import InputImage, Predictor
from ..processing import DecodeOptions
from ..scheduler import Origin
from .buffers import Gate, SourceBuffer
from .frame_images import frame_jpeg
from .reading import Reader, ReaderFactory, source_reader
from .redaction import Redactor
from .replay import ReplayRing
from .subscription import Subscription
from .types import (
    Delivery,
    Frame,
    FrameImage,
    FrameResult,
    ReconnectPolicy,
    ResumeGap,
    SourceEvent,
    SourceEventKind,
    SourceInfo,
    SourceSpec,
    StreamEnd,
    StreamMessage,
    StreamOptions,
    StreamStatus,
)

__all__ = ["MAX_BATCH", "SHUTDOWN_REASON", "Pipeline", "PipelineStoppedError", "new_stream_id"]

logger = logging.getLogger(__name__)

MAX_BATCH = 8  # frames of different sources submitted together (the scheduler may split or merge them)
# Frames queued per every-frame source: enough for decoding to overlap inference, few enough that a source
# holds only a few decoded frames in memory.
FRAME_BUFFER = 4
SHUTDOWN_REASON = "the stream was closed: the server is shutting down"


def new_stream_id() -> str:
    """Unguessable: knowing a stream id is what lets a client join (and watch) someone's stream."""
    return secrets.token_urlsafe(16)


class PipelineStoppedError(Exception):
    """The pipeline stopped or is stopping and takes no more subscribers."""


class Pipeline:
    """(sources, model, decode options, stream options) decoded and inferred once for all its subscribers.

    Example:
        pipeline = Pipeline([spec], models.lease(model_id), decode_options, StreamOptions())
        subscription = pipeline.subscribe()        # the first subscriber starts readers and inference
        while not isinstance(message := subscription.get(timeout_s=1.0), StreamEnd): ...
        subscription.close()                       # the last one out stops it after linger_s
    """

    def __init__(
        self,
        sources: Sequence[SourceSpec],
        lease: ModelLease,
        decode_options: DecodeOptions,
        options: StreamOptions,
        *,
        stream_id: str | None = None,
        subscriber_queue: int = 32,
        replay_messages: int = 64,
        linger_s: float = 2.0,
        reconnect: ReconnectPolicy | None = None,
        reader_factory: ReaderFactory = source_reader,
        on_stopped: Callable[[Pipeline], None] | None = None,
        max_batch: int = MAX_BATCH,
        keep_pixels: bool = False,
        redactor: Redactor | None = None,
    ) -> None:
        """Takes ownership of `lease`: released when the pipeline stops (or at close() if it never ran).
        `keep_pixels`: FrameResult.pixels carries each frame, for in-process consumers (a video sink).
        `redactor` (owned too, released with the lease) hides faces in every frame's pixels that leave."""
        if not sources:
            raise ValueError("expected at least one source")
        if [spec.index for spec in sources] != list(range(len(sources))):
            raise ValueError(f"expected source indexes 0..{len(sources) - 1} in order")
        self.sources = tuple(sources)
        self._lease = lease
        self.model = ModelId(lease.predictor.name, lease.predictor.version)
        self.model_key = lease.predictor.key  # "name/version", for logs
        self.decode_options = decode_options
        self.options = options
        self.stream_id = stream_id or new_stream_id()
        self._tag = self.stream_id[:8]  # logs and thread names show a prefix: the whole id lets anyone join
        self._subscriber_queue = subscriber_queue
        self._linger_s = linger_s
        self._reconnect = reconnect or ReconnectPolicy()
        self._reader_factory = reader_factory
        self._on_stopped = on_stopped
        self._max_batch = max_batch
        self._keep_pixels = keep_pixels
        self._redactor = redactor
        self._shows_pixels = keep_pixels or options.frame_image is not FrameImage.NONE
        self._policies = tuple(options.frame_policy.resolve(spec) for spec in self.sources)
        self._gate = Gate()
        self._buffers = tuple(SourceBuffer(self._gate, p, FRAME_BUFFER) for p in self._policies)
        # Everything below is guarded by the gate's lock.
        self._subs: list[Subscription] = []
        self._readers: list[Reader] = []
        self._thread: threading.Thread | None = None
        self._launched = False
        self._finished = False
        self._close_reason: str | None = None
        self._idle_since: float | None = None
        self._next_source = 0
        self._frames_inferred = 0
        self._infos: list[SourceInfo | None] = [None] * len(self.sources)
        self._reported = [False] * len(self.sources)  # STARTED, RECONNECTING or ENDED seen
        self._ended = [False] * len(self.sources)
        self._started_status: StreamStatus | None = None
        self._cursor = 0  # the last cursor handed out
        self._end: StreamEnd | None = None  # how it ended, once it has
        self._ended_at: float | None = None
        self._ring = ReplayRing(replay_messages)

    # -- observation -------------------------------------------------------------------------------------

    @property
    def frames_decoded(self) -> int:
        with self._gate.lock:
            readers = list(self._readers)
        return sum(reader.frames_read for reader in readers)

    @property
    def frames_inferred(self) -> int:
        with self._gate.lock:
            return self._frames_inferred

    @property
    def subscriber_count(self) -> int:
        with self._gate.lock:
            return len(self._subs)

    @property
    def running(self) -> bool:
        """Started by a first subscriber and not stopped yet (lingering counts as running)."""
        with self._gate.lock:
            return self._launched and not self._finished

    @property
    def finished(self) -> bool:
        with self._gate.lock:
            return self._finished

    @property
    def exclusive(self) -> bool:
        """An every-frame subscriber holds the pipeline: nobody else may join while it is there."""
        with self._gate.lock:
            return any(sub.delivery is Delivery.EVERY_FRAME for sub in self._subs)

    @property
    def threads(self) -> tuple[threading.Thread, ...]:
        """The inference thread, while alive; the reader threads belong to `readers`."""
        with self._gate.lock:
            thread = self._thread
        return (thread,) if thread is not None and thread.is_alive() else ()

    @property
    def readers(self) -> tuple[Reader, ...]:
        with self._gate.lock:
            return tuple(self._readers)

    def frames_skipped(self, source_index: int) -> int:
        """Frames skipped on a source so far: replaced in the newest-frame buffer, or skipped for max_fps."""
        with self._gate.lock:
            skipped = self._buffers[source_index].skipped
            reader = self._readers[source_index] if source_index < len(self._readers) else None
        return skipped + (reader.frames_skipped if reader is not None else 0)

    # -- subscribers -------------------------------------------------------------------------------------

    def subscribe(
        self, delivery: Delivery = Delivery.LOSSY, *, resume_after: int | None = None
    ) -> Subscription:
        """Adds a subscriber; the first one starts the pipeline.

        Args:
            resume_after: a resumed subscriber's last cursor: it receives the messages after it that the
                replay ring still holds (its `gap` says whether any were lost) instead of the STARTED status.

        Raises:
            InvalidArgumentError (reason EVERY_FRAME_DELIVERY_UNAVAILABLE): EVERY_FRAME delivery with a live
                source or another subscriber present, or any subscriber while an EVERY_FRAME one is there.
            PipelineStoppedError: the pipeline has stopped or is stopping.
        """
        if delivery is Delivery.EVERY_FRAME and any(spec.live for spec in self.sources):
            raise _every_frame_unavailable(
                "every-frame delivery needs file sources; live sources run in real time"
            )
        with self._gate.lock:
            if self._finished or self._gate.stopping:
                raise PipelineStoppedError(self.stream_id)
            if self._subs and (
                delivery is Delivery.EVERY_FRAME
                or any(s.delivery is Delivery.EVERY_FRAME for s in self._subs)
            ):
                raise _every_frame_unavailable(
                    "every-frame delivery needs the stream to itself: it has another subscriber"
                )
            gap: ResumeGap | None = None
            if resume_after is None:
                backlog: list[StreamMessage] = [] if self._started_status is None else [self._started_status]
            else:
                backlog, gap = self._ring.after(resume_after, self._cursor, self.stream_id)
            subscription = Subscription(
                self.stream_id,
                self.model,
                delivery,
                self._subscriber_queue,
                on_close=self._unsubscribe,
                gap=gap,
            )
            subscription.replay(backlog)
            self._subs.append(subscription)
            self._idle_since = None
            self._gate.work.notify()
            if not self._launched:
                self._launched = True
                # Started under the lock so close() never sees a thread that is set but not yet started.
                self._thread = threading.Thread(
                    target=self._run, name=f"visionrpc-stream-{self._tag}", daemon=True
                )
                self._thread.start()
        return subscription

    def resume_ended(self, delivery: Delivery, resume_after: int) -> Subscription | None:
        """A resumed subscriber of a stream that ended normally while it was away: what the ring holds after
        its cursor, then the end. None unless the pipeline ended normally within its linger."""
        with self._gate.lock:
            ended = self._ended_at is not None and time.monotonic() - self._ended_at <= self._linger_s
            if not ended or self._end is None or self._end.error:
                return None
            backlog, gap = self._ring.after(resume_after, self._cursor, self.stream_id)
            end = self._end
        subscription = Subscription(self.stream_id, self.model, delivery, self._subscriber_queue, gap=gap)
        subscription.replay([*backlog, end])
        return subscription

    def _is_stopping(self) -> bool:
        return self._gate.stopping  # a plain flag read; it only ever goes from False to True

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._gate.lock:
            if subscription in self._subs:
                self._subs.remove(subscription)
            if not self._subs and not self._finished:
                self._idle_since = time.monotonic()
                self._gate.work.notify()

    # -- stopping ----------------------------------------------------------------------------------------

    def close(self, reason: str = SHUTDOWN_REASON, timeout_s: float = 10.0) -> None:
        """Stops now (server shutdown): subscribers receive StreamEnd(error=reason). Idempotent."""
        with self._gate.lock:
            if self._close_reason is None:
                self._close_reason = reason
            self._gate.stopping = True
            thread = self._thread
            subs = list(self._subs)
            self._gate.work.notify_all()
            self._gate.room.notify_all()
        for subscription in subs:
            subscription.wake()  # an every-frame offer waiting for room re-checks `stopping`
        if thread is None:
            self._finish(None)  # never started: nothing runs, nobody to tell but the owner
        elif timeout_s > 0:
            self.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> bool:
        """Waits until the pipeline has stopped and released everything; True if it has."""
        with self._gate.lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            return not thread.is_alive()
        return self.finished

    # -- the inference thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        end: StreamEnd | None = None
        try:
            for spec, buffer, policy in zip(self.sources, self._buffers, self._policies, strict=True):
                reader = self._reader_factory(spec, buffer, policy, self.options.max_fps, self._reconnect)
                with self._gate.lock:
                    self._readers.append(reader)
                reader.start()
            # The lease keeps the model loaded (never evicted under us) for the life of the pipeline.
            logger.info("stream %s: %d source(s) on %s", self._tag, len(self.sources), self.model_key)
            # One analyzer per run: tracks and counts start afresh with the pipeline.
            analyzer = StreamAnalyzer(self.options.analytics) if self.options.analytics.active else None
            end = self._loop(self._lease.predictor, analyzer)
        except VisionRpcError as exc:
            logger.warning("stream %s failed: %s", self._tag, exc.message)
            end = StreamEnd(error=exc.message)
        except Exception as exc:  # a bug must end this stream visibly, never leave its subscribers waiting
            logger.exception("stream %s failed", self._tag)
            end = StreamEnd(error=f"internal error: {exc}")
        finally:
            self._finish(end)

    def _finish(self, end: StreamEnd | None) -> None:
        with self._gate.lock:
            if self._finished:
                return
            self._finished = True
            self._gate.stopping = True
            if end is None and self._close_reason is not None:
                end = StreamEnd(error=self._close_reason)
            self._end, self._ended_at = end, time.monotonic()
            subs = list(self._subs)
            readers = list(self._readers)
            self._gate.work.notify_all()
            self._gate.room.notify_all()
        if end is not None:
            for subscription in subs:
                subscription.offer(end, self._is_stopping)
        # After the end went out: a reader stuck in a network read may take up to its read timeout. All are
        # told first, then awaited, so many sources stop in parallel.
        for reader in readers:
            reader.stop(timeout_s=0)
        for reader in readers:
            reader.stop()
        logger.info(
            "stream %s stopped: %d frames decoded, %d inferred%s",
            self._tag, self.frames_decoded, self.frames_inferred,
            f" ({end.error})" if end is not None and end.error else "",
        )  # fmt: skip
        self._lease.release()
        if self._redactor is not None:
            self._redactor.release()
        if self._on_stopped is not None:
            self._on_stopped(self)

    def _loop(self, predictor: Predictor, analyzer: StreamAnalyzer | None) -> StreamEnd | None:
        while True:
            work = self._next_work()
            if work is None:
                return None
            events, frames = work
            for event in events:
                end = self._on_event(event)
                if end is not None:
                    return end
            if frames:
                self._infer(predictor, frames, analyzer)

    def _next_work(self) -> tuple[list[SourceEvent], list[Frame]] | None:
        """Waits for events or frames (None: stop). Takes at most one frame per source, round-robin."""
        gate = self._gate
        with gate.lock:
            while True:
                if gate.stopping:
                    return None
                timeout: float | None = None
                if not self._subs and self._idle_since is not None:
                    timeout = self._idle_since + self._linger_s - time.monotonic()
                    if timeout <= 0:
                        logger.info(
                            "stream %s: no subscriber for %.1f s, stopping",
                            self._tag,
                            self._linger_s,
                        )
                        gate.stopping = True
                        gate.room.notify_all()
                        return None
                # Frames wait for the STARTED status (it must precede them) and for someone to watch.
                frames_ok = self._started_status is not None and bool(self._subs)
                events: list[SourceEvent] = []
                frames: list[Frame] = []
                count = len(self._buffers)
                for step in range(count):
                    buffer = self._buffers[(self._next_source + step) % count]
                    taken_events, frame = buffer.take(frames_ok and len(frames) < self._max_batch)
                    events.extend(taken_events)
                    if frame is not None:
                        frames.append(frame)
                if events or frames:
                    self._next_source = (self._next_source + 1) % count
                    return events, frames
                gate.work.wait(timeout)

    def _on_event(self, event: SourceEvent) -> StreamEnd | None:
        index, kind = event.source_index, event.kind
        if kind is SourceEventKind.ERROR:
            logger.warning("stream %s: source %d failed: %s", self._tag, index, event.reason)
            self._publish(StreamStatus(kind, index, reason=event.reason))
            return StreamEnd(error=f"source {index}: {event.reason}")
        announce: StreamStatus | None = None
        with self._gate.lock:
            if event.info is not None:
                self._infos[index] = event.info
            self._reported[index] = True
            self._ended[index] |= kind is SourceEventKind.ENDED
            infos = tuple(info for info in self._infos if info is not None)
            all_ended = all(self._ended)
            if self._started_status is None:
                # The first STARTED waits for every source's first word, so it normally lists them all;
                # a source still connecting is not waited for (a dead camera must not hold up the others).
                if all(self._reported) and infos:
                    announce = StreamStatus(SourceEventKind.STARTED, 0, sources=infos)
            elif kind is SourceEventKind.STARTED:  # a source that connected late: STARTED again, all known
                announce = StreamStatus(SourceEventKind.STARTED, index, sources=infos)
            elif kind is SourceEventKind.RECONNECTED:  # joiners learn the new size from their STARTED
                self._started_status = dataclasses.replace(self._started_status, sources=infos)
        if announce is not None:
            self._publish(announce, started=True)
        if kind is SourceEventKind.RECONNECTING:
            self._publish(StreamStatus(kind, index, attempt=event.attempt, reason=event.reason))
        elif kind is SourceEventKind.RECONNECTED:
            self._publish(StreamStatus(kind, index, sources=infos, reason=event.reason))
        elif kind is SourceEventKind.ENDED:
            self._publish(StreamStatus(kind, index, reason=event.reason))
            if all_ended:
                return StreamEnd()
        return None

    def _infer(self, predictor: Predictor, frames: list[Frame], analyzer: StreamAnalyzer | None) -> None:
        now = time.time()
        images = [
            InputImage(frame.pixels, ChannelOrder.BGR, queue_ms=max(0.0, (now - frame.capture_time) * 1000.0))
            for frame in frames
        ]
        predictions = self._submit(predictor, images)
        if predictions is None:  # stopping
            return
        with self._gate.lock:
            self._frames_inferred += len(frames)
        if metrics.ON:
            metrics.STREAM_FRAMES.labels("inferred").inc(len(frames))
        # The frames' final pixels, what JPEGs and in-process consumers show: faces hidden once per frame
        # however many subscribers, and only when some pixels leave (docs/privacy.md).
        shown = [frame.pixels for frame in frames]
        if self._redactor is not None and self._shows_pixels:
            shown = self._redactor.redact(shown)
        # Frames come in order per source (one thread, at most one frame per source in a batch): the order
        # the tracker needs.
        for frame, prediction, pixels in zip(frames, predictions, shown, strict=True):
            analytics = None
            if analyzer is not None:
                prediction, analytics = analyzer.analyze(
                    frame.source_index, frame.sequence_number, frame.timestamp_ms, frame.capture_time,
                    prediction,
                )  # fmt: skip
            self._publish(
                FrameResult(
                    source_index=frame.source_index,
                    sequence_number=frame.sequence_number,
                    timestamp_ms=frame.timestamp_ms,
                    capture_time=frame.capture_time,
                    prediction=prediction,
                    frames_skipped=self.frames_skipped(frame.source_index),
                    results_dropped=0,  # per subscriber: stamped as each one takes it
                    # Encoded once per frame however many subscribers receive it.
                    frame_jpeg=frame_jpeg(pixels, prediction, self.options),
                    analytics=analytics,
                    pixels=pixels if self._keep_pixels else None,
                )
            )

    def _submit(self, predictor: Predictor, images: list[InputImage]) -> list[Prediction] | None:
        """Through the model's batch scheduler; a full queue is waited out (None: the pipeline stops)."""
        while True:
            try:
                return predictor.infer(images, self.decode_options, origin=Origin.STREAM).predictions
            except ResourceExhaustedError as exc:
                with self._gate.lock:
                    if not self._gate.stopping:
                        self._gate.work.wait(exc.retry_after_s)
                    if self._gate.stopping:
                        return None

    def _publish(self, message: FrameResult | StreamStatus, *, started: bool = False) -> None:
        with self._gate.lock:
            # Numbering, recording and taking the subscriber list in one step: a subscriber either is in this
            # list or joins later and finds the message in the ring (or the recorded STARTED); never both.
            self._cursor += 1
            message = dataclasses.replace(message, cursor=self._cursor)
            self._ring.append(message)
            if started:
                assert isinstance(message, StreamStatus)
                self._started_status = message
            subs = tuple(self._subs)
        for subscription in subs:
            subscription.offer(message, self._is_stopping)  # blocks only for an every-frame subscriber


def _every_frame_unavailable(message: str) -> InvalidArgumentError:
    return InvalidArgumentError.for_field(
        "stream_options.delivery", message, reason="EVERY_FRAME_DELIVERY_UNAVAILABLE"
    )
