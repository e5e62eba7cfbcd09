"""A subscriber's side of a stream pipeline: a bounded queue of StreamMessages, lossy or every-frame.

The pipeline's inference thread offers each message once to every Subscription; the consumer (the servicer's
generator) takes them with get(). Nothing here ever blocks the pipeline except an EVERY_FRAME subscription,
which the pipeline allows only as its single subscriber.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .types import Delivery, FrameResult, StreamEnd, StreamMessage

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["Subscription"]


class Subscription:
    """One subscriber's view of a pipeline: a bounded queue of StreamMessages.

    LOSSY: when `capacity` results are waiting, the oldest waiting result is dropped and counted; the count
    so far is stamped on each result as it is taken. EVERY_FRAME: the pipeline waits for room instead.
    Status messages and the end are never dropped.
    """

    def __init__(self, pipeline: Pipeline, delivery: Delivery, capacity: int) -> None:
        self._pipeline = pipeline
        self.delivery = delivery
        self._capacity = capacity
        self._cond = threading.Condition()
        self._queue: deque[StreamMessage] = deque()
        self._results = 0  # FrameResults in the queue
        self._dropped = 0
        self._closed = False
        self._end: StreamEnd | None = None  # once taken, returned by every later get()
        self._close_callbacks: list[Callable[[], None]] = []

    @property
    def stream_id(self) -> str:
        return self._pipeline.stream_id

    @property
    def model_id(self) -> str:
        """The pipeline's model id ("name/version" when the stream manager made the pipeline)."""
        return self._pipeline.model_id

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @property
    def results_dropped(self) -> int:
        with self._cond:
            return self._dropped

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def get(self, timeout_s: float | None = None) -> StreamMessage | None:
        """The next message; None when none came within `timeout_s` (None: wait as long as it takes)."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: bool(self._queue) or self._closed or self._end is not None, timeout_s
            )
            if not ready:
                return None
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
            return self._end if self._end is not None else StreamEnd()

    def close(self) -> None:
        """Leaves the pipeline (idempotent); the pipeline stops after its linger when nobody is left."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            self._results = 0
            callbacks, self._close_callbacks = self._close_callbacks, []
            self._cond.notify_all()
        self._pipeline._unsubscribe(self)
        for callback in callbacks:
            callback()

    def add_close_callback(self, callback: Callable[[], None]) -> None:
        """Calls `callback` once when the subscription closes (at once if it already has)."""
        with self._cond:
            if not self._closed:
                self._close_callbacks.append(callback)
                return
        callback()

    # -- the pipeline's side -----------------------------------------------------------------------------

    def _offer(self, message: StreamMessage, stopping: Callable[[], bool]) -> None:
        with self._cond:
            if self._closed:
                return
            if isinstance(message, FrameResult):
                if self.delivery is Delivery.EVERY_FRAME:
                    # close() and Pipeline.close() notify this condition, so the wait cannot outlive either.
                    while self._results >= self._capacity and not self._closed and not stopping():
                        self._cond.wait()
                    if self._closed or stopping():
                        return
                elif self._results >= self._capacity:
                    self._drop_oldest_result()
                self._results += 1
            self._queue.append(message)
            self._cond.notify_all()

    def _drop_oldest_result(self) -> None:
        for position, item in enumerate(self._queue):
            if isinstance(item, FrameResult):
                del self._queue[position]
                self._results -= 1
                self._dropped += 1
                return

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
