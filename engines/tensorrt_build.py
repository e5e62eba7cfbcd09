"""Building a TensorRT engine ("plan") from ONNX: parser, builder config, profiles, timing cache, progress.

Written against the TensorRT 10 Python API (explicit batch is the only mode; `create_network()` takes no
EXPLICIT_BATCH flag). TensorRT 11 differences are handled where they bite:

- 11 builds strongly typed networks only: the FP16/INT8 builder flags, `platform_has_fast_fp16` and the INT8
  calibrators are gone, and precision comes from the ONNX graph itself (convert it with NVIDIA ModelOpt
  AutoCast for FP16, or quantise it with Q/DQ nodes for INT8). We detect that by the absence of
  `BuilderFlag.FP16`, build the network as typed and report the precision as "strongly-typed".
- JetPack (Jetson) stays on TensorRT 10.x; DLA builds use the 10.x API (`default_device_type`, `DLA_core`,
  `GPU_FALLBACK`).

A build takes seconds to many minutes; run it off the serving path. `progress(fraction, phase)` is called from
TensorRT's builder threads (through `IProgressMonitor`, TensorRT >= 10) and may return False to cancel.

Example:
    >>> built = build_engine(Path("model.onnx"), plan, progress=lambda f, phase: True)
    >>> engine = TensorRTEngine.from_plan(built.plan, name="model", precision=built.precision)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._trt import import_tensorrt, make_logger
from .base import EngineError
from .engine_cache import atomic_write
from .tensorrt_plan import BuildPlan, Precision

__all__ = ["STRONGLY_TYPED", "BuiltEngine", "ProgressCallback", "build_engine"]

logger = logging.getLogger(__name__)

# (fraction done in [0, 1] or None when unknown, phase name) -> False to cancel the build.
ProgressCallback = Callable[[float | None, str], bool]
# The precision reported for TensorRT 11 builds: the types written in the ONNX graph decide, not a flag.
STRONGLY_TYPED = "strongly-typed"


@dataclass(frozen=True, slots=True)
class BuiltEngine:
    plan: bytes = field(repr=False)
    precision: str  # what was actually enabled: "fp16" may have become "fp32" on a GPU without fast FP16
    tensorrt_version: str
    seconds: float


def build_engine(onnx_path: Path, plan: BuildPlan, progress: ProgressCallback | None = None) -> BuiltEngine:
    """Parses `onnx_path` and builds a serialized engine as `plan` describes.

    Raises:
        EngineError: TensorRT missing, an ONNX the parser refuses, inputs that do not match the plan's
            profiles, a DLA core that does not exist, a cancelled or failed build.
    """
    trt = import_tensorrt()
    report = progress or (lambda fraction, phase: True)
    start = time.perf_counter()
    trt_logger = make_logger(trt)
    builder = trt.Builder(trt_logger)
    # TensorRT 10: explicit batch is the default and only mode, so no creation flags. TensorRT 11: every
    # network is strongly typed whatever the flags say.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not report(0.0, "parsing ONNX"):
        raise EngineError(f"the TensorRT build of {onnx_path.name} was cancelled")
    # parse_from_file (not parse(bytes)) so weights stored as external data next to the model are found.
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(
            f"TensorRT's ONNX parser refused {onnx_path.name}: {'; '.join(errors) or 'no detail'}"
        )
    _check_inputs(network, plan, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    if plan.dynamic:
        profile = builder.create_optimization_profile()
        for item in plan.profiles:
            profile.set_shape(item.name, item.min, item.opt, item.max)
        config.add_optimization_profile(profile)
    precision = _configure_precision(trt, builder, config, plan)
    _configure_dla(trt, builder, config, plan)
    _load_timing_cache(config, plan.timing_cache)
    cancelled = threading.Event()
    monitor = _progress_monitor(trt, report, cancelled)
    if monitor is not None:
        config.progress_monitor = monitor  # must outlive the build: `monitor` stays referenced until return
    report(None, "building")
    logger.info(
        "building a TensorRT %s engine for %s (%s, workspace %d MiB, profiles %s%s)",
        trt.__version__,
        onnx_path,
        precision,
        plan.workspace_bytes >> 20,
        [p.to_list() for p in plan.profiles],
        f", DLA core {plan.dla_core}" if plan.dla_core >= 0 else "",
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        if cancelled.is_set():
            raise EngineError(f"the TensorRT build of {onnx_path.name} was cancelled")
        raise EngineError(f"TensorRT could not build {onnx_path.name}: {trt_logger.errors()}")
    _save_timing_cache(config, plan.timing_cache)
    data = bytes(serialized)  # IHostMemory exposes the buffer protocol
    seconds = time.perf_counter() - start
    logger.info("built %s in %.1f s (%.1f MB plan)", onnx_path.name, seconds, len(data) / 1e6)
    report(1.0, "done")
    return BuiltEngine(data, precision, str(trt.__version__), seconds)


def _check_inputs(network: Any, plan: BuildPlan, onnx_path: Path) -> None:
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    profiled = sorted(p.name for p in plan.profiles)
    if sorted(names) != profiled:
        raise EngineError(f"{onnx_path.name} has inputs {sorted(names)}; the build plan profiles {profiled}")


def _configure_precision(trt: Any, builder: Any, config: Any, plan: BuildPlan) -> str:
    if plan.precision is Precision.FP32:
        return "fp32"
    if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11+: strongly typed only
        if plan.calibration_cache is not None:
            raise EngineError(
                f"TensorRT {trt.__version__} removed implicit INT8 calibration (calibration caches); "
                "quantise the ONNX model with Q/DQ nodes (NVIDIA ModelOpt) instead"
            )
        logger.warning(
            "TensorRT %s has no %s builder flag: the engine keeps the ONNX model's own types; convert the "
            "model with NVIDIA ModelOpt (AutoCast for FP16, Q/DQ for INT8) to get reduced precision",
            trt.__version__,
            plan.precision.value.upper(),
        )
        return STRONGLY_TYPED
    # platform_has_fast_fp16 is deprecated late in 10.x but still answers; treat its absence as "yes".
    fast_fp16 = bool(getattr(builder, "platform_has_fast_fp16", True))
    if plan.precision is Precision.FP16:
        if not fast_fp16:
            logger.warning("this GPU has no fast FP16; building the engine in FP32 instead")
            return "fp32"
        config.set_flag(trt.BuilderFlag.FP16)
        return "fp16"
    # INT8 (TensorRT 10, implicit quantisation): FP16 too, so layers without INT8 kernels avoid FP32.
    config.set_flag(trt.BuilderFlag.INT8)
    if fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.calibration_cache is not None:
        config.int8_calibrator = _cache_calibrator(trt, plan.calibration_cache.read_bytes())
    else:
        logger.info(
            "INT8 without a calibration cache: the model must carry Q/DQ nodes (explicit quantisation)"
        )
    return "int8"


def _configure_dla(trt: Any, builder: Any, config: Any, plan: BuildPlan) -> None:
    if plan.dla_core < 0:
        return
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if plan.dla_core >= cores:
        raise EngineError(f"DLA core {plan.dla_core} requested; this device has {cores} DLA core(s)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = plan.dla_core
    # Layers DLA cannot run (and batches beyond its limit) run on the GPU instead of failing the build.
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    dla_batch = int(getattr(builder, "max_DLA_batch_size", 0))
    if dla_batch and plan.max_batch > dla_batch:
        logger.warning(
            "max batch %d exceeds DLA's %d: larger batches will run on the GPU fallback",
            plan.max_batch,
            dla_batch,
        )


def _load_timing_cache(config: Any, path: Path | None) -> None:
    """Starts from the persisted timing cache, so rebuilds (new model versions, other precisions) skip the
    tactic timing already done on this GPU; a cache TensorRT rejects is replaced by an empty one."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:  # TensorRT raises its own exception types from pybind11
        logger.warning("timing cache %s is unusable (%s); starting an empty one", path, exc)
        cache = config.create_timing_cache(b"")
    # ignore_mismatch=False: a cache from another GPU or TensorRT version must not steer tactic choice.
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("timing cache %s does not match this GPU or TensorRT; starting an empty one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None:
        return
    try:
        atomic_write(path, [bytes(config.get_timing_cache().serialize())])
    except OSError as exc:  # a lost timing cache only makes the next build slower
        logger.warning("could not save the timing cache to %s: %s", path, exc)


def _progress_monitor(trt: Any, report: ProgressCallback, cancelled: threading.Event) -> Any:
    """An `IProgressMonitor` turning TensorRT's nested phases into one fraction (None before TensorRT 10)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc]  # trt is untyped
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT calls from several builder threads
            self._phases: dict[str, list[Any]] = {}  # name -> [parent, steps, completed, active child]
            self._best = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = [parent_phase, max(1, num_steps), 0, None]
                if parent_phase in self._phases:
                    self._phases[parent_phase][3] = phase_name

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][2] = step + 1
                fraction = self._fraction()
            keep_going = bool(report(fraction, phase_name))
            if not keep_going:
                cancelled.set()
            return keep_going

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                entry = self._phases.pop(phase_name, None)
                if entry is not None and entry[0] in self._phases:
                    parent = self._phases[entry[0]]
                    parent[3] = None

        def _fraction(self) -> float:
            # Progress of the outermost phase, refined by its active child (and so on down), never backwards.
            roots = [name for name, entry in self._phases.items() if entry[0] not in self._phases]
            if roots:
                self._best = max(self._best, min(0.99, self._depth(roots[-1])))
            return self._best

        def _depth(self, name: str) -> float:
            _, steps, completed, child = self._phases[name]
            inner = self._depth(child) if child in self._phases else 0.0
            return float(min(1.0, (completed + inner) / steps))

    return Monitor()


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An INT8 calibrator that only replays a calibration cache made elsewhere (no calibration data here)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]  # trt is untyped
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: TensorRT then relies on read_calibration_cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: Any) -> None:
            return None

    return CacheCalibrator()
