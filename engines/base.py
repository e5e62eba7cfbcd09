"""The small protocol every engine implements, so the rest of the server cannot tell engines apart.

An engine takes a batch as a dict of named arrays and returns a dict of named arrays. It knows nothing of
images, boxes or gRPC: pre- and post-processing live in `visionrpc.server.processing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["Engine", "EngineError", "EngineInfo", "TensorSpec"]

Tensor = npt.NDArray[np.generic]


class EngineError(Exception):
    """An engine could not be created or could not run a batch; the message says why."""


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What runs a model: engine ("onnxruntime", "tensorrt"), provider, device and numeric precision."""

    engine: str
    provider: str
    device: str
    precision: str


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named input or output; `None` in `shape` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@runtime_checkable
class Engine(Protocol):
    @property
    def info(self) -> EngineInfo: ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def infer(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Runs one batch. Thread-safe: callers may overlap, the engine serialises what it must."""
        ...

    def warmup(self) -> None:
        """Runs one dummy batch so the first real request does not pay for lazy initialisation."""
        ...

    def close(self) -> None: ...
