"""Frames pushed by a client (the InferStream RPC): one session per call, protobuf-free.

    reader (servicer task)                      workers                        answers() (the call's writer)
    wait_for_room()  <- WAIT: while max_in_flight frames are unanswered the reader stops reading, so the
    accept(frame) ---- in order into `_queue` --> decode, start (scheduler)     call's HTTP/2 window fills and
                                                  ... batch ...                 the client's sends wait
                                                  finish (decode + NMS) ------> head of `_queue` done?
    DROP: a frame past max_in_flight is queued already answered `dropped`       analytics (in send order)
    end() / fail(error) -------------------------------------------------------> last answer, then the end

Frames are inferred through the model's batch scheduler as stream work (Origin.STREAM), beside unary calls
and server-side pipelines, exactly like Infer's images: decoded and pre-processed in the worker pool, the
batch awaited without holding a thread, outputs decoded in the pool again. Answers leave in the order the
frames arrived whatever order their batches finish in, so tracking and analytics see each source's frames in
order.

The session owns the model lease from its creation: `close()` (the call ended, however) sets the
cancellation event the scheduler checks, so frames still queued for a batch are dropped before compute, and
releases the lease as soon as no worker holds one of the call's frames.

Observation: `LOAD_OBSERVERS` are called on the event loop with a `SessionLoad` each time a frame is accepted
(tests see the server's side of back-pressure with it); `open_sessions()` counts sessions still holding
their model lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from ..analytics.types import FrameAnalytics
from ..budget import PixelBudget, Reservation
from ..domain import Prediction
from ..errors import InvalidArgumentError, UnavailableError, VisionRpcError
from ..models.manager import ModelLease
from ..predictor import InputImage, Pending
from ..processing import DecodeOptions
from ..scheduler import Origin

__all__ = [
    "DEFAULT_MAX_IN_FLIGHT",
    "LOAD_OBSERVERS",
    "MAX_IN_FLIGHT",
    "FrameAnswer",
    "PushSession",
    "PushedFrame",
    "SessionLoad",
    "SessionSettings",
    "open_sessions",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT = 64
# DROP keeps reading while frames are inferred, but a client that never reads its answers must not grow the
# queue of answers waiting to be written without bound: past this many per in-flight frame, reading waits.
_DROP_QUEUE_FACTOR = 4


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What a call's config asks, resolved: `max_in_flight` in [1, MAX_IN_FLIGHT]."""

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    drop: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"expected max_in_flight in [1, {MAX_IN_FLIGHT}], got {self.max_in_flight}")

    @staticmethod
    def resolve(max_in_flight: int, *, drop: bool) -> SessionSettings:
        """0 means the default; above the limit is capped to it (the contract says "at most")."""
        wanted = max_in_flight or DEFAULT_MAX_IN_FLIGHT
        return SessionSettings(min(wanted, MAX_IN_FLIGHT), drop)


@dataclass(frozen=True, slots=True)
class PushedFrame:
    """One frame as received: its numbering, its pixels' count (from the header) and how to decode it.

    `decode` runs in a worker thread and raises InvalidArgumentError for an undecodable image.
    `timestamp_ms` 0 means "when the server received it".
    """

    source_index: int
    sequence_number: int
    timestamp_ms: float
    pixels: int
    decode: Callable[[], InputImage]


@dataclass(frozen=True, slots=True)
class FrameAnswer:
    """The answer to one frame: exactly one of prediction, dropped or error."""

    source_index: int
    sequence_number: int
    prediction: Prediction | None = None
    dropped: bool = False
    error: VisionRpcError | None = None
    analytics: FrameAnalytics | None = None


@dataclass(frozen=True, slots=True)
class SessionLoad:
    """A session's load as a frame is accepted: `unanswered` frames received and not yet answered (queued
    answers included), `inferring` of them being inferred."""

    unanswered: int
    inferring: int
    settings: SessionSettings


LOAD_OBSERVERS: list[Callable[[SessionLoad], None]] = []

_holding_lock = threading.Lock()
_holding = 0  # sessions whose model lease is not released yet


def open_sessions() -> int:
    """Sessions still holding their model lease: 0 once every call ended and its frames left the workers."""
    with _holding_lock:
        return _holding


def _count_session(delta: int) -> None:
    global _holding
    with _holding_lock:
        _holding += delta


Analyze = Callable[[int, int, float, float, Prediction], tuple[Prediction, FrameAnalytics]]
"""(source_index, sequence_number, timestamp_ms, capture_time, prediction) -> (prediction, analytics)."""


@dataclass(slots=True)
class _Slot:
    """One frame's place in the answer order: settled by a worker (via the loop) or at once."""

    frame: PushedFrame | None
    answer: asyncio.Future[FrameAnswer]
    capture_time: float
    inferring: bool = False


class _End:
    """Queued after the last frame: the call ends there, with `error` or OK."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class PushSession:
    """The frames of one call, inferred and answered in order.

    Use on one event loop: a reader task calls `wait_for_room`, `accept`/`refuse` per frame and finally
    `end` or `fail`; the call's writer iterates `answers()`; `close()` when the call ends (idempotent).
    """

    def __init__(
        self,
        lease: ModelLease,
        options: DecodeOptions,
        settings: SessionSettings,
        workers: Executor,
        pixels: PixelBudget,
        analyze: Analyze | None = None,
    ) -> None:
        self._lease = lease
        self._options = options
        self.settings = settings
        self._workers = workers
        self._pixels = pixels
        self._analyze = analyze
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()  # the call's request id and trace span, into the workers
        self._queue: deque[_Slot | _End] = deque()
        self._inferring = 0
        self._changed = asyncio.Event()  # set whenever the queue shrinks or its head settles
        self._cancelled = threading.Event()
        # Frames in the workers use the lease: it is released when the call has ended and the last is out.
        self._lock = threading.Lock()
        self._working = 0
        self._closed = False
        _count_session(+1)
        self._last_sequence: dict[int, int] = {}
        self._ended = False

    @property
    def unanswered(self) -> int:
        return sum(1 for slot in self._queue if isinstance(slot, _Slot))

    # ------------------------------------------------------------------------------------------- reader

    async def wait_for_room(self) -> None:
        """Returns once another frame may be read: WAIT, fewer than max_in_flight unanswered; DROP, a
        bounded number of answers waiting to be written."""
        limit = self.settings.max_in_flight
        if self.settings.drop:
            limit *= _DROP_QUEUE_FACTOR
        while len(self._queue) >= limit:
            self._changed.clear()
            await self._changed.wait()

    def accept(self, frame: PushedFrame) -> None:
        """Queues a frame's answer and starts inferring it (or answers it dropped/refused at once)."""
        slot = _Slot(frame, self._loop.create_future(), time.time())
        self._queue.append(slot)
        try:
            self._check_sequence(frame.source_index, frame.sequence_number)
            if self.settings.drop and self._inferring >= self.settings.max_in_flight:
                slot.answer.set_result(FrameAnswer(frame.source_index, frame.sequence_number, dropped=True))
            else:
                reservation = self._pixels.reserve(frame.pixels)
                slot.inferring = True
                self._inferring += 1
                with self._lock:
                    self._working += 1
                self._in_a_worker(slot, reservation, self._start, slot, reservation)
        except VisionRpcError as exc:
            slot.answer.set_result(FrameAnswer(frame.source_index, frame.sequence_number, error=exc))
        self._changed.set()
        self._observe()

    def refuse(self, source_index: int, sequence_number: int, error: VisionRpcError) -> None:
        """Queues an error answer for a frame refused before it could be accepted (a bad header); a
        sequence number that did not increase is reported first, as for an accepted frame."""
        try:
            self._check_sequence(source_index, sequence_number)
        except VisionRpcError as exc:
            error = exc
        slot = _Slot(None, self._loop.create_future(), time.time())
        slot.answer.set_result(FrameAnswer(source_index, sequence_number, error=error))
        self._queue.append(slot)
        self._changed.set()
        self._observe()

    def end(self) -> None:
        """The client sent its last frame: answers() ends after answering it."""
        self._finish_with(None)

    def fail(self, error: BaseException) -> None:
        """The call must end with `error` once the frames before it are answered."""
        self._finish_with(error)

    def _finish_with(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._queue.append(_End(error))
            self._changed.set()

    def _check_sequence(self, source_index: int, sequence_number: int) -> None:
        last = self._last_sequence.get(source_index)
        if last is not None and sequence_number <= last:
            raise InvalidArgumentError.for_field(
                "frame.sequence_number",
                f"expected more than {last} (the previous frame of source {source_index}), "
                f"got {sequence_number}",
                reason="SEQUENCE_NOT_INCREASING",
            )
        self._last_sequence[source_index] = sequence_number

    def _observe(self) -> None:
        if LOAD_OBSERVERS:
            load = SessionLoad(self.unanswered, self._inferring, self.settings)
            for observer in list(LOAD_OBSERVERS):
                observer(load)

    # ------------------------------------------------------------------------------------------ workers

    def _start(self, slot: _Slot, reservation: Reservation) -> None:
        """Worker thread: decode, pre-process and submit; on an idle engine the batch ran here already."""
        assert slot.frame is not None
        if self._cancelled.is_set():
            raise UnavailableError("the call ended", reason="CANCELLED")
        image = slot.frame.decode()
        pending = self._lease.predictor.start([image], origin=Origin.STREAM, cancelled=self._cancelled)
        finish = functools.partial(self._finish, slot, reservation, pending)
        if pending.ticket.finished:
            finish()
        else:
            pending.ticket.add_done_callback(functools.partial(self._in_a_worker, slot, reservation, finish))

    def _finish(self, slot: _Slot, reservation: Reservation, pending: Pending) -> None:
        """Worker thread: decodes the batch's outputs for this frame and settles its answer."""
        assert slot.frame is not None
        (prediction,) = self._lease.predictor.finish(pending, self._options).predictions
        reservation.release()
        self._settle(slot, FrameAnswer(slot.frame.source_index, slot.frame.sequence_number, prediction))

    def _in_a_worker(
        self, slot: _Slot, reservation: Reservation, step: Callable[..., None], *args: object
    ) -> None:
        """Runs one step of a frame in the worker pool; a domain error becomes the frame's answer."""
        assert slot.frame is not None
        frame = slot.frame

        def run() -> None:
            try:
                step(*args)
            except VisionRpcError as exc:
                reservation.release()
                self._settle(slot, FrameAnswer(frame.source_index, frame.sequence_number, error=exc))
            except BaseException as exc:  # a bug: the call ends with it (INTERNAL), after the frames before
                reservation.release()
                logger.error("bug inferring a pushed frame", exc_info=exc)
                self._settle(slot, exc)

        try:
            self._workers.submit(self._context.copy().run, run)
        except RuntimeError as exc:  # the pool shut down: the server is stopping
            reservation.release()
            self._settle(slot, UnavailableError(f"the server is stopping: {exc}", reason="SHUTTING_DOWN"))

    def _settle(self, slot: _Slot, outcome: FrameAnswer | BaseException) -> None:
        with self._lock:
            self._working -= 1
            release = self._closed and self._working == 0
        if release:
            self._release_lease()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nobody waits
            self._loop.call_soon_threadsafe(self._settled, slot, outcome)

    def _settled(self, slot: _Slot, outcome: FrameAnswer | BaseException) -> None:
        if slot.answer.done():  # the call went away meanwhile
            return
        if isinstance(outcome, FrameAnswer):
            slot.answer.set_result(outcome)
        else:
            slot.answer.set_exception(outcome)
        self._changed.set()

    # ------------------------------------------------------------------------------------------- writer

    async def answers(self) -> AsyncIterator[FrameAnswer]:
        """Every frame's answer in arrival order; ends after the last one (raising the call's error if it
        failed). Analytics run here, in that order, in the worker pool."""
        while True:
            while not self._queue:
                self._changed.clear()
                await self._changed.wait()
            head = self._queue[0]
            if isinstance(head, _End):
                if head.error is not None:
                    raise head.error
                return
            answer = await head.answer
            if answer.prediction is not None and self._analyze is not None:
                answer = await self._with_analytics(head, answer)
            self._queue.popleft()
            if head.inferring:
                self._inferring -= 1
            self._changed.set()
            yield answer

    async def _with_analytics(self, slot: _Slot, answer: FrameAnswer) -> FrameAnswer:
        assert self._analyze is not None and answer.prediction is not None and slot.frame is not None
        frame = slot.frame
        timestamp_ms = frame.timestamp_ms or slot.capture_time * 1000.0
        step = functools.partial(
            self._analyze,
            frame.source_index,
            frame.sequence_number,
            timestamp_ms,
            slot.capture_time,
            answer.prediction,
        )
        prediction, analytics = await self._loop.run_in_executor(
            self._workers, functools.partial(self._context.copy().run, step)
        )
        return FrameAnswer(answer.source_index, answer.sequence_number, prediction, analytics=analytics)

    def close(self) -> None:
        """The call ended: frames still queued for a batch are dropped, and the model lease is released
        once no worker holds one of this call's frames. Idempotent."""
        self._cancelled.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            release = self._working == 0
        if release:
            self._release_lease()

    def _release_lease(self) -> None:
        self._lease.release()
        _count_session(-1)
