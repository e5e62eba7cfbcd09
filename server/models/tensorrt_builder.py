"""The TensorRT `EngineBuilder`: a model's build plan and cache key, the engine cache, and the build itself.

For a model it derives the optimisation profile from the ONNX inputs and the manifest's input size, keys the
engine cache by the model's sha256 + TensorRT version + GPU + precision + profile (+ DLA core), loads a cached
plan when one verifies, and otherwise builds one (on the manager's background thread) and caches it.
Deriving plans and keys needs no TensorRT (`plan_for`, `cache_key`); loading and building do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visionrpc.engines import Engine, EngineError
from visionrpc.engines.engine_cache import DeviceIdentity, EngineCache, EngineCacheKey, file_sha256
from visionrpc.engines.tensorrt_engine import (
    TensorRTAvailability,
    TensorRTEngine,
    build_engine,
    probe_tensorrt,
)
from visionrpc.engines.tensorrt_plan import BuildPlan, Precision, derive_profiles, onnx_input_specs

from ..manifest import ResolvedModel
from .builds import BuildProgress

__all__ = ["TensorRTBuilder", "TensorRTSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TensorRTSettings:
    """The server's TensorRT options (`--engine-cache-dir`, `--trt-*`, `--dla-core`)."""

    cache_dir: Path
    workspace_bytes: int = 1 << 30
    max_batch: int = 8
    precision: Precision = Precision.FP16
    dla_core: int = -1
    calibration_cache: Path | None = None


class TensorRTBuilder:
    """Builds and caches TensorRT engines for models; an `EngineBuilder`."""

    def __init__(
        self,
        settings: TensorRTSettings,
        *,
        availability: Callable[[], TensorRTAvailability] = probe_tensorrt,
    ) -> None:
        self._settings = settings
        self._cache = EngineCache(settings.cache_dir)
        self._availability = availability
        self._lock = threading.Lock()
        self._identity: DeviceIdentity | None = None
        # (path, size, mtime_ns) -> sha256: hashing a large ONNX file on every load would be wasted work.
        self._hashes: dict[tuple[str, int, int], str] = {}

    @property
    def target(self) -> str:
        return "tensorrt"

    @property
    def cache(self) -> EngineCache:
        return self._cache

    def plan_for(self, model: ResolvedModel, identity: DeviceIdentity) -> BuildPlan:
        """The build plan of `model`: profiles from its ONNX inputs and manifest, the server's settings.

        Raises:
            EngineError: inputs the profile rules cannot cover, or a contradiction with the manifest.
        """
        settings = self._settings
        profiles = derive_profiles(
            onnx_input_specs(model.onnx_path),
            input_width=model.manifest.input_width,
            input_height=model.manifest.input_height,
            max_batch=settings.max_batch,
        )
        try:
            return BuildPlan(
                profiles=profiles,
                precision=settings.precision,
                workspace_bytes=settings.workspace_bytes,
                dla_core=settings.dla_core,
                timing_cache=self._cache.timing_cache_path(identity),
                calibration_cache=settings.calibration_cache,
            )
        except ValueError as exc:
            raise EngineError(f"invalid TensorRT build settings for {model.key}: {exc}") from exc

    def cache_key(self, model: ResolvedModel, plan: BuildPlan, identity: DeviceIdentity) -> EngineCacheKey:
        calibration = plan.calibration_cache
        return EngineCacheKey.for_build(
            self._model_sha256(model.onnx_path),
            identity,
            plan,
            calibration_sha256=file_sha256(calibration) if calibration is not None else "",
        )

    def load_cached(self, model: ResolvedModel) -> Engine | None:
        identity = self._device_identity()
        plan = self.plan_for(model, identity)
        key = self.cache_key(model, plan, identity)
        entry = self._cache.read(key)
        if entry is None:
            logger.info("no cached TensorRT engine for %s (key %s)", model.key, key.digest()[:16])
            return None
        try:
            engine = TensorRTEngine.from_plan(
                entry.plan,
                name=model.key,
                precision=entry.metadata.get("precision", plan.precision.value),
                dla_core=plan.dla_core,
            )
        except EngineError as exc:
            # The header matched but TensorRT still refused the plan (a driver update, say): rebuild it.
            logger.warning("cached TensorRT engine %s did not load (%s); it will be rebuilt", entry.path, exc)
            entry.path.unlink(missing_ok=True)
            return None
        logger.info("loaded TensorRT engine for %s from the cache (%s)", model.key, entry.path)
        return engine

    def build(self, model: ResolvedModel, progress: BuildProgress) -> Engine:
        identity = self._device_identity()
        plan = self.plan_for(model, identity)
        key = self.cache_key(model, plan, identity)
        built = build_engine(model.onnx_path, plan, progress)
        try:
            self._cache.write(
                key,
                built.plan,
                metadata={
                    "model": model.key,
                    "precision": built.precision,
                    "build_seconds": f"{built.seconds:.1f}",
                },
            )
        except OSError as exc:  # the engine still serves; only the next start pays for the build again
            logger.warning("could not cache the TensorRT engine for %s: %s", model.key, exc)
        return TensorRTEngine.from_plan(
            built.plan, name=model.key, precision=built.precision, dla_core=plan.dla_core
        )

    def _device_identity(self) -> DeviceIdentity:
        with self._lock:
            if self._identity is None:
                self._identity = self._availability().identity()
            return self._identity

    def _model_sha256(self, path: Path) -> str:
        stat = path.stat()
        marker = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(marker)
        if known is None:
            known = file_sha256(path)
            with self._lock:
                self._hashes[marker] = known
        return known
