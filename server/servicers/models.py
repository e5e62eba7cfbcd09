"""visionrpc.v1.ModelService: list, inspect, load and unload models."""

from __future__ import annotations

import grpc
from visionrpc.v1 import models_pb2, models_pb2_grpc

from ..errors import InvalidArgumentError
from ..models.manager import ModelManager
from .convert import model_to_proto
from .status import map_errors

__all__ = ["ModelServicer"]


def _model_id(model_id: str) -> str:
    if not model_id:
        raise InvalidArgumentError.for_field(
            "model_id", "expected a model id, got ''", reason="INVALID_MODEL_ID"
        )
    return model_id


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ModelManager) -> None:
        self._models = models

    @map_errors
    def ListModels(  # noqa: N802 - the generated base class fixes the name
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(models=[model_to_proto(s) for s in self._models.list_models()])

    @map_errors
    def GetModel(  # noqa: N802
        self, request: models_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.GetModelResponse:
        return models_pb2.GetModelResponse(
            model=model_to_proto(self._models.status(_model_id(request.model_id)))
        )

    @map_errors
    def LoadModel(  # noqa: N802
        self, request: models_pb2.LoadModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.LoadModelResponse:
        return models_pb2.LoadModelResponse(
            model=model_to_proto(self._models.load(_model_id(request.model_id)))
        )

    @map_errors
    def UnloadModel(  # noqa: N802
        self, request: models_pb2.UnloadModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.UnloadModelResponse:
        return models_pb2.UnloadModelResponse(
            model=model_to_proto(self._models.unload(_model_id(request.model_id)))
        )
