"""The real TensorRT builder: its plans and cache keys for a real model (no TensorRT needed), the honest
fallback when TensorRT is missing, and, on a GPU with TensorRT, a real build, cache hit and swap."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest
from conftest import cache_root
from visionrpc.engines import EngineError
from visionrpc.engines.engine_cache import DeviceIdentity, file_sha256
from visionrpc.engines.tensorrt_engine import probe_tensorrt
from visionrpc.engines.tensorrt_plan import InputProfile, Precision
from visionrpc.server.app import OnnxRuntimeEngineFactory
from visionrpc.server.manifest import ResolvedModel
from visionrpc.server.models.builds import BuildState
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId, ModelRepository
from visionrpc.server.models.tensorrt_builder import TensorRTBuilder, TensorRTSettings

from .conftest import builtin_models

ORIN = DeviceIdentity("10.3.0", "Orin", "8.7")
AVAILABILITY = probe_tensorrt()


def resolve(repo: Path, name: str = "alpha") -> ResolvedModel:
    return ModelRepository(repo, builtin_models(), cache_root() / "downloads").resolve(ModelId(name))


def test_the_plan_of_a_real_model_follows_its_manifest_and_the_settings(
    yolo_repo: Path, tmp_path: Path
) -> None:
    builder = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path, max_batch=4, dla_core=0))
    model = resolve(yolo_repo)
    plan = builder.plan_for(model, ORIN)
    size = (3, model.manifest.input_height, model.manifest.input_width)
    (profile,) = plan.profiles
    assert profile == InputProfile(profile.name, (1, *size), (1, *size), (4, *size))
    assert (plan.precision, plan.dla_core, plan.workspace_bytes) == (Precision.FP16, 0, 1 << 30)
    assert plan.timing_cache == builder.cache.timing_cache_path(ORIN)


def test_cache_keys_follow_the_model_bytes_and_the_settings(yolo_repo: Path, tmp_path: Path) -> None:
    builder = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path))
    alpha, beta = resolve(yolo_repo, "alpha"), resolve(yolo_repo, "beta")
    plan = builder.plan_for(alpha, ORIN)
    key = builder.cache_key(alpha, plan, ORIN)
    assert key.model_sha256 == file_sha256(alpha.onnx_path)
    # Same bytes under another name: the same engine (a copy of a model does not build twice).
    assert builder.cache_key(beta, builder.plan_for(beta, ORIN), ORIN) == key
    fp32 = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path, precision=Precision.FP32))
    assert fp32.cache_key(alpha, fp32.plan_for(alpha, ORIN), ORIN).digest() != key.digest()
    assert builder.cache_key(alpha, plan, dataclasses.replace(ORIN, gpu_name="Thor")).digest() != key.digest()
    # Changed model bytes: a new key, even at the same path (the hash memo keys on size and mtime too).
    with alpha.onnx_path.open("ab") as out:
        out.write(b"\0")
    assert builder.cache_key(alpha, plan, ORIN).model_sha256 != key.model_sha256


def test_invalid_settings_fail_the_plan_with_a_clear_error(yolo_repo: Path, tmp_path: Path) -> None:
    builder = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path, precision=Precision.FP32, dla_core=0))
    with pytest.raises(EngineError, match="DLA runs FP16 or INT8 only"):
        builder.plan_for(resolve(yolo_repo), ORIN)


@pytest.mark.skipif(AVAILABILITY.available, reason="TensorRT runs here")
def test_without_tensorrt_a_model_on_the_real_builder_keeps_serving_on_onnxruntime(
    yolo_repo: Path, tmp_path: Path
) -> None:
    repository = ModelRepository(yolo_repo, builtin_models(), cache_root() / "downloads")
    builder = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path / "engines"))
    manager = ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 1), max_loaded=2, builder=builder)
    status = manager.load(ModelId.parse("alpha"))
    assert status.engine is not None and status.engine.engine == "onnxruntime"
    assert status.build is not None and status.build.state is BuildState.FAILED
    assert status.build.reason.startswith(
        "tensorrt engine unavailable for this model: TensorRT is not available"
    )
    manager.close()


@pytest.mark.gpu
@pytest.mark.skipif(not AVAILABILITY.available, reason=f"needs TensorRT and a GPU: {AVAILABILITY.reason}")
def test_a_real_build_swaps_in_and_the_next_load_hits_the_cache(yolo_repo: Path, tmp_path: Path) -> None:
    repository = ModelRepository(yolo_repo, builtin_models(), cache_root() / "downloads")
    builder = TensorRTBuilder(TensorRTSettings(cache_dir=tmp_path / "engines", max_batch=2))
    manager = ModelManager(repository, OnnxRuntimeEngineFactory(("cpu",), 1), max_loaded=2, builder=builder)
    assert manager.load(ModelId.parse("alpha")).build is not None
    deadline = time.monotonic() + 600
    while (
        build := manager.status(ModelId.parse("alpha")).build
    ) is not None and build.state is BuildState.BUILDING:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = manager.status(ModelId.parse("alpha"))
    assert status.build is not None and status.build.state is BuildState.READY, status.build
    assert status.engine is not None and status.engine.engine == "tensorrt"
    manager.unload(ModelId.parse("alpha"))
    again = manager.load(ModelId.parse("alpha"))
    assert again.build is not None and again.build.reason == "loaded from the engine cache"
    manager.close()
    shutil.rmtree(tmp_path / "engines")
