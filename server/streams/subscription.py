"""A subscriber's side of a stream pipeline: a bounded queue of StreamMessages, lossy or every-frame.

The pipeline's inference thread offers each message once to every Subscription (`offer`); the consumer takes
them with `await next()` on the server's event loop (no thread waits), or `get()` from a thread. Nothing here
ever blocks the pipeline except an EVERY_FRAME subscription, which the pipeline allows only as its single
subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Iterable

from .. import metrics
from ..models.repository import ModelId
from .types import Delivery, FrameResult, ResumeGap, StreamEnd, StreamMessage

__all__ = ["Subscription"]


class Subscription:
    """One subscriber's view of a pipeline: a bounded queue of StreamMessages.

    LOSSY: when `capacity` results are waiting, the oldest waiting result is dropped and counted; the count
    so far is stamped on each result as it is taken. EVERY_FRAME: `offer` waits for room instead.
    Status messages and the end are never dropped. Once the end was taken, or after close(), every later
    take returns a StreamEnd at once, so a consumer loop can never hang on a finished subscription.
    """

    def __init__(
        self,
        stream_id: str,
        model: ModelId,
        delivery: Delivery,
        capacity: int,
        *,
        on_close: Callable[[Subscription], None] | None = None,
        gap: ResumeGap | None = None,
    ) -> None:
        """
        Args:
            stream_id, model: the stream's id and its resolved model (name and version), for the envelope.
            on_close: called once (outside any lock) when the subscription closes: its pipeline forgets it.
            gap: set on a resumed subscription: how it continued (the servicer reports it first).
        """
        self.stream_id = stream_id
        self.model = model
        self.delivery = delivery
        self.gap = gap
        self._capacity = capacity
        self._cond = threading.Condition()
        self._queue: deque[StreamMessage] = deque()
        self._results = 0  # FrameResults in the queue
        self._dropped = 0
        self._closed = False
        self._end: StreamEnd | None = None  # once taken, returned by every later take
        self._on_close: list[Callable[[Subscription], None]] = [on_close] if on_close else []
        # The consumer waiting in next(): its loop and future, woken from the pipeline's thread.
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def results_dropped(self) -> int:
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    async def next(self) -> StreamMessage:
        """The next message, awaited on the event loop without holding a thread."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                message = self._take()
                if message is not None:
                    return message
                waiter = loop.create_future()
                self._waiter = (loop, waiter)
            try:
                await waiter
            finally:
                with self._cond:
                    self._waiter = None

    def get(self, timeout_s: float | None = None) -> StreamMessage | None:
        """The next message, waited for in this thread; None when none came within `timeout_s`."""
        with self._cond:
            message = self._take()
            if message is None and self._cond.wait_for(self._ready, timeout_s):
                message = self._take()
            return message

    def close(self) -> None:
        """Leaves the pipeline (idempotent); the pipeline stops after its linger when nobody is left."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._results = 0
            callbacks, self._on_close = self._on_close, []
            self._notify()
        for callback in callbacks:
            callback(self)

    def add_close_callback(self, callback: Callable[[Subscription], None]) -> None:
        """Calls `callback(self)` once when the subscription closes (at once if it already has)."""
        with self._cond:
            if not self._closed:
                self._on_close.append(callback)
                return
        callback(self)

    # -- the pipeline's side -----------------------------------------------------------------------------

    def offer(self, message: StreamMessage, stopping: Callable[[], bool]) -> None:
        """Queues a message (pipeline thread). EVERY_FRAME: waits for room while neither this subscription
        nor the pipeline (`stopping`) closes; `wake()` makes the wait re-check `stopping`."""
        with self._cond:
            if self._closed:
                return
            if isinstance(message, FrameResult):
                if self.delivery is Delivery.EVERY_FRAME:
                    while self._results >= self._capacity and not self._closed and not stopping():
                        self._cond.wait()
                    if self._closed or stopping():
                        return
                elif self._results >= self._capacity:
                    self._drop_oldest_result()
                self._results += 1
            self._queue.append(message)
            self._notify()

    def replay(self, messages: Iterable[StreamMessage]) -> None:
        """Queues messages a resumed subscriber missed, before anything else, whatever the capacity: they are
        few (the pipeline's replay ring) and each one was lost once already."""
        with self._cond:
            for message in messages:
                self._results += isinstance(message, FrameResult)
                self._queue.append(message)
            self._notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- internals (lock held) ---------------------------------------------------------------------------

    def _ready(self) -> bool:
        return bool(self._queue) or self._closed or self._end is not None

    def _take(self) -> StreamMessage | None:
        if self._queue:
            message = self._queue.popleft()
            if isinstance(message, FrameResult):
                self._results -= 1
                self._cond.notify_all()  # room for a pipeline waiting on an every-frame subscriber
                if self._dropped:
                    message = dataclasses.replace(message, results_dropped=self._dropped)
            elif isinstance(message, StreamEnd):
                self._end = message
            return message
        if self._end is not None:
            return self._end
        if self._closed:
            return StreamEnd()
        return None

    def _notify(self) -> None:
        self._cond.notify_all()
        if self._waiter is not None:
            loop, waiter = self._waiter
            self._waiter = None
            # RuntimeError: the loop closed (server stopped), so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake_future, waiter)

    def _drop_oldest_result(self) -> None:
        for position, item in enumerate(self._queue):
            if isinstance(item, FrameResult):
                del self._queue[position]
                self._results -= 1
                self._dropped += 1
                metrics.STREAM_RESULTS_DROPPED.inc()
                return


def _wake_future(future: asyncio.Future[None]) -> None:
    if not future.done():  # the consumer may have been cancelled meanwhile
        future.set_result(None)
