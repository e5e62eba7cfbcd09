"""Background engine builds: what a builder is, and a model's build state as the model service shows it.

A builder turns a model into a better engine than the one it loads with (TensorRT vs ONNX Runtime), slowly:
TensorRT builds take seconds to many minutes. The model manager never makes a request wait for one. It loads
the model on ONNX Runtime, serves at once, runs the build on a background thread, and swaps the built engine
in between batches (`Predictor.swap_engine`). `BuildStatus` is what `GetModel` reports meanwhile.

The builder is a protocol so tests (and machines without a GPU) can stand a slow builder of real ONNX Runtime
engines in for TensorRT and exercise the whole path: build, progress, swap under load, failure.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from visionrpc.engines import Engine

from ..manifest import ResolvedModel

__all__ = ["BuildProgress", "BuildState", "BuildStatus", "EngineBuilder"]

# (fraction done in [0, 1] or None when unknown, phase) -> False when the build should stop (model unloaded,
# server closing). The same shape TensorRT's progress monitor is adapted to in `visionrpc.engines`.
BuildProgress = Callable[[float | None, str], bool]


class BuildState(enum.Enum):
    NOT_NEEDED = "not_needed"  # the model runs on the engine it loaded with; nothing to build
    BUILDING = "building"  # serving on the fallback engine while the target engine builds (or waits to)
    READY = "ready"  # the target engine serves (built now, or loaded from the engine cache)
    FAILED = "failed"  # the build failed; still serving on the fallback engine; `reason` says why


@dataclass(frozen=True, slots=True)
class BuildStatus:
    """A model's engine build; `progress` is None when unknown (queued, or a builder without progress)."""

    state: BuildState
    target_engine: str = ""
    progress: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.progress is not None and not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"expected progress in [0, 1] or None, got {self.progress}")


NOT_NEEDED = BuildStatus(BuildState.NOT_NEEDED)


@runtime_checkable
class EngineBuilder(Protocol):
    """Builds a model's target engine. `load_cached` runs on the load path, `build` on a background thread."""

    @property
    def target(self) -> str:
        """The engine it produces ("tensorrt"), as engine selection names it."""
        ...

    def load_cached(self, model: ResolvedModel) -> Engine | None:
        """The target engine from a previous build (fast: seconds), or None when there is none to use.

        Raises:
            EngineError: the target engine cannot run here at all (the caller serves the fallback instead).
        """
        ...

    def build(self, model: ResolvedModel, progress: BuildProgress) -> Engine:
        """Builds (and caches) the target engine; slow. Stops early, raising, when `progress` returns False.

        Raises:
            EngineError: the build failed; the message is shown to users as the build's reason.
        """
        ...
