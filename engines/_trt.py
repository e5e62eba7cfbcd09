"""Shared TensorRT plumbing: the lazy import, a logger that forwards to `logging`, and the availability probe.

`tensorrt` is imported only inside functions, never at module import, so the server, the CLI and the tests run
on machines without it; every failure to import or initialise surfaces as an EngineError saying what is
missing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._cuda import CudaDevice
from .base import EngineError
from .engine_cache import DeviceIdentity

__all__ = ["TensorRTAvailability", "import_tensorrt", "make_logger", "probe_tensorrt", "tensorrt_major"]

logger = logging.getLogger("visionrpc.engines.tensorrt")


def import_tensorrt() -> Any:
    """The `tensorrt` module.

    Raises:
        EngineError: not installed, or unable to load its libraries (the PyPI "tensorrt" packages are thin
            stubs that fetch the real libraries from NVIDIA's index; without those the import fails).
    """
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or OSError/RuntimeError from a stub or a missing libnvinfer
        raise EngineError(f"TensorRT is not available: cannot import tensorrt ({exc})") from exc
    return tensorrt


def tensorrt_major(trt: Any) -> int:
    """TensorRT's major version (10, 11, ...); 0 when the version string is unreadable."""
    try:
        return int(str(trt.__version__).split(".", 1)[0])
    except ValueError:
        return 0


def make_logger(trt: Any, *, keep_errors: int = 20) -> Any:
    """A `trt.ILogger` forwarding TensorRT's messages to Python logging. It keeps the latest errors, so a
    failed build or deserialization can say why in its exception rather than only in the log."""

    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.CRITICAL,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,  # TensorRT's INFO is chatty (every tactic); keep it out of INFO logs
        severity.VERBOSE: logging.DEBUG,
    }

    class ForwardingLogger(trt.ILogger):  # type: ignore[misc]  # trt is untyped
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._lock = threading.Lock()
            self._errors: deque[str] = deque(maxlen=keep_errors)

        def log(self, level: Any, message: str) -> None:
            python_level = levels.get(level, logging.INFO)
            if python_level >= logging.ERROR:
                with self._lock:
                    self._errors.append(message)
            logger.log(python_level, "%s", message)

        def errors(self) -> str:
            with self._lock:
                return "; ".join(self._errors) or "no error message from TensorRT"

    return ForwardingLogger()


@dataclass(frozen=True, slots=True)
class TensorRTAvailability:
    """Whether native TensorRT can run here, and if not, why (for the engine selection's log line)."""

    tensorrt_version: str | None
    device: CudaDevice | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.tensorrt_version is not None and self.device is not None

    def identity(self) -> DeviceIdentity:
        """The cache-key identity of this TensorRT and GPU.

        Raises:
            EngineError: TensorRT is not available.
        """
        if self.tensorrt_version is None or self.device is None:
            raise EngineError(f"TensorRT is not available: {self.reason}")
        return DeviceIdentity(self.tensorrt_version, self.device.name, self.device.compute_capability)


def probe_tensorrt() -> TensorRTAvailability:
    """Checks that `tensorrt` imports and that a CUDA GPU is visible through cuda-python. Never raises."""
    try:
        trt = import_tensorrt()
    except EngineError as exc:
        return TensorRTAvailability(None, None, str(exc))
    version = str(getattr(trt, "__version__", "unknown"))
    try:
        device = CudaDevice.query(0)
    except EngineError as exc:
        return TensorRTAvailability(
            version, None, f"TensorRT {version} imports but no CUDA GPU is usable: {exc}"
        )
    return TensorRTAvailability(version, device)
