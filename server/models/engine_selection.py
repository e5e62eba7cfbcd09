"""Which engine runs a model: the fallback chain behind `--engine auto|tensorrt|onnxruntime`.

    auto          TensorRT when `tensorrt` imports and a CUDA GPU is visible (served from ONNX Runtime while
                  the engine builds), else ONNX Runtime on the best provider it offers (CUDA, else CPU)
    tensorrt      TensorRT, or the model fails to load with FAILED_PRECONDITION / ENGINE_UNAVAILABLE saying
                  why: a user who insisted on TensorRT is told, not silently given something slower
    onnxruntime   ONNX Runtime with `--providers` (default: the best it offers)

A model's manifest may override the server's choice (`"engine": "onnxruntime"`, e.g. for operators TensorRT
cannot parse). Each decision is logged once per model load with its reason, so "why is this model on CPU?"
has an answer in the log.

The policy (`select_engine`) is a pure function of the request and a `RuntimeProbe`, so it is tested here
without TensorRT or a GPU; `RuntimeProbe.detect()` is the only part that looks at the machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import onnxruntime as ort
from visionrpc.engines.tensorrt_engine import TensorRTAvailability, probe_tensorrt

from ..errors import FailedPreconditionError
from ..manifest import ResolvedModel

__all__ = ["EngineSelection", "EngineSelector", "RuntimeProbe", "best_ort_providers", "select_engine"]

logger = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"
TENSORRT = "tensorrt"
AUTO = "auto"
_CUDA_EP = "CUDAExecutionProvider"


@dataclass(frozen=True, slots=True)
class RuntimeProbe:
    """What this machine can run: native TensorRT (and why not), and ONNX Runtime's providers."""

    tensorrt: TensorRTAvailability
    ort_providers: tuple[str, ...]

    @classmethod
    def detect(cls) -> RuntimeProbe:
        """Imports tensorrt and asks cuda-python for a GPU (both optional); never raises."""
        return cls(probe_tensorrt(), tuple(ort.get_available_providers()))


def best_ort_providers(available: tuple[str, ...]) -> tuple[str, ...]:
    """ONNX Runtime providers for `--providers` left empty: CUDA where onnxruntime-gpu offers it, then CPU.

    (ORT's own TensorRT provider is not chosen automatically: it builds engines inside session creation, on
    the load path, which is exactly the blocking this server avoids; ask for it with `--providers
    tensorrt,cuda,cpu`.)
    """
    return ("cuda", "cpu") if _CUDA_EP in available else ("cpu",)


@dataclass(frozen=True, slots=True)
class EngineSelection:
    """The engine a model will run on, and why."""

    engine: str  # "tensorrt" or "onnxruntime"
    requested: str  # "auto", "tensorrt" or "onnxruntime"
    source: str  # where the request came from: "server" (--engine) or "manifest"
    reason: str


def select_engine(requested: str, probe: RuntimeProbe, *, source: str = "server") -> EngineSelection:
    """Applies the fallback chain.

    Raises:
        FailedPreconditionError: "tensorrt" requested where TensorRT cannot run (reason ENGINE_UNAVAILABLE).
        ValueError: an unknown engine name (config and manifests validate before this).
    """
    trt = probe.tensorrt
    if requested == ONNXRUNTIME:
        return EngineSelection(ONNXRUNTIME, requested, source, "requested")
    if requested not in (TENSORRT, AUTO):
        raise ValueError(f"expected engine auto, tensorrt or onnxruntime, got {requested!r}")
    if trt.available:
        assert trt.device is not None
        found = (
            f"TensorRT {trt.tensorrt_version} imports and {trt.device.name} "
            f"(compute capability {trt.device.compute_capability}) is visible"
        )
        return EngineSelection(TENSORRT, requested, source, found)
    if requested == TENSORRT:
        raise FailedPreconditionError(
            f"engine tensorrt was requested (by the {source}) but cannot run here: {trt.reason}; "
            "use engine auto or onnxruntime to run it on ONNX Runtime",
            reason="ENGINE_UNAVAILABLE",
            metadata={"engine": TENSORRT, "source": source},
        )
    return EngineSelection(ONNXRUNTIME, requested, source, trt.reason)


class EngineSelector:
    """Decides per model (manifest override, else the server's `--engine`); logs each decision once per load.

    The probe runs lazily, on the first model that needs it, so a server that only ever runs ONNX Runtime
    never imports tensorrt; it is then reused (what is installed does not change while the process runs).
    """

    def __init__(
        self,
        default: str,
        *,
        ort_providers: tuple[str, ...],
        probe: RuntimeProbe | Callable[[], RuntimeProbe] = RuntimeProbe.detect,
    ) -> None:
        self._default = default
        self._ort_providers = ort_providers
        self._probe_source = probe
        self._probe: RuntimeProbe | None = probe if isinstance(probe, RuntimeProbe) else None
        self._lock = threading.Lock()

    @property
    def default(self) -> str:
        return self._default

    def probe(self) -> RuntimeProbe:
        with self._lock:
            if self._probe is None:
                assert callable(self._probe_source)
                self._probe = self._probe_source()
            return self._probe

    def __call__(self, model: ResolvedModel) -> EngineSelection:
        """The selection for `model`; FailedPreconditionError when its insisted-on engine cannot run."""
        override = model.manifest.engine
        requested, source = (override, "manifest") if override else (self._default, "server")
        if requested == ONNXRUNTIME:  # no need to probe for TensorRT at all
            selection = EngineSelection(ONNXRUNTIME, requested, source, "requested")
        else:
            selection = select_engine(requested, self.probe(), source=source)
        if selection.engine == ONNXRUNTIME:
            logger.info(
                "model %s: engine onnxruntime (providers %s); %s by the %s: %s",
                model.key,
                ",".join(self._ort_providers),
                selection.requested,
                source,
                selection.reason,
            )
        else:
            logger.info(
                "model %s: engine tensorrt (serving on onnxruntime %s until the engine is built or "
                "loaded from the cache); %s by the %s: %s",
                model.key,
                ",".join(self._ort_providers),
                selection.requested,
                source,
                selection.reason,
            )
        return selection
