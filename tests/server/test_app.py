"""The assembled server: health, reflection, graceful shutdown (in-process and on SIGTERM), configuration."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import grpc
import pytest
from conftest import RunningServer, cache_root, start_server
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from media import media
from visionrpc.server.app import INFERENCE_SERVICE, MODEL_SERVICE
from visionrpc.server.config import ServerConfig, add_server_arguments
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(response.status)


@pytest.mark.parametrize("service", ["", INFERENCE_SERVICE, MODEL_SERVICE])
def test_health_is_serving_once_the_default_model_is_warm(server: RunningServer, service: str) -> None:
    assert health_of(server.address, service) == SERVING


def test_unknown_health_service_is_not_found(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        health_of(server.address, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=INFERENCE_SERVICE),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        INFERENCE_SERVICE,
        MODEL_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {m.name for f in files for s in f.service for m in s.method}
    assert {"Infer", "StreamPredictions"} <= methods


def test_inference_service_is_not_serving_until_the_default_model_is_warm(
    base_config: ServerConfig, tmp_path: Path
) -> None:
    # A default model that cannot load keeps the inference service NOT_SERVING while liveness stays SERVING.
    broken = tmp_path / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text(
        '{"task": "detection", "decoder": "yolov5", "input_width": 32, "input_height": 32}'
    )
    (broken / "model.onnx").write_bytes(b"garbage")
    config = replace(base_config, model_repository=tmp_path / "models", default_model="broken")
    running = start_server(config)
    try:
        with pytest.raises(RuntimeError, match="failed to load"):
            running.server.wait_until_ready(timeout_s=60)
        assert health_of(running.address, "") == SERVING
        assert health_of(running.address, INFERENCE_SERVICE) == NOT_SERVING
    finally:
        running.server.stop(grace_s=0.5)


def slow_request() -> inference_pb2.InferRequest:
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(media("coffee.png"))))
    assert ok
    photo = types_pb2.Image(encoded=jpeg.tobytes())
    return inference_pb2.InferRequest(images=[photo] * 48)  # a few seconds of CPU work


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones(
    base_config: ServerConfig, tmp_path: Path
) -> None:
    running = start_server(replace(base_config, model_repository=tmp_path / "models"))
    running.server.wait_until_ready(timeout_s=300)
    results: list[object] = []
    with grpc.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Infer.future(slow_request(), timeout=120)
        time.sleep(0.5)  # let the call reach the servicer
        stopper = threading.Thread(target=running.server.stop, kwargs={"grace_s": 60.0})
        stopper.start()
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Infer(slow_request(), timeout=10)
        results.append(call.result())
        stopper.join(60)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    response = results[0]
    assert isinstance(response, inference_pb2.InferResponse) and len(response.predictions) == 48


def test_sigterm_turns_health_not_serving_then_drains_and_exits_zero(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        VISIONRPC_MODEL_REPOSITORY=str(tmp_path / "models"),
        VISIONRPC_CACHE_DIR=str(cache_root() / "downloads"),
        VISIONRPC_INTRA_OP_THREADS="2",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "visionrpc.server.cli",
            "serve",
            "--port",
            "0",
            "--shutdown-grace-s",
            "30",
            "--shutdown-notice-s",
            "2",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    port = None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if "is SERVING" in line:
            break
    assert port is not None, "".join(lines)
    address = f"127.0.0.1:{port}"
    assert health_of(address, INFERENCE_SERVICE) == SERVING
    with grpc.insecure_channel(address) as channel:
        call = inference_pb2_grpc.InferenceServiceStub(channel).Infer.future(slow_request(), timeout=120)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # During the notice period probes see NOT_SERVING while calls are still accepted.
        assert health_of(address, INFERENCE_SERVICE) == NOT_SERVING
        assert health_of(address, "") == NOT_SERVING
        response = call.result()
    assert len(response.predictions) == 48
    _, err = process.communicate(timeout=60)
    log = "".join(lines) + err
    assert process.returncode == 0, log
    assert "received SIGTERM" in log and "draining" in log and "stopped" in log


def test_config_flags_override_environment_over_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    env = {
        "VISIONRPC_PORT": "6000",
        "VISIONRPC_MAX_MESSAGE_BYTES": "1048576",
        "VISIONRPC_PRELOAD_DEFAULT_MODEL": "false",
        "VISIONRPC_PROVIDERS": "cuda, cpu",
    }
    config = ServerConfig.from_namespace(parser.parse_args(["--port", "7000"]), env)
    assert config.port == 7000  # flag wins
    assert config.max_message_bytes == 1048576  # environment
    assert config.preload_default_model is False
    assert config.providers == ("cuda", "cpu")
    assert config.default_model == "yolov3-tiny-coco"  # default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VISIONRPC_PORT": "seventy"}, "VISIONRPC_PORT"),
        ({"VISIONRPC_PORT": "70000"}, "port"),
        ({"VISIONRPC_MAX_MESSAGE_BYTES": "10"}, "max_message_bytes"),
        ({"VISIONRPC_PRELOAD_DEFAULT_MODEL": "maybe"}, "boolean"),
    ],
)
def test_bad_configuration_is_refused_at_start_up(env: dict[str, str], message: str) -> None:
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    with pytest.raises(ValueError, match=message):
        ServerConfig.from_namespace(parser.parse_args([]), env)
