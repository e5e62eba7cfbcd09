"""The shipped descriptor set, proto/visionrpc.binpb (issue 11, item 7): grpcio's reflection cannot resolve a
method for `grpcurl describe` or ghz (grpc/grpc#34743), so the contract ships compiled (scripts/generate
builds it with buf; scripts/check-generated fails when it is stale).

The set must hold every service and method the server serves, with the comments, and real grpcurl must
describe a method and call one from it alone (no reflection). grpcurl is built from the Go module proxy into
.tools/bin by `scripts/test-deploy --tools`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import RunningServer
from google.protobuf import descriptor_pb2
from visionrpc.v1 import inference_pb2, models_pb2, pipelines_pb2, shared_memory_pb2

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTOR_SET = ROOT / "proto" / "visionrpc.binpb"
GRPCURL = ROOT / ".tools" / "bin" / "grpcurl"


def shipped() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


def served_methods() -> set[str]:
    """Every method of the generated Python code the server registers, as "package.Service/Method"."""
    return {
        f"{service.full_name}/{method.name}"
        for module in (inference_pb2, models_pb2, pipelines_pb2, shared_memory_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_the_set_holds_every_served_method_and_its_imports() -> None:
    files = {f.name: f for f in shipped().file}
    methods = {
        f"{f.package}.{service.name}/{method.name}"
        for f in files.values()
        for service in f.service
        for method in service.method
    }
    assert methods == served_methods()
    # Self-contained: every import is in the set, so grpcurl and ghz need nothing else.
    assert {dep for f in files.values() for dep in f.dependency} <= set(files)
    # With source info: `describe` shows the contract's comments.
    assert all(f.source_code_info.location for f in files.values() if f.name.startswith("visionrpc/"))


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    if not GRPCURL.is_file():
        pytest.skip("grpcurl is not built: run scripts/test-deploy --tools")
    command = [str(GRPCURL), "-connect-timeout", "5", "-protoset", str(DESCRIPTOR_SET), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("visionrpc.v1.InferenceService.Infer", "rpc Infer ( .visionrpc.v1.InferRequest )"),
        ("visionrpc.v1.InferenceService.StreamPredictions", "returns ( stream .visionrpc.v1."),
        ("visionrpc.v1.ModelService.LoadModel", "rpc LoadModel ( .visionrpc.v1.LoadModelRequest )"),
        ("visionrpc.v1.InferRequest", "string model_id = 1;"),
    ],
)
def test_grpcurl_describes_from_the_set(symbol: str, expected: str) -> None:
    result = grpcurl("describe", symbol)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_grpcurl_calls_a_method_from_the_set(fresh_server: RunningServer) -> None:
    result = grpcurl("-plaintext", "-d", "{}", fresh_server.address, "visionrpc.v1.ModelService/ListModels")
    assert result.returncode == 0, result.stderr
    names = [model["name"] for model in json.loads(result.stdout)["models"]]
    assert "yolov3-tiny-coco" in names
