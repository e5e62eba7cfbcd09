"""ModelService through a real server: list, get, load, unload, LRU, and its errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import RunningServer, cache_root, start_server
from media import media
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2


@pytest.fixture
def lru_server(base_config: ServerConfig, tmp_path: Path) -> Iterator[RunningServer]:
    """A server with two yolov3-tiny copies ("first", "second") in its repository and a cap of 2 models."""
    source = cache_root() / "downloads" / "builtin-models" / "yolov3-tiny-coco" / "1"
    assert source.is_dir(), "the session server installs the built-in first"
    for name in ("first", "second"):
        shutil.copytree(source, tmp_path / "models" / name / "1")
    config = replace(
        base_config, model_repository=tmp_path / "models", preload_default_model=False, max_loaded_models=2
    )
    running = start_server(config)
    yield running
    running.server.stop(grace_s=0.5)


def stubs(
    address: str,
) -> tuple[grpc.Channel, models_pb2_grpc.ModelServiceStub, inference_pb2_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(address)
    return (
        channel,
        models_pb2_grpc.ModelServiceStub(channel),
        inference_pb2_grpc.InferenceServiceStub(channel),
    )


def states(models: models_pb2_grpc.ModelServiceStub) -> dict[str, int]:
    response = models.ListModels(models_pb2.ListModelsRequest(), timeout=30)
    return {m.name: m.state for m in response.models}


def test_list_and_get_describe_the_default_model(server: RunningServer) -> None:
    channel, models, _ = stubs(server.address)
    with channel:
        assert states(models)["yolov3-tiny-coco"] == models_pb2.MODEL_STATE_READY
        model = models.GetModel(models_pb2.GetModelRequest(model_id="yolov3-tiny-coco"), timeout=30).model
    assert (model.name, model.version, list(model.versions)) == ("yolov3-tiny-coco", "1", ["1"])
    assert model.task == models_pb2.MODEL_TASK_DETECTION and model.decoder == "yolov5" and model.builtin
    assert (model.input.width, model.input.height, model.input.resize) == (416, 416, "letterbox")
    assert len(model.class_names) == 80 and model.class_names[41] == "cup"
    assert (
        model.engine.engine == "onnxruntime"
        and model.engine.device == "cpu"
        and model.engine.precision == "fp32"
    )
    assert 0 < model.defaults.confidence_threshold < 1


def test_load_unload_and_lru_through_the_api(lru_server: RunningServer) -> None:
    channel, models, inference = stubs(lru_server.address)
    photo = types_pb2.Image(encoded=media("coffee.png").read_bytes())
    with channel:
        assert states(models)["first"] == models_pb2.MODEL_STATE_AVAILABLE
        loaded = models.LoadModel(models_pb2.LoadModelRequest(model_id="first"), timeout=120).model
        assert loaded.state == models_pb2.MODEL_STATE_READY and loaded.engine.engine == "onnxruntime"
        # Lazy load on first use.
        inference.Infer(inference_pb2.InferRequest(model_id="second", images=[photo]), timeout=120)
        assert states(models)["second"] == models_pb2.MODEL_STATE_READY
        # A third model exceeds the cap of 2: "first" is the least recently used and goes.
        inference.Infer(inference_pb2.InferRequest(model_id="yolov3-tiny-coco", images=[photo]), timeout=120)
        current = states(models)
        assert current["first"] == models_pb2.MODEL_STATE_AVAILABLE
        assert current["second"] == current["yolov3-tiny-coco"] == models_pb2.MODEL_STATE_READY
        unloaded = models.UnloadModel(models_pb2.UnloadModelRequest(model_id="second"), timeout=30).model
        assert unloaded.state == models_pb2.MODEL_STATE_AVAILABLE
        again = models.UnloadModel(models_pb2.UnloadModelRequest(model_id="second"), timeout=30).model
        assert again.state == models_pb2.MODEL_STATE_AVAILABLE  # idempotent
        # Unloaded models load again on demand.
        response = inference.Infer(inference_pb2.InferRequest(model_id="second", images=[photo]), timeout=120)
        assert response.model_name == "second"


@pytest.mark.parametrize(
    ("method", "model_id", "code"),
    [
        ("GetModel", "nope", grpc.StatusCode.NOT_FOUND),
        ("LoadModel", "nope", grpc.StatusCode.NOT_FOUND),
        ("UnloadModel", "nope", grpc.StatusCode.NOT_FOUND),
        ("GetModel", "", grpc.StatusCode.INVALID_ARGUMENT),
        ("LoadModel", "../x", grpc.StatusCode.INVALID_ARGUMENT),
        ("GetModel", "yolov3-tiny-coco/2", grpc.StatusCode.NOT_FOUND),
    ],
)
def test_model_service_errors(
    server: RunningServer, method: str, model_id: str, code: grpc.StatusCode
) -> None:
    channel, models, _ = stubs(server.address)
    request_type = getattr(models_pb2, f"{method}Request")
    with channel, pytest.raises(grpc.RpcError) as info:
        getattr(models, method)(request_type(model_id=model_id), timeout=30)
    assert info.value.code() == code


def test_a_broken_model_fails_to_load_with_its_reason_and_others_keep_serving(
    lru_server: RunningServer,
) -> None:
    broken = lru_server.config.model_repository / "broken" / "1"
    shutil.copytree(lru_server.config.model_repository / "first" / "1", broken)
    (broken / "model.onnx").write_bytes(b"\x00garbage")
    channel, models, inference = stubs(lru_server.address)
    photo = types_pb2.Image(encoded=media("coffee.png").read_bytes())
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            inference.Infer(inference_pb2.InferRequest(model_id="broken", images=[photo]), timeout=60)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "broken/1 failed to load" in (info.value.details() or "")
        model = models.GetModel(models_pb2.GetModelRequest(model_id="broken"), timeout=30).model
        assert model.state == models_pb2.MODEL_STATE_FAILED and model.state_reason
        response = inference.Infer(inference_pb2.InferRequest(model_id="first", images=[photo]), timeout=120)
        assert any(d.class_name == "cup" for d in response.predictions[0].detections)
