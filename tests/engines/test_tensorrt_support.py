"""The TensorRT engine's library-free parts, for real: cache keys, the engine cache on disk, profile
derivation, dtype mapping, build plans, and what happens without TensorRT. Plus GPU tests that run where
TensorRT exists.

TensorRT cannot be installed on the machines this suite usually runs on. Two tests below drive our TensorRT
glue (precision flags per TensorRT version, progress arithmetic) through small stand-ins for `tensorrt`;
each says so where it is defined. Everything else here is the real code on real files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from visionrpc.engines import EngineError, OnnxRuntimeEngine, TensorSpec
from visionrpc.engines._cuda import CudaDevice, CudaStream, TensorBuffer
from visionrpc.engines.engine_cache import (
    FORMAT_VERSION,
    CacheEntryError,
    DeviceIdentity,
    EngineCache,
    EngineCacheKey,
    file_sha256,
)
from visionrpc.engines.tensorrt_build import STRONGLY_TYPED, _configure_precision, _progress_monitor
from visionrpc.engines.tensorrt_engine import TensorRTEngine, build_engine, probe_tensorrt
from visionrpc.engines.tensorrt_plan import (
    BuildPlan,
    InputProfile,
    Precision,
    derive_profiles,
    numpy_dtype_for_trt,
    onnx_input_specs,
    trt_dtype_name_for_numpy,
)

TENSORRT_IMPORTABLE = importlib.util.find_spec("tensorrt") is not None
AVAILABILITY = probe_tensorrt()
needs_gpu = pytest.mark.skipif(
    not AVAILABILITY.available, reason=f"needs TensorRT and an NVIDIA GPU: {AVAILABILITY.reason}"
)

PROFILE = InputProfile("images", (1, 3, 640, 640), (1, 3, 640, 640), (8, 3, 640, 640))
KEY = EngineCacheKey(
    model_sha256="a" * 64,
    tensorrt_version="10.3.0",
    gpu_name="Orin",
    compute_capability="8.7",
    precision="fp16",
    profiles=(PROFILE,),
)


# -- cache keys ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "other"),
    [
        ("model_sha256", "b" * 64),
        ("tensorrt_version", "10.3.1"),
        ("gpu_name", "NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0"),
        ("precision", "fp32"),
        ("profiles", (InputProfile("images", (1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640)),)),
        ("profiles", (InputProfile("images", (1, 3, 640, 640), (1, 3, 640, 640), (16, 3, 640, 640)),)),
        ("profiles", (InputProfile("input", (1, 3, 640, 640), (1, 3, 640, 640), (8, 3, 640, 640)),)),
        ("dla_core", 0),
        ("calibration_sha256", "c" * 64),
    ],
)
def test_every_key_component_changes_the_digest(field: str, other: object) -> None:
    changed = dataclasses.replace(KEY, **{field: other})
    assert changed.digest() != KEY.digest()
    assert EngineCache(Path("/cache")).path_for(changed) != EngineCache(Path("/cache")).path_for(KEY)


def test_equal_keys_have_equal_stable_digests() -> None:
    twin = EngineCacheKey(**{f.name: getattr(KEY, f.name) for f in dataclasses.fields(KEY)})
    assert twin.digest() == KEY.digest()
    assert len(KEY.digest()) == 64 and int(KEY.digest(), 16) >= 0
    # The digest is over canonical JSON (format version + fields), so it is the same in every process.
    canonical = json.dumps({"format": FORMAT_VERSION, **KEY.to_dict()}, sort_keys=True, separators=(",", ":"))
    assert KEY.digest() == hashlib.sha256(canonical.encode()).hexdigest()


def test_key_for_a_build_takes_the_device_and_the_plan() -> None:
    device = DeviceIdentity("10.3.0", "Orin", "8.7")
    plan = BuildPlan(profiles=(PROFILE,), precision=Precision.FP16, dla_core=1)
    key = EngineCacheKey.for_build("a" * 64, device, plan, calibration_sha256="")
    assert key == dataclasses.replace(KEY, dla_core=1)
    assert device.digest() != DeviceIdentity("10.3.0", "Orin", "7.2").digest()


# -- the engine cache on disk ------------------------------------------------------------------------------


def test_a_written_entry_reads_back_with_its_metadata(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    plan = bytes(range(256)) * 40
    path = cache.write(KEY, plan, metadata={"precision": "fp16", "model": "yolo/1"})
    assert path == cache.path_for(KEY) and path.parent == tmp_path / "engines"
    entry = cache.read(KEY)
    assert entry is not None
    assert entry.plan == plan and entry.key == KEY
    assert entry.metadata == {"precision": "fp16", "model": "yolo/1"}
    # Atomic writes leave no temporary files behind, also when replacing an entry.
    cache.write(KEY, plan[::-1])
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    replaced = cache.read(KEY)
    assert replaced is not None and replaced.plan == plan[::-1]


def test_a_missing_entry_is_a_miss(tmp_path: Path) -> None:
    assert EngineCache(tmp_path).read(KEY) is None


def _corrupt_plan_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def _header_length_huge(data: bytes) -> bytes:
    return data[:8] + struct.pack("<I", 1 << 30) + data[12:]


def _rewrite_header(data: bytes, change: dict[str, Any]) -> bytes:
    (length,) = struct.unpack_from("<I", data, 8)
    header = json.loads(data[12 : 12 + length])
    header.update(change)
    encoded = json.dumps(header).encode()
    return data[:8] + struct.pack("<I", len(encoded)) + encoded + data[12 + length :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-10], "header says"),  # truncated plan
        (lambda data: data[:20], "truncated or oversized header"),  # truncated header
        (lambda data: b"", "bad magic"),
        (lambda data: b"NOTAPLAN" + data[8:], "bad magic"),
        (_corrupt_plan_bit, "sha256 does not match"),
        (_header_length_huge, "truncated or oversized header"),
        (lambda data: data[:12] + b"\xff" * 40 + data[52:], "unreadable header"),
        (lambda data: _rewrite_header(data, {"format": FORMAT_VERSION + 1}), "format"),
        (lambda data: _rewrite_header(data, {"metadata": ["x"]}), "metadata"),
    ],
)
def test_a_damaged_entry_is_rejected_removed_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, message: str
) -> None:
    cache = EngineCache(tmp_path)
    path = cache.write(KEY, b"plan bytes " * 100)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CacheEntryError, match=message):
        cache.verify(path, KEY)
    with caplog.at_level(logging.WARNING, logger="visionrpc.engines.engine_cache"):
        assert cache.read(KEY) is None
    assert "unusable and will be rebuilt" in caplog.text and message in caplog.text
    assert not path.exists()  # removed, so the rebuild writes a fresh one


def test_an_entry_built_for_another_key_is_never_trusted(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    other = dataclasses.replace(KEY, tensorrt_version="10.0.1", gpu_name="Tesla T4")
    written = cache.write(other, b"a plan for a T4")
    # Someone copies (or a hash collision of names would place) the T4 entry where KEY's belongs.
    written.rename(cache.path_for(KEY))
    with pytest.raises(
        CacheEntryError, match=r"another key \(differs in \['gpu_name', 'tensorrt_version'\]\)"
    ):
        cache.verify(cache.path_for(KEY), KEY)
    assert cache.read(KEY) is None


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17)  # several read chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# -- optimisation profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        # Dynamic batch, height and width: the manifest size, batch 1..max, tuned for 1.
        ((None, 3, None, None), ((1, 3, 416, 640), (1, 3, 416, 640), (8, 3, 416, 640))),
        # Dynamic batch only, fixed size equal to the manifest's.
        ((None, 3, 416, 640), ((1, 3, 416, 640), (1, 3, 416, 640), (8, 3, 416, 640))),
        # Fixed batch: a static profile.
        ((1, 3, 416, 640), ((1, 3, 416, 640),) * 3),
        ((4, 3, None, None), ((4, 3, 416, 640),) * 3),
        # A dynamic channel dimension: the server feeds 3 channels.
        ((None, None, None, None), ((1, 3, 416, 640), (1, 3, 416, 640), (8, 3, 416, 640))),
        # Not an image input, but static: kept as it is.
        ((1, 10), ((1, 10),) * 3),
    ],
)
def test_profile_derivation(
    shape: tuple[int | None, ...], expected: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
) -> None:
    (profile,) = derive_profiles(
        [TensorSpec("images", "float32", shape)], input_width=640, input_height=416, max_batch=8
    )
    assert (profile.min, profile.opt, profile.max) == expected
    assert profile.dynamic == (expected[0] != expected[2])


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((None, 3, 320, None), "fixed height 320 contradicts the manifest's input_height 416"),
        ((None, 3, None, 320), "fixed width 320 contradicts the manifest's input_width 640"),
        ((None, 1, None, None), "expected 3 channels, got 1"),
        ((None, 10), "cannot derive an optimisation profile"),
        ((None, 3, None), "cannot derive an optimisation profile"),
    ],
)
def test_profile_derivation_refuses_what_it_cannot_fill(shape: tuple[int | None, ...], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        derive_profiles([TensorSpec("x", "float32", shape)], input_width=640, input_height=416, max_batch=8)


def test_profile_derivation_takes_opt_batch_and_checks_its_bounds() -> None:
    spec = [TensorSpec("x", "float32", (None, 3, None, None))]
    (profile,) = derive_profiles(spec, input_width=32, input_height=32, max_batch=16, opt_batch=4)
    assert profile.opt == (4, 3, 32, 32) and profile.max == (16, 3, 32, 32)
    for max_batch, opt_batch in [(0, 1), (4, 0), (4, 5)]:
        with pytest.raises(EngineError, match="expected"):
            derive_profiles(spec, input_width=32, input_height=32, max_batch=max_batch, opt_batch=opt_batch)


def test_onnx_input_specs_reads_real_inputs_not_initializers(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"])],
        "conv",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 416, "width"]),
            # Old exporters list initializers as graph inputs too; they are weights, not inputs.
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 416, "width"])],
        initializer=[weight],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    assert onnx_input_specs(path) == (TensorSpec("images", "float32", (None, 3, 416, None)),)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(EngineError, match="not a valid ONNX model"):
        onnx_input_specs(tmp_path / "bad.onnx")
    with pytest.raises(EngineError, match="not found"):
        onnx_input_specs(tmp_path / "missing.onnx")


# -- dtypes ----------------------------------------------------------------------------------------------

DTYPES = [
    ("FLOAT", "float32"),
    ("HALF", "float16"),
    ("INT8", "int8"),
    ("INT32", "int32"),
    ("INT64", "int64"),
    ("BOOL", "bool"),
    ("UINT8", "uint8"),
]


@pytest.mark.parametrize(("trt_name", "numpy_name"), DTYPES)
def test_dtype_mapping_both_ways(trt_name: str, numpy_name: str) -> None:
    assert numpy_dtype_for_trt(trt_name) == np.dtype(numpy_name)
    assert numpy_dtype_for_trt(f"DataType.{trt_name}") == np.dtype(numpy_name)  # str() of the enum member
    # TensorRT's enum members carry .name; a namedtuple-like value stands in for one here.
    assert numpy_dtype_for_trt(SimpleNamespace(name=trt_name)) == np.dtype(numpy_name)
    assert trt_dtype_name_for_numpy(numpy_name) == trt_name
    assert trt_dtype_name_for_numpy(np.dtype(numpy_name)) == trt_name


@pytest.mark.parametrize("trt_name", ["FP8", "BF16", "INT4", "FP4", "DataType.BF16"])
def test_trt_types_without_a_numpy_equivalent_are_refused(trt_name: str) -> None:
    with pytest.raises(EngineError, match="has no numpy equivalent"):
        numpy_dtype_for_trt(trt_name)


@pytest.mark.parametrize("numpy_name", ["float64", "complex64", "uint16", "object"])
def test_numpy_types_without_a_trt_equivalent_are_refused(numpy_name: str) -> None:
    with pytest.raises(EngineError, match="has no TensorRT equivalent"):
        trt_dtype_name_for_numpy(numpy_name)


# -- build plans --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workspace_bytes": 1024}, "workspace_bytes"),
        ({"dla_core": -2}, "dla_core"),
        ({"dla_core": 0, "precision": Precision.FP32}, "DLA runs FP16 or INT8 only"),
        ({"calibration_cache": Path("calib.cache")}, "calibration cache only applies to int8"),
        ({"profiles": (PROFILE, PROFILE)}, "one profile per input"),
    ],
)
def test_build_plan_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BuildPlan(**{"profiles": (PROFILE,), **changes})


def test_build_plan_max_batch_and_dynamic() -> None:
    assert BuildPlan(profiles=(PROFILE,)).max_batch == 8
    assert BuildPlan(profiles=(PROFILE,)).dynamic
    static = InputProfile("x", (1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32))
    assert not BuildPlan(profiles=(static,)).dynamic
    assert BuildPlan(profiles=()).max_batch == 1
    assert BuildPlan(profiles=(PROFILE,), precision=Precision.INT8, dla_core=0).dla_core == 0
    with pytest.raises(ValueError, match="min <= opt <= max"):
        InputProfile("x", (2, 3), (1, 3), (4, 3))


# -- TensorRT glue, through stand-ins for the tensorrt module (TensorRT cannot be installed here) -----------


class _RecordingConfig:
    """Stand-in for trt.IBuilderConfig: records the flags our code sets."""

    def __init__(self) -> None:
        self.flags: list[str] = []
        self.int8_calibrator: object = None

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


class _Calibrator:
    def __init__(self) -> None:
        pass


def _trt_stand_in(version: str, *, weak_typing: bool) -> SimpleNamespace:
    """Stand-in for the tensorrt module's BuilderFlag (present in 10.x, FP16/INT8 removed in 11.x)."""
    flags = {"FP16": "FP16", "INT8": "INT8", "GPU_FALLBACK": "GPU_FALLBACK"} if weak_typing else {}
    return SimpleNamespace(
        __version__=version, BuilderFlag=SimpleNamespace(**flags), IInt8EntropyCalibrator2=_Calibrator
    )


@pytest.mark.parametrize(
    ("version", "weak", "fast_fp16", "precision", "expected", "flags"),
    [
        ("10.3.0", True, True, Precision.FP16, "fp16", ["FP16"]),
        ("10.3.0", True, False, Precision.FP16, "fp32", []),  # no fast FP16 on this GPU: FP32, said so
        ("10.3.0", True, True, Precision.FP32, "fp32", []),
        ("10.3.0", True, True, Precision.INT8, "int8", ["INT8", "FP16"]),
        ("11.0.0", False, True, Precision.FP16, STRONGLY_TYPED, []),  # 11: no weak-typing flags at all
        ("11.0.0", False, True, Precision.INT8, STRONGLY_TYPED, []),
    ],
)
def test_precision_flags_per_tensorrt_version(
    version: str, weak: bool, fast_fp16: bool, precision: Precision, expected: str, flags: list[str]
) -> None:
    trt = _trt_stand_in(version, weak_typing=weak)
    builder = SimpleNamespace(platform_has_fast_fp16=fast_fp16)
    config = _RecordingConfig()
    plan = BuildPlan(profiles=(PROFILE,), precision=precision)
    assert _configure_precision(trt, builder, config, plan) == expected
    assert config.flags == flags


def test_int8_calibration_cache_is_replayed_on_10_and_refused_on_11(tmp_path: Path) -> None:
    calibration = tmp_path / "calib.cache"
    calibration.write_bytes(b"TRT-calibration")
    plan = BuildPlan(profiles=(PROFILE,), precision=Precision.INT8, calibration_cache=calibration)
    config = _RecordingConfig()
    builder = SimpleNamespace(platform_has_fast_fp16=True)
    _configure_precision(_trt_stand_in("10.3.0", weak_typing=True), builder, config, plan)
    calibrator: Any = config.int8_calibrator
    assert calibrator.read_calibration_cache() == b"TRT-calibration"
    assert calibrator.get_batch(["images"]) is None  # no data: TensorRT uses the cache
    with pytest.raises(EngineError, match="removed implicit INT8 calibration"):
        _configure_precision(_trt_stand_in("11.0.0", weak_typing=False), builder, _RecordingConfig(), plan)


class _MonitorBase:
    """Stand-in for trt.IProgressMonitor (a pybind11 base class in TensorRT >= 10)."""

    def __init__(self) -> None:
        pass


def test_progress_monitor_folds_nested_phases_into_one_monotonic_fraction() -> None:
    import threading

    reports: list[tuple[float | None, str]] = []
    keep_going = [True]

    def report(fraction: float | None, phase: str) -> bool:
        reports.append((fraction, phase))
        return keep_going[0]

    cancelled = threading.Event()
    monitor = _progress_monitor(SimpleNamespace(IProgressMonitor=_MonitorBase), report, cancelled)
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic selection", "Building engine", 4)
    for step in range(4):
        assert monitor.step_complete("Tactic selection", step)
    monitor.phase_finish("Tactic selection")
    assert monitor.step_complete("Building engine", 0)
    monitor.phase_start("Serialization", "Building engine", 2)
    assert monitor.step_complete("Serialization", 0)
    fractions = [f for f, _ in reports]
    assert fractions == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.75])
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(fractions))
    keep_going[0] = False  # the model was unloaded: TensorRT is told to stop
    assert not monitor.step_complete("Serialization", 1)
    assert cancelled.is_set()
    assert _progress_monitor(SimpleNamespace(), report, cancelled) is None  # TensorRT < 10: no monitor API


# -- without TensorRT ------------------------------------------------------------------------------------


@pytest.mark.skipif(TENSORRT_IMPORTABLE, reason="tensorrt is installed here")
def test_without_tensorrt_the_engine_and_the_builder_raise_a_clear_engine_error(tmp_path: Path) -> None:
    with pytest.raises(
        EngineError, match=r"TensorRT is not available: cannot import tensorrt \(No module named"
    ):
        TensorRTEngine.from_plan(b"plan", name="m/1", precision="fp16")
    with pytest.raises(EngineError, match="TensorRT is not available"):
        build_engine(tmp_path / "model.onnx", BuildPlan(profiles=(PROFILE,)))
    availability = probe_tensorrt()
    assert not availability.available and "cannot import tensorrt" in availability.reason
    with pytest.raises(EngineError, match="TensorRT is not available"):
        availability.identity()


# -- on a GPU with TensorRT ---------------------------------------------------------------------------------


def _cuda_unavailable() -> str:
    try:
        CudaDevice.query(0)
    except EngineError as exc:
        return str(exc)
    return ""


CUDA_UNAVAILABLE = _cuda_unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(bool(CUDA_UNAVAILABLE), reason=f"needs cuda-python and a CUDA GPU: {CUDA_UNAVAILABLE}")
def test_pinned_and_device_buffers_round_trip_through_a_stream() -> None:
    stream = CudaStream()
    buffer = TensorBuffer(4 * 1000)
    view = buffer.host_view(np.dtype(np.float32), (10, 100))
    expected = np.arange(1000, dtype=np.float32).reshape(10, 100)
    view[:] = expected
    buffer.to_device(view.nbytes, stream)
    stream.synchronize()
    view[:] = 0  # only the device copy holds the data now
    buffer.to_host(view.nbytes, stream)
    stream.synchronize()
    np.testing.assert_array_equal(view, expected)
    with pytest.raises(EngineError, match="needs 8000 bytes"):
        buffer.host_view(np.dtype(np.float64), (10, 100))
    buffer.close()
    buffer.close()  # idempotent
    if CudaDevice.query(0).can_map_host_memory:
        mapped = TensorBuffer(4096, mapped=True)
        assert mapped.device_address != 0
        mapped.close()
    stream.close()


def _conv_model(path: Path) -> Path:
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 32, 32])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.mark.gpu
@needs_gpu
def test_build_run_and_cache_a_real_engine_against_onnxruntime(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "conv.onnx")
    profiles = derive_profiles(onnx_input_specs(model), input_width=32, input_height=32, max_batch=4)
    cache = EngineCache(tmp_path / "engines")
    identity = AVAILABILITY.identity()
    plan = BuildPlan(
        profiles=profiles, precision=Precision.FP32, timing_cache=cache.timing_cache_path(identity)
    )
    seen: list[float | None] = []
    built = build_engine(model, plan, lambda fraction, phase: seen.append(fraction) is None)
    assert built.precision == "fp32" and seen[-1] == 1.0
    assert plan.timing_cache is not None and plan.timing_cache.is_file()
    key = EngineCacheKey.for_build(file_sha256(model), identity, plan)
    cache.write(key, built.plan, metadata={"precision": built.precision})
    entry = cache.read(key)
    assert entry is not None
    batch = (
        np.random.default_rng(2).standard_normal((10, 3, 32, 32)).astype(np.float32)
    )  # > max batch: chunks
    with (
        TensorRTEngine.from_plan(entry.plan, name="conv", precision="fp32") as engine,
        OnnxRuntimeEngine.load(model) as reference,
    ):
        assert engine.info.engine == "tensorrt" and engine.max_batch == 4
        engine.warmup()
        got = engine.infer({"images": batch})["y"]
        np.testing.assert_allclose(got, reference.infer({"images": batch})["y"], rtol=1e-3, atol=1e-3)
        with pytest.raises(EngineError, match="expected dtype float32"):
            engine.infer({"images": batch.astype(np.float64)})
    with pytest.raises(EngineError, match="closed"):
        engine.infer({"images": batch})
