"""The engine a model runs on, replaceable while batches run on it (read-copy-update).

Each batch leases the current engine for its whole run; a swap (e.g. ONNX Runtime -> a freshly built TensorRT
engine) only redirects later leases, and the old engine is closed by whichever finishes last, the swap or the
last batch still running on it. No batch ever sees a closed engine, and no batch waits for a swap.

A slot may hold several *instances* of its engine (like Triton's instance groups: each its own ONNX Runtime
session and threads, or TensorRT execution context and stream), so that batches overlap where the hardware
allows. A lease takes the instance with the fewest batches running (the lowest index on a tie); the
scheduler runs at most as many batches at once as there are instances, so each batch gets an instance of
its own (and counts, per instance, the batches each ran). A swap replaces the whole group.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from visionrpc.engines import Engine, EngineError, EngineInfo

from .errors import UnavailableError

__all__ = ["EngineSlot"]

logger = logging.getLogger(__name__)


class _Ref:
    """An engine plus the count of batches running on it. Mutable; guarded by EngineSlot._lock."""

    __slots__ = ("engine", "retired", "users")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.users = 0
        self.retired = False  # replaced (or the slot closed): close when the last user finishes


class EngineSlot:
    """Holds one model's current engine instances. Thread-safe.

    Example:
        slot = EngineSlot("yolov3-tiny-coco/1", engine)            # or (key, first, second) for two instances
        with slot.lease() as engine:
            outputs = engine.infer({slot.input_name: batch})
        slot.swap(faster_engine)   # later leases run on it; the old ones close after their last batch
    """

    def __init__(self, key: str, engine: Engine, *more: Engine) -> None:
        self.key = key
        self.input_name = engine.inputs[0].name
        for other in more:
            _check_same(key, engine, other)
        self._lock = threading.Lock()
        self._current = [_Ref(e) for e in (engine, *more)]
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The first instance of the engine later leases get (a later swap may replace it)."""
        return self._current[0].engine

    @property
    def info(self) -> EngineInfo:
        return self._current[0].engine.info

    @property
    def instances(self) -> int:
        """How many instances of the current engine there are: how many batches may run at once."""
        return len(self._current)

    @contextmanager
    def lease(self) -> Iterator[Engine]:
        """The least busy instance of the current engine, kept open (a swap or close defers closing it)
        until the block ends.

        Raises:
            UnavailableError: the slot was closed (model unloaded).
        """
        with self.lease_instance() as (_, engine):
            yield engine

    @contextmanager
    def lease_instance(self) -> Iterator[tuple[int, Engine]]:
        """`lease`, with the instance's index in the current group (0 .. instances - 1).

        Raises:
            UnavailableError: the slot was closed (model unloaded).
        """
        with self._lock:
            if self._closed:
                raise UnavailableError(f"model {self.key} was unloaded", reason="MODEL_UNLOADED")
            index = min(range(len(self._current)), key=lambda i: self._current[i].users)
            ref = self._current[index]
            ref.users += 1
        try:
            yield index, ref.engine
        finally:
            with self._lock:
                ref.users -= 1
                close_now = ref.retired and ref.users == 0
            if close_now:  # the last batch on a swapped-out engine closes it, outside the lock
                ref.engine.close()

    def check_compatible(self, engine: Engine) -> None:
        """Raises EngineError when `engine`'s input or output tensors differ from the current engine's."""
        _check_same(self.key, self._current[0].engine, engine)

    def swap(self, engine: Engine, *more: Engine) -> bool:
        """Makes `engine` (and `more` instances of it) serve every later lease (the caller warmed them up).

        Returns:
            False when the slot was closed meanwhile: the caller still owns the engines and must close them.

        Raises:
            EngineError: a new engine's inputs or outputs differ from the current one's.
        """
        for new in (engine, *more):
            self.check_compatible(new)
        with self._lock:
            if self._closed:
                return False
            retired, self._current = self._current, [_Ref(e) for e in (engine, *more)]
            idle = _retire(retired)
        logger.info(
            "%s: now serving on %s x%d (was %s x%d)",
            self.key,
            engine.info,
            len(more) + 1,
            retired[0].engine.info,
            len(retired),
        )
        for ref in idle:
            ref.engine.close()
        return True

    def close(self) -> None:
        """Closes the engines once no batch runs on them; later leases fail. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = _retire(self._current)
        for ref in idle:
            ref.engine.close()


def _retire(refs: list[_Ref]) -> list[_Ref]:
    """Marks `refs` retired (lock held); returns those no batch uses, for the caller to close unlocked."""
    for ref in refs:
        ref.retired = True
    return [ref for ref in refs if ref.users == 0]


def _check_same(key: str, old: Engine, new: Engine) -> None:
    if _names(new) != _names(old):
        raise EngineError(
            f"{key}: the new engine's tensors {_names(new)} differ from the current engine's {_names(old)}"
        )


def _names(engine: Engine) -> dict[str, list[str]]:
    return {"inputs": [s.name for s in engine.inputs], "outputs": sorted(s.name for s in engine.outputs)}
