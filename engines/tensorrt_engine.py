"""The native TensorRT engine: a deserialized plan run through one execution context on one CUDA stream.

Memory: every I/O tensor gets pinned host memory and device memory sized once, at load, for the largest shape
its optimisation profile allows (outputs: the shape TensorRT infers for the largest inputs). Tensor addresses
are bound to the context once; a call only copies into the pinned buffers, enqueues host->device copies, the
engine and device->host copies on the stream, and synchronises. Nothing is allocated per call. On integrated
GPUs (Jetson) the buffers are mapped pinned memory that the GPU reads in place, so the copies are skipped.

Thread safety: an `IExecutionContext` holds per-run state (input shapes, bound addresses) and must not be used
by two threads at once, and the buffers are shared, so `infer` runs under a lock. One context serialises
calls; throughput beyond that comes from batching, which the profile allows up to `max_batch` (larger batches
are split into chunks of `max_batch` and the outputs concatenated).

Imports of `tensorrt` and `cuda` happen when an engine is created, never at module import; without them every
entry point raises EngineError saying what is missing.

Example:
    >>> built = build_engine(Path("model.onnx"), plan)
    >>> engine = TensorRTEngine.from_plan(built.plan, name="yolo/1", precision=built.precision)
    >>> outputs = engine.infer({"images": batch})
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from ._cuda import CudaDevice, CudaStream, TensorBuffer, import_cudart
from ._trt import TensorRTAvailability, import_tensorrt, make_logger, probe_tensorrt
from .base import EngineError, EngineInfo, Tensor, TensorSpec
from .tensorrt_build import STRONGLY_TYPED, BuiltEngine, ProgressCallback, build_engine
from .tensorrt_plan import numpy_dtype_for_trt

__all__ = [
    "STRONGLY_TYPED",
    "BuiltEngine",
    "ProgressCallback",
    "TensorRTAvailability",
    "TensorRTEngine",
    "build_engine",
    "probe_tensorrt",
]

logger = logging.getLogger(__name__)


class _Binding:
    """One I/O tensor: its spec, its profile's shape range (inputs) and its buffers."""

    def __init__(
        self, spec: TensorSpec, dtype: np.dtype[Any], low: tuple[int, ...], high: tuple[int, ...]
    ) -> None:
        self.spec = spec
        self.dtype = dtype
        self.low = low  # profile min (inputs) / unused for outputs
        self.high = high  # profile max (inputs) / largest inferred shape (outputs)
        self.buffer: TensorBuffer | None = None


class TensorRTEngine:
    """An `Engine` backed by a TensorRT plan. Create it with `from_plan`."""

    def __init__(self, plan: bytes, *, name: str, precision: str, dla_core: int = -1) -> None:
        """Deserializes `plan` (see `from_plan`)."""
        trt = import_tensorrt()
        import_cudart()  # fail early, with a clear message, when cuda-python is missing
        self._name = name
        self._lock = threading.Lock()
        self._closed = False
        self._device = CudaDevice.query(0)
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        if dla_core >= 0:
            self._runtime.DLA_core = dla_core
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError(
                f"TensorRT could not deserialize the engine for {name}: {self._logger.errors()}"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(
                f"TensorRT could not create an execution context for {name}: {self._logger.errors()}"
            )
        self._inputs: dict[str, _Binding] = {}
        self._outputs: dict[str, _Binding] = {}
        self._read_io(trt)
        self._stream = CudaStream()
        try:
            self._allocate()
        except BaseException:
            self._free()  # a half-built engine must not leak pinned or device memory
            raise
        self._max_batch = min((b.high[0] for b in self._inputs.values() if b.high), default=1)
        # Chunking a large batch is only correct when every output is batch-major like the inputs.
        self._chunkable = all(b.spec.shape and b.spec.shape[0] is None for b in self._outputs.values())
        self._info = EngineInfo(
            engine="tensorrt",
            provider=f"TensorRT {trt.__version__}",
            device=f"dla:{dla_core}" if dla_core >= 0 else f"cuda:{self._device.index}",
            precision=precision,
        )
        logger.info(
            "loaded TensorRT engine %s on %s (%s): inputs %s, max batch %d%s",
            name,
            self._device.name,
            precision,
            ", ".join(f"{b.spec.name}:{b.spec.dtype}{list(b.high)}" for b in self._inputs.values()),
            self._max_batch,
            ", zero-copy mapped buffers" if self._mapped else "",
        )

    @classmethod
    def from_plan(cls, plan: bytes, *, name: str, precision: str, dla_core: int = -1) -> TensorRTEngine:
        """Deserializes a plan built by `build_engine` (for this TensorRT and GPU) and allocates its buffers.

        Args:
            plan: the serialized engine.
            name: for logs and errors (the model key).
            precision: what the plan was built with (`BuiltEngine.precision`), reported in `info`.
            dla_core: the DLA core the plan was built for (-1: GPU).

        Raises:
            EngineError: TensorRT or cuda-python missing, no GPU, a plan TensorRT rejects (another version or
                GPU), out of memory, an I/O type without a numpy equivalent, data-dependent output shapes.
        """
        return cls(plan, name=name, precision=precision, dla_core=dla_core)

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(b.spec for b in self._inputs.values())

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(b.spec for b in self._outputs.values())

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def closed(self) -> bool:
        return self._closed

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Runs one batch; thread-safe (serialised). Batches over `max_batch` run in chunks.

        Raises:
            EngineError: missing or unexpected inputs, wrong dtype or shape, a shape outside the profile, a
            failed
                run, a closed engine.
        """
        batch = self._check_inputs(inputs)
        if batch <= self._max_batch:
            return self._run(inputs)
        if not self._chunkable:
            raise EngineError(f"{self._name}: expected a batch of at most {self._max_batch}, got {batch}")
        parts = [
            self._run({name: array[start : start + self._max_batch] for name, array in inputs.items()})
            for start in range(0, batch, self._max_batch)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in self._outputs}

    def warmup(self) -> None:
        """Runs one all-zero batch at the profile's smallest shapes (CUDA loads kernels lazily, here)."""
        self._run({name: np.zeros(b.low, dtype=b.dtype) for name, b in self._inputs.items()})

    def close(self) -> None:
        """Waits for the running call, then frees the context, the engine and every buffer; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._stream.synchronize()
            finally:
                self._free()
        logger.info("closed TensorRT engine %s", self._name)

    def __enter__(self) -> TensorRTEngine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorRTEngine({self._name!r}, {'closed' if self._closed else self._info.device})"

    # -- internals ---------------------------------------------------------------------------------------

    @property
    def _mapped(self) -> bool:
        return self._device.integrated and self._device.can_map_host_memory

    def _live(self) -> tuple[Any, Any]:
        """(engine, execution context), or EngineError once closed."""
        if self._engine is None or self._context is None:
            raise EngineError(f"the TensorRT engine for {self._name} is closed")
        return self._engine, self._context

    def _read_io(self, trt: Any) -> None:
        engine, context = self._live()
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            dtype = numpy_dtype_for_trt(engine.get_tensor_dtype(name))
            raw = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, dtype.name, tuple(None if d < 0 else d for d in raw))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if any(d < 0 for d in raw):
                    low, _, high = (
                        tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0)
                    )
                else:
                    low = high = raw
                self._inputs[name] = _Binding(spec, dtype, low, high)
                if not context.set_input_shape(name, high):
                    raise EngineError(
                        f"{self._name}: TensorRT refused input {name!r} at its profile max {high}"
                    )
            else:
                self._outputs[name] = _Binding(spec, dtype, (), ())
        # With every input at its largest shape, each output's shape is its largest too.
        for name, binding in self._outputs.items():
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineError(
                    f"{self._name}: output {name!r} has a data-dependent shape {shape}; not supported"
                )
            binding.high = shape

    def _free(self) -> None:
        # Release order matters to TensorRT: context before engine before runtime; buffers after the context.
        self._context = None
        self._engine = None
        self._runtime = None
        for binding in (*self._inputs.values(), *self._outputs.values()):
            if binding.buffer is not None:
                binding.buffer.close()
                binding.buffer = None
        self._stream.close()

    def _allocate(self) -> None:
        for binding in (*self._inputs.values(), *self._outputs.values()):
            nbytes = max(1, int(np.prod(binding.high, dtype=np.int64)) * binding.dtype.itemsize)
            binding.buffer = TensorBuffer(nbytes, mapped=self._mapped)
            # Buffers never move, so addresses are bound once for the engine's life.
            if not self._live()[1].set_tensor_address(binding.spec.name, binding.buffer.device_address):
                raise EngineError(f"{self._name}: TensorRT refused the address of {binding.spec.name!r}")

    def _check_inputs(self, inputs: Mapping[str, Tensor]) -> int:
        expected = list(self._inputs)
        if sorted(inputs) != sorted(expected):
            raise EngineError(f"expected inputs {expected}, got {sorted(inputs)}")
        batches = set()
        for name, binding in self._inputs.items():
            array = inputs[name]
            if not isinstance(array, np.ndarray):
                raise EngineError(f"input {name!r}: expected a numpy array, got {type(array).__name__}")
            if array.dtype != binding.dtype:
                raise EngineError(
                    f"input {name!r}: expected dtype {binding.dtype.name}, got {array.dtype.name}"
                )
            shape = array.shape
            # The batch may exceed the profile (it is chunked); every other dimension must lie within it.
            fits = len(shape) == len(binding.low) and all(
                lo <= got <= hi
                for lo, got, hi in zip(binding.low[1:], shape[1:], binding.high[1:], strict=True)
            )
            if not fits or (shape and shape[0] < binding.low[0]):
                raise EngineError(
                    f"input {name!r}: expected a shape between {binding.low} and {binding.high}, got {shape}"
                )
            batches.add(shape[0] if shape else 1)
        if len(batches) > 1:
            raise EngineError(f"inputs disagree on the batch size: {sorted(batches)}")
        return batches.pop() if batches else 1

    def _run(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with self._lock:
            if self._closed:
                raise EngineError(f"the TensorRT engine for {self._name} is closed")
            context, stream = self._live()[1], self._stream
            for name, binding in self._inputs.items():
                array = inputs[name]
                assert binding.buffer is not None
                if not context.set_input_shape(name, array.shape):
                    raise EngineError(f"input {name!r}: TensorRT refused shape {array.shape}")
                staged = binding.buffer.host_view(binding.dtype, array.shape)
                np.copyto(staged, array)
                binding.buffer.to_device(staged.nbytes, stream)
            if not context.execute_async_v3(stream.handle):
                raise EngineError(f"TensorRT failed to enqueue {self._name}: {self._logger.errors()}")
            views = {}
            for name, binding in self._outputs.items():
                assert binding.buffer is not None
                view = binding.buffer.host_view(
                    binding.dtype, tuple(int(d) for d in context.get_tensor_shape(name))
                )
                binding.buffer.to_host(view.nbytes, stream)
                views[name] = view
            stream.synchronize()
            # Copies: the pinned buffers are overwritten by the next call.
            return {name: view.copy() for name, view in views.items()}
