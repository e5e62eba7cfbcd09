"""What a batch scheduler hands back: one submission's ticket, and each image's share of a batch.

A ticket can be waited on (`result()`) or observed (`add_done_callback`), so an asyncio front end awaits a
batch without holding a thread, while a stream pipeline's thread simply waits.
"""

from __future__ import annotations

import copy
import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from visionrpc.engines import EngineInfo
from visionrpc.engines.base import Tensor

__all__ = ["Admission", "ItemResult", "Origin", "Ticket"]

logger = logging.getLogger(__name__)


class Origin(enum.Enum):
    UNARY = "unary"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One image's share of a batch: its rows of every output, and what running the batch cost."""

    outputs: dict[str, Tensor]
    engine: EngineInfo
    queue_ms: float
    inference_ms: float
    batch_size: int


class Ticket:
    """One submission: its items' results, or the error that ended it.

    Mutable state is guarded by the scheduler's lock; `done` is set exactly once, after which the ticket never
    changes. Wait with `result()`, or learn of the end with `add_done_callback` (an asyncio caller turns that
    into an awaitable without holding a thread).
    """

    __slots__ = ("_callbacks", "cancelled", "deadline", "done", "error", "origin", "pending", "results")

    def __init__(
        self, count: int, origin: Origin, deadline: float | None, cancelled: threading.Event | None
    ) -> None:
        self.origin = origin
        self.deadline = deadline
        self.cancelled = cancelled
        self.results: list[ItemResult | None] = [None] * count
        self.pending = count
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def finished(self) -> bool:
        return self.done.is_set()

    def result(self, timeout_s: float | None = None) -> list[ItemResult]:
        """Waits for the items' results, in submission order.

        Raises:
            ResourceExhaustedError, DeadlineExceededError, UnavailableError, EngineFailedError: see `admit`.
            TimeoutError: not done within `timeout_s`.
        """
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"the batch did not finish within {timeout_s} s")
        if self.error is not None:
            raise _copy(self.error) from self.error
        return [result for result in self.results if result is not None]

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Calls `callback()` once the ticket is done: at once (in this thread) if it is, else in the thread
        that finishes it, which must not be blocked for long."""
        with _CALLBACK_LOCK:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self._finish()

    def deliver(self, index: int, result: ItemResult) -> None:
        if self.done.is_set():
            return
        self.results[index] = result
        self.pending -= 1
        if self.pending == 0:
            self._finish()

    def _finish(self) -> None:
        with _CALLBACK_LOCK:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a callback's bug must not stop the others or the batch
                logger.exception("bug in a batch ticket's done callback")


# Orders add_done_callback against _finish: cheap, held for a list operation only, never while calling back.
_CALLBACK_LOCK = threading.Lock()


@dataclass(eq=False, slots=True)
class Admission:
    """Room reserved in a model's queue for `count` images of one origin while the caller preprocesses them:
    the scheduler knows the work is coming and holds a forming batch back for it (up to max_queue_delay).
    Pass it to `BatchScheduler.submit` exactly once, or to `BatchScheduler.cancel` when preparing failed."""

    count: int
    origin: Origin
    open: bool = True  # guarded by the scheduler's lock


def _copy(error: BaseException) -> BaseException:
    """A copy per caller: one exception object raised in several threads would share one traceback."""
    try:
        return copy.copy(error)
    except Exception:  # pragma: no cover - exotic exception classes
        return error
