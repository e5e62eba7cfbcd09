"""The engine a model runs on, replaceable while batches run on it (read-copy-update).

Each batch leases the current engine for its whole run; a swap (e.g. ONNX Runtime -> a freshly built TensorRT
engine) only redirects later leases, and the old engine is closed by whichever finishes last, the swap or the
last batch still running on it. No batch ever sees a closed engine, and no batch waits for a swap.
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
    """Holds one model's current engine. Thread-safe.

    Example:
        slot = EngineSlot("yolov3-tiny-coco/1", engine)
        with slot.lease() as engine:
            outputs = engine.infer({slot.input_name: batch})
        slot.swap(faster_engine)   # later leases run on it; the old one closes after its last batch
    """

    def __init__(self, key: str, engine: Engine) -> None:
        self.key = key
        self.input_name = engine.inputs[0].name
        self._lock = threading.Lock()
        self._current = _Ref(engine)
        self._closed = False

    @property
    def engine(self) -> Engine:
        """The engine the next lease gets (a later swap may replace it)."""
        return self._current.engine

    @property
    def info(self) -> EngineInfo:
        return self._current.engine.info

    @contextmanager
    def lease(self) -> Iterator[Engine]:
        """The current engine, kept open (a swap or close defers closing it) until the block ends.

        Raises:
            UnavailableError: the slot was closed (model unloaded).
        """
        with self._lock:
            if self._closed:
                raise UnavailableError(f"model {self.key} was unloaded", reason="MODEL_UNLOADED")
            ref = self._current
            ref.users += 1
        try:
            yield ref.engine
        finally:
            with self._lock:
                ref.users -= 1
                close_now = ref.retired and ref.users == 0
            if close_now:  # the last batch on a swapped-out engine closes it, outside the lock
                ref.engine.close()

    def check_compatible(self, engine: Engine) -> None:
        """Raises EngineError when `engine`'s input or output tensors differ from the current engine's."""
        old = self._current.engine
        if _names(engine) != _names(old):
            raise EngineError(
                f"{self.key}: the new engine's tensors {_names(engine)} differ from the current engine's "
                f"{_names(old)}"
            )

    def swap(self, engine: Engine) -> bool:
        """Makes `engine` serve every later lease (the caller warmed it up).

        Returns:
            False when the slot was closed meanwhile: the caller still owns `engine` and must close it.

        Raises:
            EngineError: the new engine's inputs or outputs differ from the current one's.
        """
        self.check_compatible(engine)
        with self._lock:
            if self._closed:
                return False
            retired, self._current = self._current, _Ref(engine)
            retired.retired = True
            close_now = retired.users == 0
        logger.info("%s: now serving on %s (was %s)", self.key, engine.info, retired.engine.info)
        if close_now:
            retired.engine.close()
        return True

    def close(self) -> None:
        """Closes the engine once no batch runs on it; later leases fail. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            current = self._current
            current.retired = True
            close_now = current.users == 0
        if close_now:
            current.engine.close()


def _names(engine: Engine) -> dict[str, list[str]]:
    return {"inputs": [s.name for s in engine.inputs], "outputs": sorted(s.name for s in engine.outputs)}
