"""The machinery every sink shares: a bounded queue drained by one daemon thread, with retries, counters and a
bounded close.

    worker = SinkWorker("hook", "webhook", deliver=post, queue_size=1000, retry=RetryPolicy())
    worker.put(body)       # from the pipeline's thread: never blocks; a full queue loses its oldest item
    worker.status()        # SinkStatus: delivered, failed, dropped, queued, last error
    worker.close(5.0)      # drains for at most 5 s, drops the rest, runs `finish` on the worker thread

`deliver` runs on the worker thread only, so a sink's connection or file needs no lock. It raises
DeliveryError for a failed attempt: retried after the policy's backoff when `retryable`, dropped otherwise or
once the attempts run out. Anything else it raises is a bug: logged, counted as a failure, the item dropped.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .base import SinkStatus
from .config import RetryPolicy

__all__ = ["NO_RETRY", "DeliveryError", "SinkWorker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

NO_RETRY = RetryPolicy(max_attempts=1, backoff_s=0.0, max_backoff_s=0.0)


class DeliveryError(Exception):
    """One attempt at delivering an item failed (`reason` is what status reports)."""

    def __init__(self, reason: str, *, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class SinkWorker(Generic[T]):
    """A bounded queue of items and the one thread that delivers them, in order."""

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        deliver: Callable[[T], None],
        queue_size: int,
        retry: RetryPolicy = NO_RETRY,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.kind = kind
        self._deliver = deliver
        self._finish = finish
        self._retry = retry
        self._queue: collections.deque[T] = collections.deque()
        self._queue_size = queue_size
        # One lock for the queue, the counters and the close deadline; the condition wakes the thread for a
        # new item and cuts a backoff short when close() sets the deadline.
        self._cond = threading.Condition()
        self._delivered = 0
        self._failed = 0
        self._dropped = 0
        self._last_error = ""
        self._last_error_time: float | None = None
        self._failing = False
        self._deadline: float | None = None  # monotonic; set by close()
        self._thread = threading.Thread(target=self._run, name=f"sink-{kind}-{name}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queues an item; when the queue is full its oldest item is dropped (and counted). Never blocks."""
        with self._cond:
            if self._deadline is not None:
                self._dropped += 1  # closed: nobody will deliver it
                return
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(item)
            self._cond.notify()

    def drop(self, reason: str) -> None:
        """Counts an item the sink could not even queue (e.g. it failed to encode) as failed and dropped."""
        with self._cond:
            self._failed += 1
            self._dropped += 1
            self._note_error(reason)

    def status(self) -> SinkStatus:
        with self._cond:
            return SinkStatus(
                name=self.name,
                kind=self.kind,
                delivered=self._delivered,
                failed=self._failed,
                dropped=self._dropped,
                queued=len(self._queue),
                last_error=self._last_error,
                last_error_time=self._last_error_time,
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Delivers what is queued for at most `timeout_s`, drops the rest, then releases the sink (`finish`).

        Returns after `timeout_s` at the latest even when an attempt still hangs (bounded by the sink's own
        timeout); the daemon thread then finishes on its own.
        """
        with self._cond:
            if self._deadline is None:
                self._deadline = time.monotonic() + max(0.0, timeout_s)
            deadline = self._deadline
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "sink %s (%s) still busy after close's %.1f s; left to finish",
                self.name,
                self.kind,
                timeout_s,
            )

    # -- the worker thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._next()) is not None:
            self._attempt(item)
        with self._cond:
            left = len(self._queue)
            self._dropped += left
            self._queue.clear()
        if left:
            logger.warning("sink %s (%s) closed with %d message(s) undelivered", self.name, self.kind, left)
        if self._finish is not None:
            try:
                self._finish()
            except Exception:
                logger.exception("sink %s (%s) failed to close", self.name, self.kind)

    def _next(self) -> T | None:
        """The oldest item; None once closing and empty, or once the close deadline has passed."""
        with self._cond:
            while True:
                if self._deadline is not None and (not self._queue or time.monotonic() >= self._deadline):
                    return None
                if self._queue:
                    return self._queue.popleft()
                self._cond.wait()

    def _attempt(self, item: T) -> None:
        attempt = 1
        while True:
            try:
                self._deliver(item)
            except DeliveryError as exc:
                retry = exc.retryable and attempt < self._retry.max_attempts
                self._failure(exc.reason, dropped=not retry)
                if not retry or not self._pause(self._retry.delay(attempt)):
                    if retry:
                        self._count_dropped()  # the close deadline came before the next attempt
                    return
                attempt += 1
                continue
            except Exception as exc:  # a bug in the sink; the pipeline must not notice
                logger.exception("sink %s (%s) failed to deliver", self.name, self.kind)
                self._failure(f"internal error: {exc!r}", dropped=True)
                return
            self._success()
            return

    def _pause(self, seconds: float) -> bool:
        """Sleeps `seconds`, cut short by the close deadline; False when the deadline has passed."""
        end = time.monotonic() + seconds
        with self._cond:
            while True:
                limit = end if self._deadline is None else min(end, self._deadline)
                now = time.monotonic()
                if now >= limit:
                    return self._deadline is None or now < self._deadline
                self._cond.wait(limit - now)

    def _success(self) -> None:
        with self._cond:
            self._delivered += 1
            recovered, self._failing = self._failing, False
        if recovered:
            logger.info("sink %s (%s) delivering again", self.name, self.kind)

    def _failure(self, reason: str, *, dropped: bool) -> None:
        with self._cond:
            self._failed += 1
            if dropped:
                self._dropped += 1
            self._note_error(reason)
            first, self._failing = not self._failing, True
        # Once per outage at warning level: a receiver that is down would otherwise log every retry.
        if first:
            logger.warning("sink %s (%s) failing: %s", self.name, self.kind, reason)
        else:
            logger.debug("sink %s (%s) failed again: %s", self.name, self.kind, reason)

    def _count_dropped(self) -> None:
        with self._cond:
            self._dropped += 1

    def _note_error(self, reason: str) -> None:
        # Called with the lock held.
        self._last_error = reason
        self._last_error_time = time.time()
