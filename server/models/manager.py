"""The model manager: resolves ids, loads each model version once, keeps at most N loaded (LRU).

Loading happens off the lock: the first caller of a model version loads it while later callers of the same
version wait for that one load, and callers of other models are not held up. A model in use is never closed
under a request: eviction and unloading only detach it, and the last lease closes it.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from visionrpc.engines import Engine, EngineError, EngineInfo

from ..errors import FailedPreconditionError, NotFoundError, VisionRpcError
from ..predictor import Predictor
from .manifest import ModelManifest
from .repository import ModelId, ModelRepository, ResolvedModel

__all__ = ["EngineFactory", "ModelManager", "ModelState", "ModelStatus"]

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ResolvedModel], Engine]


class ModelState(enum.Enum):
    AVAILABLE = "available"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    version: str  # "" for a built-in that is not installed yet
    versions: tuple[str, ...]
    state: ModelState
    reason: str
    builtin: bool
    manifest: ModelManifest | None
    engine: EngineInfo | None


class _Slot:
    """A model version that is loading or loaded. Mutable; guarded by ModelManager._lock."""

    def __init__(self, model: ResolvedModel) -> None:
        self.model = model
        self.predictor: Predictor | None = None
        self.error: VisionRpcError | None = None
        self.done = threading.Event()
        self.leases = 0
        self.detached = False  # evicted or unloaded: close when the last lease ends


class ModelManager:
    def __init__(
        self, repository: ModelRepository, engine_factory: EngineFactory, *, max_loaded: int
    ) -> None:
        self._repository = repository
        self._engine_factory = engine_factory
        self._max_loaded = max_loaded
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._failures: dict[str, str] = {}
        # Installing a built-in downloads and converts it: one install per name at a time.
        self._install_locks: dict[str, threading.Lock] = {}

    @property
    def repository(self) -> ModelRepository:
        return self._repository

    @contextmanager
    def acquire(self, model_id: str) -> Iterator[Predictor]:
        """Yields the loaded model, loading it first if needed; the model stays open while the block runs.

        Raises:
            InvalidArgumentError: malformed id.  NotFoundError: unknown model or version.
            FailedPreconditionError: the model failed to load (the reason is in the message).
        """
        resolved = self._resolve(ModelId.parse(model_id))
        slot = self._lease(resolved)
        try:
            assert slot.predictor is not None  # _lease only returns ready slots
            yield slot.predictor
        finally:
            self._release(slot)

    def load(self, model_id: str) -> ModelStatus:
        with self.acquire(model_id):
            pass
        return self.status(model_id)

    def unload(self, model_id: str) -> ModelStatus:
        """Detaches the model version (idempotent); it closes as soon as no request uses it."""
        parsed = ModelId.parse(model_id)
        resolved = self._resolve_installed(parsed)
        if resolved is not None:
            with self._lock:
                slot = self._slots.get(resolved.key)
                if slot is not None and slot.done.is_set():
                    del self._slots[resolved.key]
                    self._detach(slot)
                self._failures.pop(resolved.key, None)
        return self.status(model_id)

    def status(self, model_id: str) -> ModelStatus:
        parsed = ModelId.parse(model_id)
        versions = tuple(self._repository.versions(parsed.name))
        builtin = self._repository.is_builtin(parsed.name)
        resolved = self._resolve_installed(parsed)
        if resolved is None:  # a built-in not installed yet
            return ModelStatus(parsed.name, "", versions, ModelState.AVAILABLE, "", True, None, None)
        with self._lock:
            slot = self._slots.get(resolved.key)
            failure = self._failures.get(resolved.key, "")
        if slot is None:
            state, engine = (ModelState.FAILED if failure else ModelState.AVAILABLE), None
        elif not slot.done.is_set():
            state, engine = ModelState.LOADING, None
        else:
            assert slot.predictor is not None
            state, engine = ModelState.READY, slot.predictor.engine_info
        return ModelStatus(
            resolved.name, resolved.version, versions, state, failure, builtin, resolved.manifest, engine
        )

    def list_models(self) -> list[ModelStatus]:
        statuses = []
        for name in self._repository.names():
            try:
                statuses.append(self.status(name))
            except VisionRpcError as exc:  # a broken model directory must not hide the others
                statuses.append(ModelStatus(name, "", (), ModelState.FAILED, exc.message, False, None, None))
        return statuses

    def loaded_keys(self) -> list[str]:
        """Ready model versions, least recently used first."""
        with self._lock:
            return [key for key, slot in self._slots.items() if slot.predictor is not None]

    def close(self) -> None:
        with self._lock:
            slots = list(self._slots.values())
            self._slots.clear()
            for slot in slots:
                self._detach(slot)

    # -- internals ------------------------------------------------------------------------------------------

    def _resolve(self, model_id: ModelId) -> ResolvedModel:
        with self._lock:
            install_lock = self._install_locks.setdefault(model_id.name, threading.Lock())
        with install_lock:
            return self._repository.resolve(model_id, install=True)

    def _resolve_installed(self, model_id: ModelId) -> ResolvedModel | None:
        """Like _resolve, but never installs: None for a built-in that is not installed yet."""
        try:
            return self._repository.resolve(model_id, install=False)
        except NotFoundError:
            if self._repository.is_builtin(model_id.name) and not self._repository.versions(model_id.name):
                return None
            raise

    def _lease(self, model: ResolvedModel) -> _Slot:
        while True:
            with self._lock:
                slot = self._slots.get(model.key)
                loader = slot is None
                if slot is None:
                    slot = self._slots[model.key] = _Slot(model)
            if loader:
                self._load(slot)
            slot.done.wait()
            if slot.error is not None:
                raise slot.error
            with self._lock:
                if slot.detached:  # evicted between loading and leasing: load again
                    continue
                slot.leases += 1
                self._slots.move_to_end(model.key)
                return slot

    def _load(self, slot: _Slot) -> None:
        model = slot.model
        start = time.perf_counter()
        logger.info("loading model %s from %s", model.key, model.directory)
        try:
            engine = self._engine_factory(model)
            predictor = Predictor(model, engine)
            predictor.warmup()
        except (EngineError, VisionRpcError, ValueError, OSError) as exc:
            reason = str(exc) if not isinstance(exc, VisionRpcError) else exc.message
            logger.warning("model %s failed to load: %s", model.key, reason)
            with self._lock:
                self._slots.pop(model.key, None)
                self._failures[model.key] = reason
            slot.error = FailedPreconditionError(
                f"model {model.key} failed to load: {reason}",
                reason="MODEL_LOAD_FAILED",
                metadata={"model_id": model.key},
            )
            slot.done.set()
            return
        logger.info(
            "model %s ready on %s in %.0f ms", model.key, engine.info, (time.perf_counter() - start) * 1e3
        )
        with self._lock:
            slot.predictor = predictor
            self._failures.pop(model.key, None)
            self._evict_beyond_cap(keep=model.key)
        slot.done.set()

    def _evict_beyond_cap(self, keep: str) -> None:
        ready = [key for key, s in self._slots.items() if s.predictor is not None and key != keep]
        excess = len(ready) + 1 - self._max_loaded
        for key in ready[: max(0, excess)]:
            logger.info("evicting least recently used model %s (cap %d)", key, self._max_loaded)
            self._detach(self._slots.pop(key))

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.leases -= 1
            close_now = slot.detached and slot.leases == 0
        if close_now:
            self._close(slot)

    def _detach(self, slot: _Slot) -> None:
        """Caller holds the lock."""
        slot.detached = True
        if slot.leases == 0:
            self._close(slot)

    @staticmethod
    def _close(slot: _Slot) -> None:
        if slot.predictor is not None:
            logger.info("closing model %s", slot.model.key)
            slot.predictor.close()
            slot.predictor = None
