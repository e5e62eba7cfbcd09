"""Device memory, pinned host memory and streams through NVIDIA's cuda-python runtime bindings.

Why cuda-python (`cuda.bindings.runtime`) rather than pycuda: it is NVIDIA's maintained binding, the one
TensorRT's own Python samples use; it drives the CUDA *runtime* API, whose calls use the device's primary
context from any thread, so a server thread pool needs none of pycuda's per-thread context push/pop; and it is
what the GPU machines and NVIDIA's containers already ship.

Every call returns `(cudaError_t, *results)`; `_check` turns a failure into an EngineError naming the call.
Nothing here runs on a machine without CUDA: import errors become EngineError too.

On integrated GPUs (Jetson) host and device share one DRAM, so a *mapped* pinned allocation is directly
addressable by the GPU: `TensorBuffer(mapped=True)` uses one allocation for both sides and skips the copies.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import EngineError, Tensor

__all__ = ["CudaDevice", "CudaStream", "TensorBuffer", "import_cudart"]


def import_cudart() -> Any:
    """The cuda-python runtime module (`cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6).

    Raises:
        EngineError: cuda-python is not installed or its CUDA libraries cannot load.
    """
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # the pre-12.6 layout

        return cudart
    except ImportError as exc:
        raise EngineError(
            f"cuda-python is not installed ({exc}); the TensorRT engine needs it: pip install cuda-python"
        ) from exc


def _check(cudart: Any, result: Any, call: str) -> Any:
    """Unpacks a cuda-python result tuple, raising EngineError on any error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        try:
            _, message = cudart.cudaGetErrorString(err)
            text = message.decode() if isinstance(message, bytes) else str(message)
        except Exception:  # the error path must never hide the original failure
            text = "no description"
        raise EngineError(f"CUDA call {call} failed: {getattr(err, 'name', err)} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True, slots=True)
class CudaDevice:
    """The facts about a CUDA device that engines and cache keys need."""

    index: int
    name: str
    compute_capability: str
    integrated: bool  # shares DRAM with the CPU (Jetson): mapped pinned memory avoids copies
    can_map_host_memory: bool

    @classmethod
    def query(cls, index: int = 0) -> CudaDevice:
        """Reads device `index`'s properties.

        Raises:
            EngineError: no CUDA, no driver, or no such device.
        """
        cudart = import_cudart()
        count = _check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if index >= int(count):
            raise EngineError(f"no CUDA device {index}: {count} visible")
        props = _check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        raw_name = props.name
        name = raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)
        return cls(
            index=index,
            name=name.strip(),
            compute_capability=f"{props.major}.{props.minor}",
            integrated=bool(props.integrated),
            can_map_host_memory=bool(props.canMapHostMemory),
        )


class CudaStream:
    """A non-blocking CUDA stream (it does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        self._cudart = import_cudart()
        self._stream = _check(
            self._cudart,
            self._cudart.cudaStreamCreateWithFlags(self._cudart.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )

    @property
    def raw(self) -> Any:
        """The cuda-python `cudaStream_t`, for other cuda-python calls."""
        return self._stream

    @property
    def handle(self) -> int:
        """The stream as an integer handle, as TensorRT's `execute_async_v3(stream_handle=...)` takes it."""
        if self._stream is None:
            raise EngineError("the CUDA stream was destroyed")
        return int(self._stream)

    def synchronize(self) -> None:
        _check(self._cudart, self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            _check(self._cudart, self._cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class TensorBuffer:
    """Pinned host memory plus device memory for one tensor, sized once for its largest shape.

    Pinned (page-locked) host memory is what makes `cudaMemcpyAsync` truly asynchronous and lets the DMA
    engine copy at full bus speed; pageable memory is staged through a driver buffer first. With `mapped=True`
    (integrated GPUs) one mapped pinned allocation serves both sides and the copies are skipped.
    """

    def __init__(self, nbytes: int, *, mapped: bool = False) -> None:
        if nbytes <= 0:
            raise EngineError(f"expected a positive buffer size, got {nbytes}")
        self._cudart = import_cudart()
        self.nbytes = nbytes
        self.mapped = mapped
        self._device: Any = None
        if mapped:
            self._host = _check(
                self._cudart,
                self._cudart.cudaHostAlloc(nbytes, self._cudart.cudaHostAllocMapped),
                "cudaHostAlloc",
            )
            self._device = _check(
                self._cudart, self._cudart.cudaHostGetDevicePointer(self._host, 0), "cudaHostGetDevicePointer"
            )
        else:
            self._host = _check(self._cudart, self._cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            try:
                self._device = _check(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc")
            except EngineError:
                self._cudart.cudaFreeHost(self._host)
                raise
        pointer = ctypes.cast(int(self._host), ctypes.POINTER(ctypes.c_uint8))
        self._bytes = np.ctypeslib.as_array(pointer, shape=(nbytes,))

    @property
    def device_address(self) -> int:
        """What `IExecutionContext.set_tensor_address` takes."""
        return int(self._device)

    def host_view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Tensor:
        """A numpy view of the first bytes of the pinned host memory as an array of `shape` (no copy)."""
        count = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if count > self.nbytes:
            raise EngineError(f"shape {shape} needs {count} bytes; the buffer holds {self.nbytes}")
        return self._bytes[:count].view(dtype).reshape(shape)

    def to_device(self, nbytes: int, stream: CudaStream) -> None:
        if not self.mapped:
            self._copy(self._device, self._host, nbytes, "cudaMemcpyHostToDevice", stream)

    def to_host(self, nbytes: int, stream: CudaStream) -> None:
        if not self.mapped:
            self._copy(self._host, self._device, nbytes, "cudaMemcpyDeviceToHost", stream)

    def _copy(self, destination: Any, source: Any, nbytes: int, kind: str, stream: CudaStream) -> None:
        _check(
            self._cudart,
            self._cudart.cudaMemcpyAsync(
                destination, source, nbytes, getattr(self._cudart.cudaMemcpyKind, kind), stream.raw
            ),
            f"cudaMemcpyAsync({kind})",
        )

    def close(self) -> None:
        """Frees both sides; idempotent. The caller guarantees no stream still uses the buffer."""
        if self._host is None:
            return
        if not self.mapped and self._device is not None:
            _check(self._cudart, self._cudart.cudaFree(self._device), "cudaFree")
        _check(self._cudart, self._cudart.cudaFreeHost(self._host), "cudaFreeHost")
        self._host = None
        self._device = None
