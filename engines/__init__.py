"""Engines: what runs a model's graph. One small protocol (`Engine`) and its implementations.

The rest of the server holds an `Engine` and never asks which one it is; `EngineInfo` says what runs where.
"""

from __future__ import annotations

from .base import Engine, EngineError, EngineInfo, TensorSpec
from .onnxruntime_engine import OnnxRuntimeEngine

# The TensorRT engine lives in `visionrpc.engines.tensorrt_engine` (plan, cache and build helpers beside it).
# Importing it never imports tensorrt or cuda; only creating or building an engine does.

__all__ = ["Engine", "EngineError", "EngineInfo", "OnnxRuntimeEngine", "TensorSpec"]
