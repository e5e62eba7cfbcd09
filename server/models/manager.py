"""The model manager: resolves ids, loads each model version once, keeps at most N loaded (LRU).

Loading happens off the lock: the first caller of a model version loads it while later callers of the same
version wait for that one load, and callers of other models are not held up. A model in use is never closed
under a request: eviction and unloading only detach it, and the last lease closes it.

Engines: each load asks the selector which engine the model should run on. When that is the builder's target
(TensorRT) and no cached engine exists, the model loads on ONNX Runtime and serves at once while a background
thread builds the target engine; the predictor then swaps it in between batches. Builds run one at a time
(a TensorRT build wants the whole GPU and several cores), a failed build leaves the model serving on its
fallback with the reason in its status, and is not retried until the model is explicitly unloaded.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from visionrpc.engines import Engine, EngineError, EngineInfo

from .. import metrics
from ..errors import FailedPreconditionError, NotFoundError, VisionRpcError
from ..manifest import ModelManifest, ResolvedModel
from ..predictor import Predictor
from ..scheduler import BatchSettings, SchedulerStats
from .builds import NOT_NEEDED, BuildState, BuildStatus, EngineBuilder
from .engine_selection import EngineSelection
from .integrity import check_integrity
from .metadata import read_metadata
from .probe import check_by_running, check_export_size
from .repository import ModelId, ModelRepository

__all__ = ["EngineFactory", "EngineSelectorFn", "ModelLease", "ModelManager", "ModelState", "ModelStatus"]

logger = logging.getLogger(__name__)

# Creates the engine a model loads with (ONNX Runtime): fast, and the fallback while a better engine builds.
# One engine, or several instances of it (the manifest's `instances`, else the server's default) that the
# model's scheduler runs batches on at once.
EngineFactory = Callable[[ResolvedModel], Engine | Sequence[Engine]]
# Decides a model's engine; raises FailedPreconditionError when the engine it insists on cannot run.
EngineSelectorFn = Callable[[ResolvedModel], EngineSelection]


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
    build: BuildStatus | None = None  # set while loaded


class _Slot:
    """A model version that is loading or loaded. Mutable; guarded by ModelManager._lock."""

    def __init__(self, model: ResolvedModel) -> None:
        self.model = model
        self.predictor: Predictor | None = None
        self.error: VisionRpcError | None = None
        self.done = threading.Event()
        self.leases = 0
        self.detached = False  # evicted or unloaded: close when the last lease ends
        self.build = NOT_NEEDED
        # Set on detach: a running build stops at its next progress report.
        self.cancel_build = threading.Event()


class ModelLease:
    """A loaded model, kept open (never closed by eviction or unloading) until `release()`.

    For holders that outlive a `with` block (a stream pipeline keeps its model for its whole life); a `with`
    block releases it too. Thread-safe; release is idempotent.
    """

    def __init__(self, predictor: Predictor, release: Callable[[], None]) -> None:
        self.predictor = predictor
        self._release = release
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._release()

    def __enter__(self) -> Predictor:
        return self.predictor

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ModelManager:
    def __init__(
        self,
        repository: ModelRepository,
        engine_factory: EngineFactory,
        *,
        max_loaded: int,
        builder: EngineBuilder | None = None,
        selector: EngineSelectorFn | None = None,
        batching: BatchSettings | None = None,
    ) -> None:
        """Creates an empty manager; models load on first use.

        Args:
            repository: where models are found.
            engine_factory: the engine every model loads with (and falls back to): ONNX Runtime.
            max_loaded: the LRU cap.
            builder: builds better engines in the background (TensorRT); None: never build.
            selector: picks each model's engine; None: the builder's target for every model when there is a
                builder, else the factory's engine.
            batching: the dynamic batching defaults (a model's manifest may override them); None: the
                device defaults. Each loaded model has its own scheduler, closed when the model closes.
        """
        self._repository = repository
        self._engine_factory = engine_factory
        self._max_loaded = max_loaded
        self._builder = builder
        self._selector = selector
        self._batching = batching or BatchSettings()
        self._lock = threading.Lock()
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._failures: dict[str, str] = {}
        # Failed builds by model key: not retried on every reload (each attempt can cost minutes of GPU time);
        # an explicit unload forgets them.
        self._build_failures: dict[str, str] = {}
        self._build_gate = threading.Lock()  # one background build at a time
        # Installing a built-in downloads and converts it: one install per name at a time.
        self._install_locks: dict[str, threading.Lock] = {}

    @property
    def repository(self) -> ModelRepository:
        return self._repository

    def manifest(self, model_id: ModelId) -> ModelManifest | None:
        """The manifest a lease of `model_id` would run with, without loading or installing anything: the
        loaded model's, else the repository's. None for an unknown model, a built-in not installed yet or an
        unreadable manifest: the lease that follows reports those. Cheap (a few stats), for callers that
        prepare a request's input before leasing, such as sizing image decoding to the model's input.
        """
        try:
            resolved = self._repository.resolve(model_id, install=False)
        except VisionRpcError:
            return None
        with self._lock:
            slot = self._slots.get(resolved.key)
            predictor = slot.predictor if slot is not None else None
        return predictor.model.manifest if predictor is not None else resolved.manifest

    def lease(self, model_id: ModelId) -> ModelLease:
        """The loaded model, loading it first if needed (blocking: never call it on an event loop); it stays
        open until the lease is released.

        Raises:
            NotFoundError: unknown model or version.
            FailedPreconditionError: the model failed to load (the reason is in the message).
        """
        slot = self._lease(self._resolve(model_id))
        assert slot.predictor is not None  # _lease only returns ready slots
        return ModelLease(slot.predictor, functools.partial(self._release, slot))

    def acquire(self, model_id: ModelId) -> ModelLease:
        """`lease` for a `with` block: `with manager.acquire(model_id) as predictor: ...`."""
        return self.lease(model_id)

    def load(self, model_id: ModelId) -> ModelStatus:
        self.lease(model_id).release()
        return self.status(model_id)

    def unload(self, model_id: ModelId) -> ModelStatus:
        """Detaches the model version (idempotent); it closes as soon as no request uses it."""
        parsed = model_id
        resolved = self._resolve_installed(parsed)
        if resolved is not None:
            with self._lock:
                slot = self._slots.get(resolved.key)
                if slot is not None and slot.done.is_set():
                    del self._slots[resolved.key]
                    self._detach(slot)
                self._failures.pop(resolved.key, None)
                self._build_failures.pop(resolved.key, None)
        return self.status(model_id)

    def status(self, model_id: ModelId) -> ModelStatus:
        parsed = model_id
        versions = tuple(self._repository.versions(parsed.name))
        builtin = self._repository.is_builtin(parsed.name)
        resolved = self._resolve_installed(parsed)
        if resolved is None:  # a built-in not installed yet
            return ModelStatus(parsed.name, "", versions, ModelState.AVAILABLE, "", True, None, None)
        with self._lock:
            slot = self._slots.get(resolved.key)
            failure = self._failures.get(resolved.key, "")
            build = slot.build if slot is not None else None
            predictor = slot.predictor if slot is not None else None
        if slot is None:
            state, engine, build = (ModelState.FAILED if failure else ModelState.AVAILABLE), None, None
        elif not slot.done.is_set() or predictor is None:
            state, engine, build = ModelState.LOADING, None, None
        else:
            state, engine = ModelState.READY, predictor.engine_info
        return ModelStatus(
            resolved.name,
            resolved.version,
            versions,
            state,
            failure,
            builtin,
            resolved.manifest,
            engine,
            build,
        )

    def list_models(self) -> list[ModelStatus]:
        statuses = []
        for name in self._repository.names():
            try:
                statuses.append(self.status(ModelId(name)))
            except VisionRpcError as exc:  # a broken model directory must not hide the others
                statuses.append(ModelStatus(name, "", (), ModelState.FAILED, exc.message, False, None, None))
        return statuses

    def loaded_keys(self) -> list[str]:
        """Ready model versions, least recently used first."""
        with self._lock:
            return [key for key, slot in self._slots.items() if slot.predictor is not None]

    def scheduler_stats(self) -> dict[str, SchedulerStats]:
        """Each ready model version's batch scheduler counters (queue depths, batches), for metrics."""
        with self._lock:
            predictors = [slot.predictor for slot in self._slots.values() if slot.predictor is not None]
        return {predictor.key: predictor.scheduler_stats() for predictor in predictors}

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
            # Before any engine reads them: changed files are FAILED with the file named, never served.
            check_integrity(model.directory, model.key)
            engines, build, start_build = self._initial_engine(model)
            _check_fits(model, engines)
            predictor, build = self._warm_predictor(model, engines, build)
        except (EngineError, VisionRpcError, ValueError, OSError) as exc:
            reason = str(exc) if not isinstance(exc, VisionRpcError) else exc.message
            logger.warning("model %s failed to load: %s", model.key, reason)
            with self._lock:
                self._slots.pop(model.key, None)
                self._failures[model.key] = reason
            # Keep a specific reason (ENGINE_UNAVAILABLE) when there is one: clients can act on it.
            code = exc.reason if isinstance(exc, FailedPreconditionError) else "MODEL_LOAD_FAILED"
            slot.error = FailedPreconditionError(
                f"model {model.key} failed to load: {reason}",
                reason=code,
                metadata={**(exc.metadata if isinstance(exc, VisionRpcError) else {}), "model_id": model.key},
            )
            slot.done.set()
            return
        metrics.MODEL_LOAD_DURATION.labels(model.key).observe(time.perf_counter() - start)
        logger.info(
            "model %s ready on %s in %.0f ms",
            model.key,
            predictor.engine_info,
            (time.perf_counter() - start) * 1e3,
        )
        with self._lock:
            slot.predictor = predictor
            slot.build = build
            self._failures.pop(model.key, None)
            self._evict_beyond_cap(keep=model.key)
        slot.done.set()
        if start_build:
            threading.Thread(
                target=self._build, args=(slot,), name=f"visionrpc-build-{model.key}", daemon=True
            ).start()

    def _initial_engine(self, model: ResolvedModel) -> tuple[tuple[Engine, ...], BuildStatus, bool]:
        """The engine instances to serve with now, the build status, and whether a background build should
        start."""
        selection = self._select(model)
        builder = self._builder
        if selection is None or builder is None or selection.engine != builder.target:
            if selection is not None and builder is None and selection.engine != "onnxruntime":
                raise FailedPreconditionError(
                    f"engine {selection.engine} was selected but this server has no builder for it",
                    reason="ENGINE_UNAVAILABLE",
                )
            return self._fallback(model), NOT_NEEDED, False
        target = builder.target
        with self._lock:
            failure = self._build_failures.get(model.key)
        if failure is not None:
            logger.info("model %s: not rebuilding %s after a failed build: %s", model.key, target, failure)
            return self._fallback(model), BuildStatus(BuildState.FAILED, target, None, failure), False
        try:
            cached = builder.load_cached(model)
        except EngineError as exc:
            reason = f"{target} engine unavailable for this model: {exc}"
            logger.warning("model %s: %s; serving on the fallback engine", model.key, reason)
            with self._lock:
                self._build_failures[model.key] = reason
            return self._fallback(model), BuildStatus(BuildState.FAILED, target, None, reason), False
        if cached is not None:
            loaded = BuildStatus(BuildState.READY, target, 1.0, "loaded from the engine cache")
            return (cached,), loaded, False
        queued = BuildStatus(BuildState.BUILDING, target, None, "queued")
        return self._fallback(model), queued, True

    def _fallback(self, model: ResolvedModel) -> tuple[Engine, ...]:
        """The factory's engine instances for `model` (ONNX Runtime)."""
        made = self._engine_factory(model)
        return tuple(made) if isinstance(made, Sequence) else (made,)

    def _warm_predictor(
        self, model: ResolvedModel, engines: tuple[Engine, ...], build: BuildStatus
    ) -> tuple[Predictor, BuildStatus]:
        """A warmed-up predictor; a cached target engine failing its warm-up is replaced by the fallback."""
        manifest = model.manifest
        batching = self._batching.overridden(manifest.max_batch_size, manifest.max_queue_delay_ms)
        predictor = Predictor(model, engines, batching)
        try:
            predictor.warmup()
            return predictor, build
        except (EngineError, ValueError) as exc:
            predictor.close()
            if build.state is not BuildState.READY:
                raise
            reason = f"the cached {build.target_engine} engine failed its warm-up: {exc}"
        logger.warning("model %s: %s; serving on the fallback engine", model.key, reason)
        with self._lock:
            self._build_failures[model.key] = reason
        fallback = Predictor(model, self._fallback(model), batching)
        fallback.warmup()
        return fallback, BuildStatus(BuildState.FAILED, build.target_engine, None, reason)

    def _select(self, model: ResolvedModel) -> EngineSelection | None:
        if self._selector is not None:
            return self._selector(model)
        if self._builder is not None:
            target = self._builder.target
            return EngineSelection(target, target, "server", "the model manager was given a builder")
        return None

    def _build(self, slot: _Slot) -> None:
        """Background thread: builds the target engine and swaps it in; a failure keeps the fallback."""
        builder = self._builder
        assert builder is not None
        model, target = slot.model, builder.target

        def progress(fraction: float | None, phase: str) -> bool:
            if slot.cancel_build.is_set():
                return False
            done = None if fraction is None else min(1.0, max(0.0, fraction))
            self._set_build(slot, BuildStatus(BuildState.BUILDING, target, done, phase))
            return True

        with self._build_gate:
            if slot.cancel_build.is_set():
                logger.info("model %s: %s build skipped, the model was unloaded", model.key, target)
                return
            self._set_build(slot, BuildStatus(BuildState.BUILDING, target, 0.0, "started"))
            start = time.perf_counter()
            logger.info("model %s: building its %s engine in the background", model.key, target)
            try:
                engine = builder.build(model, progress)
            except Exception as exc:  # any builder failure must leave the model serving on its fallback
                if slot.cancel_build.is_set():
                    logger.info("model %s: %s build stopped, the model was unloaded", model.key, target)
                    return
                reason = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "model %s: %s build failed, still serving on the fallback: %s", model.key, target, reason
                )
                with self._lock:
                    self._build_failures[model.key] = reason
                self._set_build(slot, BuildStatus(BuildState.FAILED, target, None, reason))
                return
        seconds = time.perf_counter() - start
        metrics.ENGINE_BUILD_DURATION.labels(model.key).observe(seconds)
        with self._lock:
            predictor = None if slot.detached else slot.predictor
        try:
            swapped = predictor is not None and predictor.swap_engine(engine)
        except EngineError as exc:
            swapped, reason = False, f"the built {target} engine failed its warm-up: {exc}"
            logger.warning("model %s: %s; still serving on the fallback", model.key, reason)
            with self._lock:
                self._build_failures[model.key] = reason
            self._set_build(slot, BuildStatus(BuildState.FAILED, target, None, reason))
        if not swapped:
            engine.close()  # unloaded meanwhile, or refused: nobody else owns it
            return
        logger.info("model %s: %s engine built in %.1f s and swapped in", model.key, target, seconds)
        self._set_build(slot, BuildStatus(BuildState.READY, target, 1.0, f"built in {seconds:.1f} s"))

    def _set_build(self, slot: _Slot, status: BuildStatus) -> None:
        with self._lock:
            slot.build = status

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
        slot.cancel_build.set()
        if slot.leases == 0:
            self._close(slot)

    @staticmethod
    def _close(slot: _Slot) -> None:
        if slot.predictor is not None:
            logger.info("closing model %s", slot.model.key)
            slot.predictor.close()
            slot.predictor = None


def _check_fits(model: ResolvedModel, engines: tuple[Engine, ...]) -> None:
    """Runs the model as it will serve (probe.py) before it serves: a model that does not fit its manifest
    (say, a dynamic-axes YOLOv8 export declared yolov5) is FAILED with the reason instead of serving
    nonsense. Instances are alike, so the first is run; all are closed when it does not fit."""
    try:
        check_export_size(read_metadata(model.onnx_path), model.manifest)
        check_by_running(engines[0], model.manifest)
    except (ValueError, OSError):
        for engine in engines:
            engine.close()
        raise
