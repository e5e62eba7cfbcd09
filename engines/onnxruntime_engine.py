"""The ONNX Runtime engine: CPU by default; CUDA or TensorRT providers where onnxruntime-gpu offers them.

Thread safety: `InferenceSession.run` may be called from many threads at once on one session (ONNX Runtime
documents this; the GIL is released while it runs), so `infer` takes no lock. Concurrent calls share the
session's intra-op thread pool, which is sized to the machine once, at load.

Example:
    >>> engine = OnnxRuntimeEngine.load(Path("model.onnx"), providers=["cuda", "cpu"])
    >>> engine.warmup()
    >>> outputs = engine.infer({"images": batch})
    >>> engine.close()
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnxruntime as ort

from .base import EngineError, EngineInfo, Tensor, TensorSpec
from .onnxruntime_memory import release_freed_heap, shared_cpu_arena

__all__ = ["OnnxRuntimeEngine", "available_cores", "resolve_providers", "threads_per_instance"]

logger = logging.getLogger(__name__)

_CPU = "CPUExecutionProvider"
# Providers that run on an NVIDIA GPU; we never pass a device_id option, so they use device 0.
_CUDA_PROVIDERS = frozenset(
    {"CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider"}
)
# ONNX element types whose numpy dtype name differs from the ONNX name ("tensor(float)" -> "float32").
_ONNX_TO_NUMPY = {"float": "float32", "double": "float64", "string": "object"}
_PRECISION = {"float32": "fp32", "float16": "fp16", "float64": "fp64", "bfloat16": "bf16"}
# Warm-up size for dynamic non-batch dimensions: a multiple of 32, which stride-32 detectors need, and small
# enough to be quick while still touching every kernel the real sizes will use.
_WARMUP_DYNAMIC_DIM = 320


class OnnxRuntimeEngine:
    """An `Engine` backed by one `onnxruntime.InferenceSession`. Build it with `load`."""

    def __init__(self, session: ort.InferenceSession, path: Path) -> None:
        """Wraps an existing session; prefer `load`, which also chooses providers and threads."""
        self._session: ort.InferenceSession | None = session
        self._path = path
        self._inputs = tuple(_spec(arg, "input") for arg in session.get_inputs())
        self._outputs = tuple(_spec(arg, "output") for arg in session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]
        provider = session.get_providers()[0]
        self._info = EngineInfo(
            engine="onnxruntime",
            provider=provider,
            device=_device(provider),
            precision=_precision(self._inputs[0].dtype) if self._inputs else "unknown",
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
    ) -> OnnxRuntimeEngine:
        """Creates a session for the ONNX file at `path`.

        Args:
            path: the .onnx file (external data files next to it are found by ONNX Runtime).
            providers: execution providers in order of preference, short ("tensorrt", "cuda", "cpu") or full
                ("TensorrtExecutionProvider") names. Default: CPU only. Those this onnxruntime build does not
                offer are dropped with a warning; CPU is always kept, last, as the fallback.
            intra_op_threads: threads one operator may use; None or 0 sizes it to the cores this process may
                run on (CPU affinity and the container's CPU quota).
            inter_op_threads: threads running independent operators in parallel; only used by the parallel
                execution mode, which we do not enable, so 1 is right for nearly every model.
            allow_spinning: let idle intra-op threads busy-wait for the next operator (ONNX Runtime's
                default). Off: the server's batch scheduler runs one batch per engine instance at a time,
                and the cores a spinning pool burns between operators are the ones request threads need for
                decoding, letterboxing and NMS (measured on 2 cores: equal or better throughput, less CPU).

        Raises:
            EngineError: an unknown provider name, a missing or invalid model file, or a failed session.
        """
        path = Path(path)  # tolerate a str from callers that are not type-checked
        if not path.is_file():
            raise EngineError(
                f"model file not found: {path}" + (" (it is a directory)" if path.is_dir() else "")
            )
        if intra_op_threads is not None and intra_op_threads < 0:
            raise EngineError(f"expected intra_op_threads >= 0, got {intra_op_threads}")
        if inter_op_threads < 1:
            raise EngineError(f"expected inter_op_threads >= 1, got {inter_op_threads}")
        chosen = resolve_providers(providers)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads or available_cores()
        options.inter_op_num_threads = inter_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        # Memory: one shared arena growing by what is asked, no per-shape blocks (onnxruntime_memory.py).
        options.enable_mem_pattern = False
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own pybind11 classes, all plain Exception subclasses
            if type(exc).__name__ == "InvalidProtobuf":
                raise EngineError(f"{path} is not a valid ONNX model: {exc}") from exc
            raise EngineError(f"onnxruntime could not create a session for {path}: {exc}") from exc

        release_freed_heap()  # what parsing and optimising the graph freed
        used = session.get_providers()
        # A provider that is offered but cannot start (say the CUDA EP without a usable GPU or CUDA library)
        # is skipped by ONNX Runtime with only a line on stderr; make it visible in our log too.
        for name in chosen:
            if name not in used:
                logger.warning("execution provider %s is available but failed to initialise; not used", name)
        engine = cls(session, path)
        logger.info(
            "loaded %s: providers %s (requested %s), %d intra-op threads, input %s",
            path,
            used,
            list(providers) if providers is not None else "default",
            options.intra_op_num_threads,
            ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in engine.inputs),
        )
        return engine

    @classmethod
    def load_instances(
        cls,
        path: Path,
        count: int,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> list[OnnxRuntimeEngine]:
        """`count` independent sessions of one model (engine instances), sharing the intra-op threads.

        Each instance gets `threads_per_instance(count, intra_op_threads)` threads, so two instances on two
        cores run two batches on one core each instead of fighting over both.

        Raises:
            EngineError: as `load`, or a count below 1; instances already created are closed first.
        """
        if count < 1:
            raise EngineError(f"expected at least one engine instance, got {count}")
        threads = threads_per_instance(count, intra_op_threads)
        engines: list[OnnxRuntimeEngine] = []
        try:
            for _ in range(count):
                engines.append(cls.load(path, providers=providers, intra_op_threads=threads))
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        return engines

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def path(self) -> Path:
        return self._path

    @property
    def closed(self) -> bool:
        return self._session is None

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Runs one batch; thread-safe. Inputs must match the model's names, dtypes and fixed dimensions.

        Nothing is cast: a float64 array for a float32 input is an error, not a silent copy.

        Raises:
            EngineError: a missing or unexpected input, a wrong dtype or shape, a failed run, a closed engine.
        """
        # One read of the attribute: a concurrent close() cannot pull the session out from under this call,
        # the local reference keeps it alive until the run returns.
        session = self._session
        if session is None:
            raise EngineError(f"the engine for {self._path} is closed")
        self._check_inputs(inputs)
        try:
            results = session.run(self._output_names, dict(inputs))
        except (
            Exception
        ) as exc:  # ORT's pybind11 error classes (InvalidArgument, Fail, RuntimeException, ...)
            raise EngineError(f"onnxruntime failed to run {self._path.name}: {exc}") from exc
        return dict(zip(self._output_names, (np.asarray(r) for r in results), strict=True))

    def warmup(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
        """Runs one all-zero batch so the first real request does not pay for lazy initialisation.

        Args:
            shapes: input name -> the shape to warm up with. Inputs not named here use their fixed
                dimensions, batch size 1 for a dynamic first dimension, and 320 for other dynamic ones
                (a multiple of 32, as stride-32 detectors need). Give the real serving size where it is
                known: some providers (TensorRT) build per-shape kernels.

        Raises:
            EngineError: an unknown input name in `shapes`, or the dummy batch fails to run.
        """
        shapes = shapes or {}
        unknown = sorted(set(shapes) - {spec.name for spec in self._inputs})
        if unknown:
            raise EngineError(
                f"warm-up shapes name unknown inputs {unknown}; the model has {self._input_names()}"
            )
        batch: dict[str, Tensor] = {}
        for spec in self._inputs:
            shape = shapes.get(spec.name) or _warmup_shape(spec.shape)
            try:
                batch[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
            except TypeError as exc:
                raise EngineError(f"cannot build a warm-up tensor for input {spec.name!r}: {exc}") from exc
        self.infer(batch)
        logger.debug("warmed up %s with %s", self._path, {name: a.shape for name, a in batch.items()})

    def close(self) -> None:
        """Releases the session once in-flight calls finish; later calls raise EngineError."""
        self._session = None

    def __enter__(self) -> OnnxRuntimeEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._session is None else self._info.provider
        return f"OnnxRuntimeEngine({str(self._path)!r}, {state})"

    def _input_names(self) -> list[str]:
        return [spec.name for spec in self._inputs]

    def _check_inputs(self, inputs: Mapping[str, Tensor]) -> None:
        expected = self._input_names()
        missing = [name for name in expected if name not in inputs]
        unexpected = sorted(set(inputs) - set(expected))
        if missing or unexpected:
            raise EngineError(
                f"expected inputs {expected}, got {sorted(inputs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {unexpected}" if unexpected else "")
            )
        for spec in self._inputs:
            array = inputs[spec.name]
            if not isinstance(array, np.ndarray):
                raise EngineError(f"input {spec.name!r}: expected a numpy array, got {type(array).__name__}")
            if array.dtype.name != spec.dtype:
                raise EngineError(f"input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype.name}")
            fits = len(array.shape) == len(spec.shape) and all(
                want is None or want == got for want, got in zip(spec.shape, array.shape, strict=False)
            )
            if not fits:
                shown = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
                raise EngineError(f"input {spec.name!r}: expected shape {shown}, got {array.shape}")


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Maps requested provider names to the ones this onnxruntime build offers, CPU last.

    Raises:
        EngineError: a name that is no ONNX Runtime execution provider at all (most likely a typo).
    """
    available = ort.get_available_providers()
    known = {name.lower(): name for name in ort.get_all_providers()}
    known.update({name.lower().removesuffix("executionprovider"): name for name in ort.get_all_providers()})
    chosen: list[str] = []
    for name in requested or ("cpu",):
        full = known.get(name.strip().lower())
        if full is None:
            short = sorted(n.removesuffix("ExecutionProvider").lower() for n in ort.get_all_providers())
            raise EngineError(f"unknown execution provider {name!r}; expected one of {short}")
        if full not in available:
            logger.warning(
                "execution provider %s (requested as %r) is not available in this onnxruntime build; "
                "available: %s; falling back to the next one",
                full,
                name,
                available,
            )
        elif full not in chosen:
            chosen.append(full)
    # CPU runs every operator, so it is the fallback for nodes the others cannot take, and it must come last:
    # ONNX Runtime assigns each node to the first provider in the list that supports it.
    if _CPU in chosen[:-1]:
        logger.info("moved CPUExecutionProvider to the end of %s: it is the fallback for the others", chosen)
        chosen.remove(_CPU)
    if _CPU not in chosen:
        chosen.append(_CPU)
    return chosen


def threads_per_instance(instances: int, intra_op_threads: int | None = None) -> int:
    """Intra-op threads for each of `instances` engine instances: the threads one engine would have
    (`intra_op_threads`, or 0/None for the cores this process may use) split evenly, at least one each.

    Example: on 2 cores, `threads_per_instance(2) == 1` and `threads_per_instance(1) == 2`.
    """
    if instances < 1:
        raise EngineError(f"expected at least one engine instance, got {instances}")
    return max(1, (intra_op_threads or available_cores()) // instances)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def _cgroup_cpu_quota() -> float | None:
    # A container limited to 2 CPUs on a 64-core host still sees 64 cores in its affinity mask; ORT would
    # start 64 threads that the quota then throttles. cgroup v2 exposes "quota period" (or "max") in cpu.max,
    # v1 the two numbers in separate files (-1 for no limit).
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _spec(arg: Any, kind: str) -> TensorSpec:
    # `arg` is onnxruntime's NodeArg (untyped): .name, .type like "tensor(float)", .shape with ints for fixed
    # dimensions and strings or None for symbolic or unknown ones.
    type_name: str = arg.type
    if not (type_name.startswith("tensor(") and type_name.endswith(")")):
        raise EngineError(f"{kind} {arg.name!r} has type {type_name}; only tensors are supported")
    element = type_name[len("tensor(") : -1]
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(name=arg.name, dtype=_ONNX_TO_NUMPY.get(element, element), shape=shape)


def _device(provider: str) -> str:
    if provider == _CPU:
        return "cpu"
    if provider in _CUDA_PROVIDERS:
        return "cuda:0"
    return provider.removesuffix("ExecutionProvider").lower()


def _precision(dtype: str) -> str:
    return _PRECISION.get(dtype, dtype)


def _warmup_shape(shape: tuple[int | None, ...]) -> tuple[int, ...]:
    return tuple(
        dim if dim is not None else (1 if axis == 0 else _WARMUP_DYNAMIC_DIM)
        for axis, dim in enumerate(shape)
    )
