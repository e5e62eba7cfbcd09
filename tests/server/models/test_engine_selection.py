"""Engine selection: the fallback chain on this machine for real (no TensorRT, no GPU), the policy table for
machines that have them, per-model overrides, and what a client sees when TensorRT was insisted on."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort
import pytest
from conftest import RunningServer, cache_root, start_server
from visionrpc.client import Client
from visionrpc.client import FailedPreconditionError as ClientFailedPrecondition
from visionrpc.client import ModelState as ClientModelState
from visionrpc.engines import EngineInfo
from visionrpc.engines._cuda import CudaDevice
from visionrpc.engines.tensorrt_engine import TensorRTAvailability
from visionrpc.server.app import build_model_manager
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import FailedPreconditionError
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.builds import BuildState, BuildStatus
from visionrpc.server.models.engine_selection import (
    EngineSelection,
    RuntimeProbe,
    best_ort_providers,
    select_engine,
)
from visionrpc.server.models.manager import ModelState
from visionrpc.server.models.repository import ModelId

SELECTION_LOGGER = "visionrpc.server.models.engine_selection"
HERE = RuntimeProbe.detect()
# The assertions about "this machine" hold where neither TensorRT nor onnxruntime-gpu can run; elsewhere the
# policy-table tests below cover the same decisions.
cpu_only = pytest.mark.skipif(
    HERE.tensorrt.available or "CUDAExecutionProvider" in HERE.ort_providers,
    reason="this machine can run TensorRT or ONNX Runtime's CUDA provider",
)

# A machine that has TensorRT and a GPU, as a value: the policy is a pure function of it. (No such machine is
# available to this suite; the GPU-marked tests in tests/engines exercise the real thing where it exists.)
ORIN = TensorRTAvailability("10.3.0", CudaDevice(0, "Orin", "8.7", integrated=True, can_map_host_memory=True))
NO_TRT = TensorRTAvailability(
    None, None, "TensorRT is not available: cannot import tensorrt (No module named x)"
)


def set_manifest_engine(repo: Path, model: str, engine: str) -> None:
    path = repo / model / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["engine"] = engine
    path.write_text(json.dumps(manifest))


def make_config(repo: Path, tmp_path: Path, **changes: object) -> ServerConfig:
    config = ServerConfig(
        port=0,
        model_repository=repo,
        cache_dir=cache_root() / "downloads",
        engine_cache_dir=str(tmp_path / "engines"),
        intra_op_threads=1,
        preload_default_model=False,
        shutdown_grace_s=0.5,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def selection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == SELECTION_LOGGER]


# -- on this machine -----------------------------------------------------------------------------------------


@cpu_only
def test_auto_runs_onnxruntime_on_cpu_here_and_logs_why(
    yolo_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = build_model_manager(make_config(yolo_repo, tmp_path, engine="auto"))
    with (
        caplog.at_level(logging.INFO, logger=SELECTION_LOGGER),
        manager.acquire(ModelId.parse("alpha")) as predictor,
    ):
        info = predictor.engine_info
    assert info == EngineInfo("onnxruntime", "CPUExecutionProvider", "cpu", "fp32")
    assert selection_lines(caplog) == [
        "model alpha/1: engine onnxruntime (providers cpu); auto by the server: "
        "TensorRT is not available: cannot import tensorrt (No module named 'tensorrt')"
    ]
    status = manager.status(ModelId.parse("alpha"))
    assert status.state is ModelState.READY
    assert status.build == BuildStatus(BuildState.NOT_NEEDED)
    assert not (tmp_path / "engines").exists()  # nothing was built or cached
    manager.close()


@cpu_only
def test_insisting_on_tensorrt_here_fails_the_load_with_the_reason(yolo_repo: Path, tmp_path: Path) -> None:
    manager = build_model_manager(make_config(yolo_repo, tmp_path, engine="tensorrt"))
    with pytest.raises(FailedPreconditionError) as info, manager.acquire(ModelId.parse("alpha")):
        pass
    error = info.value
    assert error.reason == "ENGINE_UNAVAILABLE"
    assert error.metadata == {"engine": "tensorrt", "source": "server", "model_id": "alpha/1"}
    assert "engine tensorrt was requested (by the server) but cannot run here" in error.message
    assert "cannot import tensorrt" in error.message and "use engine auto or onnxruntime" in error.message
    status = manager.status(ModelId.parse("alpha"))
    assert status.state is ModelState.FAILED and "cannot run here" in status.reason
    manager.close()


@cpu_only
def test_a_manifest_override_beats_the_server_setting_both_ways(
    yolo_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    set_manifest_engine(yolo_repo, "alpha", "onnxruntime")
    set_manifest_engine(yolo_repo, "beta", "tensorrt")
    strict = build_model_manager(make_config(yolo_repo, tmp_path, engine="tensorrt"))
    with (
        caplog.at_level(logging.INFO, logger=SELECTION_LOGGER),
        strict.acquire(ModelId.parse("alpha")) as predictor,
    ):
        assert predictor.engine_info.engine == "onnxruntime"
    assert selection_lines(caplog) == [
        "model alpha/1: engine onnxruntime (providers cpu); onnxruntime by the manifest: requested"
    ]
    strict.close()
    relaxed = build_model_manager(make_config(yolo_repo, tmp_path, engine="auto"))
    with (
        pytest.raises(FailedPreconditionError, match=r"requested \(by the manifest\)"),
        relaxed.acquire(ModelId.parse("beta")),
    ):
        pass
    with relaxed.acquire(ModelId.parse("alpha")) as predictor:  # other models are unaffected
        assert predictor.engine_info.engine == "onnxruntime"
    relaxed.close()


def test_the_probe_runs_only_when_a_model_may_want_tensorrt(yolo_repo: Path, tmp_path: Path) -> None:
    calls: list[int] = []

    def probe() -> RuntimeProbe:
        calls.append(1)
        return RuntimeProbe(NO_TRT, ("CPUExecutionProvider",))

    manager = build_model_manager(make_config(yolo_repo, tmp_path, engine="onnxruntime"), probe=probe)
    with manager.acquire(ModelId.parse("alpha")), manager.acquire(ModelId.parse("beta")):
        pass
    assert calls == []  # never imported tensorrt
    manager.close()
    manager = build_model_manager(make_config(yolo_repo, tmp_path, engine="auto"), probe=probe)
    with manager.acquire(ModelId.parse("alpha")), manager.acquire(ModelId.parse("beta")):
        pass
    assert calls == [1]  # once, then reused
    manager.close()


@pytest.fixture
def strict_server(yolo_repo: Path, tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(make_config(yolo_repo, tmp_path, engine="tensorrt"))
    yield running
    running.server.stop(grace_s=0.5)


@cpu_only
def test_a_client_sees_failed_precondition_with_engine_unavailable(strict_server: RunningServer) -> None:
    with Client(f"127.0.0.1:{strict_server.port}") as client:
        with pytest.raises(ClientFailedPrecondition) as info:
            client.load_model("alpha")
        assert info.value.reason == "ENGINE_UNAVAILABLE"
        assert info.value.metadata["engine"] == "tensorrt"
        assert "cannot run here" in str(info.value)
        model = client.get_model("alpha")
        assert model.state is ClientModelState.FAILED and "cannot import tensorrt" in model.state_reason
        assert model.build is None and model.engine is None


# -- the policy, for every kind of machine -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "availability", "engine", "reason"),
    [
        ("auto", ORIN, "tensorrt", "TensorRT 10.3.0 imports and Orin (compute capability 8.7) is visible"),
        (
            "tensorrt",
            ORIN,
            "tensorrt",
            "TensorRT 10.3.0 imports and Orin (compute capability 8.7) is visible",
        ),
        ("onnxruntime", ORIN, "onnxruntime", "requested"),
        ("auto", NO_TRT, "onnxruntime", NO_TRT.reason),
        ("onnxruntime", NO_TRT, "onnxruntime", "requested"),
    ],
)
def test_selection_policy(
    requested: str, availability: TensorRTAvailability, engine: str, reason: str
) -> None:
    probe = RuntimeProbe(availability, ("CPUExecutionProvider",))
    assert select_engine(requested, probe) == EngineSelection(engine, requested, "server", reason)


def test_selection_policy_refuses_tensorrt_where_it_cannot_run_and_unknown_names() -> None:
    probe = RuntimeProbe(NO_TRT, ("CPUExecutionProvider",))
    with pytest.raises(FailedPreconditionError, match="requested \\(by the manifest\\)") as info:
        select_engine("tensorrt", probe, source="manifest")
    assert info.value.reason == "ENGINE_UNAVAILABLE"
    with pytest.raises(ValueError, match="expected engine"):
        select_engine("openvino", probe)


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (("CPUExecutionProvider",), ("cpu",)),
        (("CUDAExecutionProvider", "CPUExecutionProvider"), ("cuda", "cpu")),
        (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), ("cuda", "cpu")),
    ],
)
def test_best_onnxruntime_providers(available: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert best_ort_providers(available) == expected


def test_the_probe_reports_this_machine() -> None:
    assert HERE.ort_providers == tuple(ort.get_available_providers())
    assert HERE.tensorrt.available == (HERE.tensorrt.reason == "")


# -- configuration and manifests -------------------------------------------------------------------------


def test_engine_settings_defaults_and_validation(tmp_path: Path) -> None:
    config = ServerConfig(cache_dir=tmp_path / "cache")
    assert config.engine == "auto" and config.providers == ()
    assert config.engine_cache == tmp_path / "cache" / "engines"
    assert (config.trt_precision, config.trt_max_batch, config.dla_core) == ("fp16", 8, -1)
    assert ServerConfig(engine_cache_dir=str(tmp_path / "e")).engine_cache == tmp_path / "e"
    for changes, message in [
        ({"engine": "openvino"}, "expected engine"),
        ({"trt_precision": "bf16"}, "trt_precision"),
        ({"trt_max_batch": 0}, "trt_max_batch"),
        ({"trt_workspace_bytes": 10}, "trt_workspace_bytes"),
        ({"dla_core": -3}, "dla_core"),
        ({"dla_core": 0, "trt_precision": "fp32"}, "DLA runs fp16 or int8"),
        ({"trt_calibration_cache": "calib.cache"}, "only applies with trt_precision int8"),
    ]:
        with pytest.raises(ValueError, match=message):
            ServerConfig(**changes)  # type: ignore[arg-type]


def test_manifest_engine_field_is_optional_and_validated() -> None:
    base = {"task": "detection", "decoder": "yolov5", "input_width": 416, "input_height": 416}
    assert ModelManifest.from_dict(base).engine is None
    assert ModelManifest.from_dict({**base, "engine": "onnxruntime"}).engine == "onnxruntime"
    assert ModelManifest.from_dict({**base, "engine": None}).engine is None
    with pytest.raises(ValueError, match="expected engine onnxruntime, tensorrt, auto or null"):
        ModelManifest.from_dict({**base, "engine": "tflite"})
