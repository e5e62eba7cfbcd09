"""Dynamic batching: one scheduler per loaded model, fed by unary Infer requests and stream frames alike.

    caller (request worker / stream pipeline)            scheduler thread (one per model)
    admit(count, origin): room, or RESOURCE_EXHAUSTED -.
    preprocess its images (letterbox)                  |
    admission.submit(tensors) -> Ticket -------------> gather: up to max_batch, or max_queue_delay
    await / wait the ticket ...                         drop items whose deadline passed / caller left
                                                        lease the slot's engine, ONE engine.infer(batch)
    <----------------------------------------------- split outputs back per item, ticket done
    decode + NMS with its own options

The scheduler takes prepared tensors and leases engines from the model's `EngineSlot`; it never calls back
into the predictor that owns it. A ticket can be waited on (`result()`) or observed (`add_done_callback`),
so an asyncio front end awaits a batch without holding a thread.

In short (the reasons are in docs/batching.md): a batch starts as soon as the engine is free, unless admitted
work is still being preprocessed (then it waits for it, at most max_queue_delay_ms); a lone request on an idle
engine runs in its caller's thread; unary and stream work alternate first pick of each batch; each origin's
queue is bounded (RESOURCE_EXHAUSTED with RetryInfo past it); items whose deadline passed or whose caller
left are dropped before compute; an engine that raises fails its batch with EngineFailedError; a batch is
capped by the engine's fixed batch or TensorRT profile and leases its engine for its whole run. A model with
several engine instances (`EngineSlot`) runs up to that many batches at once, one per instance, each from a
scheduler thread of its own (or inline in a caller's): a free instance takes the next batch.

Example:
    scheduler = BatchScheduler(slot, BatchSettings(max_batch_size=8, max_queue_delay_ms=2.0))
    admission = scheduler.admit(len(images), Origin.UNARY)
    items = scheduler.submit(admission, [preprocess(image) for image in images]).result()
    scheduler.close()
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from visionrpc.engines import Engine, EngineError, EngineInfo
from visionrpc.engines.base import Tensor

from . import metrics
from .engine_slot import EngineSlot
from .errors import (
    DeadlineExceededError,
    EngineFailedError,
    ResourceExhaustedError,
    UnavailableError,
)
from .processing import stack_batch
from .tickets import Admission, ItemResult, Origin, Ticket

__all__ = [
    "Admission",
    "BatchScheduler",
    "BatchSettings",
    "ItemResult",
    "Origin",
    "SchedulerStats",
    "Ticket",
    "engine_batch_limit",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Per-device defaults (BatchSettings fields left at 0 / negative). CPU: batches beyond ~8 images of a small
# detector gain no throughput on a few cores and only add latency; a 2 ms window is small next to ~30 ms of
# compute per image. GPU: batching is where the throughput is; 1 ms is small next to a batch's transfer time.
CPU_DEFAULTS = (8, 2.0)
GPU_DEFAULTS = (16, 1.0)
_RETRY_MIN_S, _RETRY_MAX_S = 0.01, 10.0
_UNKNOWN_BATCH_S = 0.1  # a batch's time for RetryInfo before any batch has finished


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How one model batches. Example: `BatchSettings(max_batch_size=4).limits("cpu") == (4, 2.0)`."""

    max_batch_size: int = 0  # 0: the device default (CPU 8, GPU 16)
    max_queue_delay_ms: float = -1.0  # negative: the device default (CPU 2 ms, GPU 1 ms)
    max_queue_size: int = 128  # images waiting per origin before RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"expected max_batch_size >= 0 (0: device default), got {self.max_batch_size}")
        if self.max_queue_size < 1:
            raise ValueError(f"expected max_queue_size >= 1, got {self.max_queue_size}")

    def limits(self, device: str) -> tuple[int, float]:
        """(max batch size, max queue delay in ms) on `device` ("cpu", "cuda:0", ...)."""
        batch, delay = CPU_DEFAULTS if device == "cpu" else GPU_DEFAULTS
        return (
            self.max_batch_size or batch,
            self.max_queue_delay_ms if self.max_queue_delay_ms >= 0 else delay,
        )

    def overridden(self, max_batch_size: int | None, max_queue_delay_ms: float | None) -> BatchSettings:
        """These settings with a model manifest's values where it sets them."""
        return replace(
            self,
            max_batch_size=self.max_batch_size if max_batch_size is None else max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms if max_queue_delay_ms is None else max_queue_delay_ms,
        )


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    batches: int = 0
    images: int = 0  # images run
    unary_images: int = 0
    stream_images: int = 0
    largest_batch: int = 0
    queued_unary: int = 0
    queued_stream: int = 0
    dropped_deadline: int = 0  # submissions dropped before compute: the deadline had passed
    dropped_cancelled: int = 0  # submissions dropped before compute: the caller had gone
    rejected: int = 0  # images refused with RESOURCE_EXHAUSTED
    instance_batches: tuple[int, ...] = ()  # batches run on each engine instance (index in the slot's group)


def engine_batch_limit(engine: Engine) -> tuple[int | None, bool]:
    """(largest batch the engine takes or None for no limit, whether batches must be exactly that size)."""
    shape = engine.inputs[0].shape if engine.inputs else ()
    first = shape[0] if shape else None
    if isinstance(first, int) and first > 0:
        return first, True
    limit = getattr(engine, "max_batch", None)  # TensorRT: the optimisation profile's max
    if isinstance(limit, int) and limit > 0:
        return limit, False
    return None, False


@dataclass(slots=True)
class _Item:
    ticket: Ticket
    index: int
    tensor: FloatArray
    enqueued: float  # time.monotonic()


class BatchScheduler:
    """Gathers one model's work into batches and runs each as one engine call (see the module docstring)."""

    def __init__(self, slot: EngineSlot, settings: BatchSettings | None = None) -> None:
        self._slot = slot
        self.settings = settings or BatchSettings()
        self._cond = threading.Condition()
        self._queues: dict[Origin, deque[_Item]] = {origin: deque() for origin in Origin}
        self._reserved: dict[Origin, int] = dict.fromkeys(Origin, 0)  # admitted, still preprocessing
        self._turn = Origin.UNARY
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._running = 0  # batches running (in scheduler threads or inline in callers'), <= slot.instances
        self._batch_s = 0.0  # moving average of a batch's engine time, for RetryInfo
        self._stats = SchedulerStats()

    def stats(self) -> SchedulerStats:
        with self._cond:
            return replace(
                self._stats,
                queued_unary=len(self._queues[Origin.UNARY]),
                queued_stream=len(self._queues[Origin.STREAM]),
            )

    def admit(self, count: int, origin: Origin) -> Admission:
        """Reserves room for `count` images of `origin`; preprocess them, then `submit` (or `cancel`).

        Raises:
            ResourceExhaustedError: this origin's queue is full (reason QUEUE_FULL, with retry_after_s).
            UnavailableError: the scheduler was closed (model unloaded, server stopping).
        """
        if count < 1:
            raise ValueError(f"expected at least one image, got {count}")
        with self._cond:
            self._check_open()
            queued = len(self._queues[origin]) + self._reserved[origin]
            if queued and queued + count > self.settings.max_queue_size:
                self._stats = replace(self._stats, rejected=self._stats.rejected + count)
                metrics.IMAGES_DROPPED.labels(self._slot.key, "rejected").inc(count)
                raise self._queue_full(origin, queued)
            self._reserved[origin] += count
            self._start_thread()
        return Admission(count, origin)

    def cancel(self, admission: Admission) -> None:
        """Gives an admission's room back (preparing its images failed). Idempotent."""
        with self._cond:
            self._close_admission(admission)

    def submit(
        self,
        admission: Admission,
        tensors: Sequence[FloatArray],
        *,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> Ticket:
        """Queues the admitted images' (C, H, W) tensors and returns their ticket at once; or, when the engine
        is idle and no other work is on its way, first runs their batch in this thread (no thread hand-off at
        concurrency 1), so the ticket comes back done. Never call it on an event loop.

        Args:
            deadline: `time.monotonic()` after which the images are not worth computing.
            cancelled: set when the caller goes away (e.g. its RPC was cancelled); queued images are dropped.

        The ticket ends with the items' results, or with ResourceExhaustedError, DeadlineExceededError,
        UnavailableError (closed, or the caller left) or EngineFailedError (the engine raised on the batch).
        """
        if len(tensors) != admission.count:
            raise ValueError(f"expected {admission.count} tensors, got {len(tensors)}")
        ticket = Ticket(admission.count, admission.origin, deadline, cancelled)
        with self._cond:
            if not admission.open:
                raise RuntimeError("this admission was already submitted or cancelled")
            self._close_admission(admission)
            if self._closed:
                ticket.fail(self._unloaded())
                return ticket
            now = time.monotonic()
            self._queues[admission.origin].extend(_Item(ticket, i, t, now) for i, t in enumerate(tensors))
            # A free engine instance, nobody else preparing work: the batch would start at once anyway, so run
            # it here and spare the two thread hand-offs (~0.1-0.3 ms at concurrency 1).
            inline = self._running < self._slot.instances and not any(self._reserved.values())
            if inline:
                self._running += 1
            else:
                self._cond.notify_all()
        if inline:
            self._run_claimed_batch()
        return ticket

    def close(self, wait_s: float = 0.0) -> None:
        """Fails every queued image with UNAVAILABLE; the batch in flight finishes, then the thread ends.

        Idempotent. Does not wait for the thread unless `wait_s` > 0 (callers hold the model manager's lock;
        the batch in flight keeps its engine leased, so nothing is closed under it).
        """
        with self._cond:
            if not self._closed:
                self._closed = True
                error = self._unloaded()
                for queue in self._queues.values():
                    for item in queue:
                        item.ticket.fail(error)
                    queue.clear()
                self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + wait_s
        for thread in threads:
            if wait_s > 0 and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    # -- the scheduler thread ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise self._unloaded()

    def _unloaded(self) -> UnavailableError:
        return UnavailableError(
            f"model {self._slot.key} was unloaded before these images ran", reason="MODEL_UNLOADED"
        )

    def _close_admission(self, admission: Admission) -> None:
        """Lock held."""
        if admission.open:
            admission.open = False
            self._reserved[admission.origin] -= admission.count
            self._cond.notify_all()

    def _start_thread(self) -> None:
        """One thread per engine instance, started on first use (predictors only ever used directly, as in
        warm-up and benchmarks, start none); a swap to more instances starts the missing ones. Lock held."""
        while len(self._threads) < self._slot.instances:
            suffix = f"-{len(self._threads)}" if self._threads else ""
            thread = threading.Thread(
                target=self._loop, name=f"visionrpc-batch-{self._slot.key}{suffix}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _queue_full(self, origin: Origin, queued: int) -> ResourceExhaustedError:
        batch, _ = self.settings.limits(self._slot.info.device)
        backlog = sum(len(q) for q in self._queues.values()) + sum(self._reserved.values())
        per_batch = self._batch_s or _UNKNOWN_BATCH_S
        retry = min(_RETRY_MAX_S, max(_RETRY_MIN_S, math.ceil(backlog / batch) * per_batch))
        return ResourceExhaustedError(
            f"model {self._slot.key}: {queued} {origin.value} images are already waiting "
            f"(limit {self.settings.max_queue_size}); retry after {retry:.2f} s",
            reason="QUEUE_FULL",
            metadata={"model_id": self._slot.key, "origin": origin.value},
            retry_after_s=round(retry, 3),
        )

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._gather():
                    return
                self._running += 1
            self._run_claimed_batch()

    def _run_claimed_batch(self) -> None:
        """Runs one batch in this thread (a scheduler thread, or a caller's); the caller counted it in
        `_running` under the lock, so no more batches of this model run than it has engine instances."""
        try:
            self._run_batch()
        except Exception:  # never let a bug escape: callers would wait forever
            logger.exception("bug in the batch scheduler of %s", self._slot.key)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()  # a scheduler thread takes over whatever queued meanwhile

    def _gather(self) -> bool:
        """Waits (lock held) until a batch should start and an engine instance is free; False once closed."""
        while True:
            while not self._closed and (self._busy() or not any(self._queues.values())):
                self._cond.wait()
            if self._closed:
                return False
            batch, delay_ms = self.settings.limits(self._slot.info.device)
            oldest = min(q[0].enqueued for q in self._queues.values() if q)
            while (
                not self._closed
                and sum(self._reserved.values()) > 0
                and sum(len(q) for q in self._queues.values()) < batch
            ):
                remaining = oldest + delay_ms / 1000.0 - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            # While this thread waited, a caller (or another scheduler thread) may have taken the queue or
            # the last free instance.
            if self._closed or (not self._busy() and any(self._queues.values())):
                return not self._closed

    def _busy(self) -> bool:
        """Every engine instance runs a batch (lock held)."""
        return self._running >= self._slot.instances

    def _run_batch(self) -> None:
        with self._slot.lease_instance() as (instance, engine):
            configured, _ = self.settings.limits(engine.info.device)
            limit, exact = engine_batch_limit(engine)
            capacity = min(configured, limit) if limit is not None else configured
            with self._cond:
                items = self._take(capacity)
            if not items:
                return
            try:
                start = time.monotonic()
                tensors = [item.tensor for item in items]
                if exact and limit is not None and len(tensors) < limit:  # fixed batch size: pad with blanks
                    tensors += [np.zeros_like(tensors[0])] * (limit - len(tensors))
                outputs = engine.infer({self._slot.input_name: stack_batch(tensors)})
                end = time.monotonic()
            except Exception as exc:  # the engine's error, or a bug: either way these callers must hear of it
                error: BaseException = exc
                if isinstance(exc, EngineError):
                    logger.error(
                        "%s: the engine failed on a batch of %d: %s", self._slot.key, len(items), exc
                    )
                    error = EngineFailedError(
                        f"model {self._slot.key}: the engine failed: {exc}",
                        metadata={"model_id": self._slot.key},
                    )
                with self._cond:
                    for item in items:
                        item.ticket.fail(error)
                return
        self._deliver(items, outputs, engine.info, start, end, rows=len(tensors), instance=instance)

    def _take(self, capacity: int) -> list[_Item]:
        """Pops up to `capacity` live items, fairly between origins (lock held); drops dead ones."""
        first = self._turn
        second = Origin.STREAM if first is Origin.UNARY else Origin.UNARY
        taken: list[_Item] = []
        for origin, share in ((first, math.ceil(capacity / 2)), (second, capacity), (first, capacity)):
            taken += self._pop_live(origin, min(share, capacity - len(taken)))
        self._turn = second
        return taken

    def _pop_live(self, origin: Origin, count: int) -> Iterator[_Item]:
        queue, now = self._queues[origin], time.monotonic()
        while count > 0 and queue:
            item = queue.popleft()
            ticket = item.ticket
            if ticket.finished:  # another of its images failed
                continue
            if ticket.deadline is not None and ticket.deadline <= now:
                ticket.fail(
                    DeadlineExceededError(
                        f"the deadline passed after {(now - item.enqueued) * 1000:.0f} ms in the queue of "
                        f"{self._slot.key}, before inference",
                        reason="DEADLINE_PASSED",
                    )
                )
                self._stats = replace(self._stats, dropped_deadline=self._stats.dropped_deadline + 1)
                metrics.IMAGES_DROPPED.labels(self._slot.key, "deadline").inc()
                continue
            if ticket.cancelled is not None and ticket.cancelled.is_set():
                ticket.fail(UnavailableError("the caller went away", reason="CANCELLED"))
                self._stats = replace(self._stats, dropped_cancelled=self._stats.dropped_cancelled + 1)
                metrics.IMAGES_DROPPED.labels(self._slot.key, "cancelled").inc()
                continue
            count -= 1
            yield item

    def _deliver(
        self,
        items: list[_Item],
        outputs: dict[str, Tensor],
        engine: EngineInfo,
        start: float,
        end: float,
        rows: int,
        instance: int,
    ) -> None:
        inference_ms = (end - start) * 1000.0
        if metrics.ON:
            key = self._slot.key
            metrics.BATCH_SIZE.labels(key).observe(len(items))
            metrics.BATCH_DURATION.labels(key, engine.engine).observe(end - start)
            for item in items:
                metrics.QUEUE_WAIT.labels(key, item.ticket.origin.value).observe(start - item.enqueued)
        with self._cond:
            for row, item in enumerate(items):
                mine = {
                    name: array[row : row + 1] if array.ndim and array.shape[0] == rows else array
                    for name, array in outputs.items()
                }
                queue_ms = (start - item.enqueued) * 1000.0
                item.ticket.deliver(item.index, ItemResult(mine, engine, queue_ms, inference_ms, len(items)))
            self._batch_s = (end - start) if not self._batch_s else 0.8 * self._batch_s + 0.2 * (end - start)
            unary = sum(1 for item in items if item.ticket.origin is Origin.UNARY)
            stats = self._stats
            per_instance = list(stats.instance_batches) + [0] * (instance + 1 - len(stats.instance_batches))
            per_instance[instance] += 1
            self._stats = replace(
                stats,
                batches=stats.batches + 1,
                images=stats.images + len(items),
                unary_images=stats.unary_images + unary,
                stream_images=stats.stream_images + len(items) - unary,
                largest_batch=max(stats.largest_batch, len(items)),
                instance_batches=tuple(per_instance),
            )
