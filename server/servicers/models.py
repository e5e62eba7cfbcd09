"""visionrpc.v1.ModelService: list, inspect, load and unload models.

Each call may touch the disk or load a model (seconds): it runs in the event loop's default executor, never
on the loop and never in the CPU workers that requests' images need.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from visionrpc.v1 import models_pb2, models_pb2_grpc

from ..errors import InvalidArgumentError
from ..models.manager import ModelManager
from ..models.repository import ModelId
from .convert import model_to_proto
from .status import map_errors

__all__ = ["ModelServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


def _model_id(text: str) -> ModelId:
    if not text:
        raise InvalidArgumentError.for_field(
            "model_id", "expected a model id, got ''", reason="INVALID_MODEL_ID"
        )
    return ModelId.parse(text)


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ModelManager) -> None:
        self._models = models

    @map_errors
    async def ListModels(  # noqa: N802 - the generated base class fixes the name
        self, request: models_pb2.ListModelsRequest, context: Context
    ) -> models_pb2.ListModelsResponse:
        statuses = await asyncio.to_thread(self._models.list_models)
        return models_pb2.ListModelsResponse(models=[model_to_proto(s) for s in statuses])

    @map_errors
    async def GetModel(  # noqa: N802
        self, request: models_pb2.GetModelRequest, context: Context
    ) -> models_pb2.GetModelResponse:
        status = await asyncio.to_thread(self._models.status, _model_id(request.model_id))
        return models_pb2.GetModelResponse(model=model_to_proto(status))

    @map_errors
    async def LoadModel(  # noqa: N802
        self, request: models_pb2.LoadModelRequest, context: Context
    ) -> models_pb2.LoadModelResponse:
        status = await asyncio.to_thread(self._models.load, _model_id(request.model_id))
        return models_pb2.LoadModelResponse(model=model_to_proto(status))

    @map_errors
    async def UnloadModel(  # noqa: N802
        self, request: models_pb2.UnloadModelRequest, context: Context
    ) -> models_pb2.UnloadModelResponse:
        status = await asyncio.to_thread(self._models.unload, _model_id(request.model_id))
        return models_pb2.UnloadModelResponse(model=model_to_proto(status))
