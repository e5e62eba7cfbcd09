"""The ONNX Runtime engine on tiny real models built with onnx.helper: results, providers, errors, threads."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from visionrpc.engines import Engine, EngineError, EngineInfo, OnnxRuntimeEngine, TensorSpec
from visionrpc.engines.onnxruntime_engine import available_cores, resolve_providers

F32 = npt.NDArray[np.float32]
CPU = "CPUExecutionProvider"
CUDA_AVAILABLE = "CUDAExecutionProvider" in ort.get_available_providers()

# A 1x1 convolution 3 -> 2 channels plus a bias, so results are easy to compute with numpy.
CONV_W = np.array([[1.0, 0.5, -1.0], [0.0, 2.0, 0.25]], np.float32).reshape(2, 3, 1, 1)
CONV_B = np.array([0.5, -1.0], np.float32)


def conv_reference(x: F32) -> F32:
    return np.einsum("oc,nchw->nohw", CONV_W[:, :, 0, 0], x) + CONV_B[None, :, None, None]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def conv_model(path: Path) -> Path:
    """x [batch, 3, height, width] float32 -> y [batch, 2, height, width]; batch/height/width dynamic."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        initializer=[numpy_helper.from_array(CONV_W, "w"), numpy_helper.from_array(CONV_B, "b")],
    )
    return save(graph, path)


def fp16_model(path: Path) -> Path:
    """x [batch, 4] float16 -> y = 2x; the batch dimension has no name at all (unknown, not symbolic)."""
    two = numpy_helper.from_array(np.array(2.0, np.float16), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None, 4])],
        initializer=[two],
    )
    return save(graph, path)


def two_input_model(path: Path) -> Path:
    """a [1, 3, 32, 32] uint8 and b [1, 3, 32, 32] float32 (fixed shapes) -> sum = float(a) + b."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["a"], ["a_float"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a_float", "b"], ["sum"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 3, 32, 32]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 32, 32]),
        ],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    return save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "conv": conv_model(folder / "conv.onnx"),
        "fp16": fp16_model(folder / "fp16.onnx"),
        "two_inputs": two_input_model(folder / "two_inputs.onnx"),
    }


@pytest.fixture
def conv(models: dict[str, Path]) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine.load(models["conv"], intra_op_threads=2)


# --- loading and describing ---------------------------------------------------------------------------


DESCRIPTIONS = {
    "conv-fp32": (
        "conv",
        "fp32",
        [TensorSpec("x", "float32", (None, 3, None, None))],
        [("y", (None, 2, None, None))],
    ),
    "mul-fp16": ("fp16", "fp16", [TensorSpec("x", "float16", (None, 4))], [("y", (None, 4))]),
    "two-inputs-uint8": (
        "two_inputs",
        "uint8",
        [TensorSpec("a", "uint8", (1, 3, 32, 32)), TensorSpec("b", "float32", (1, 3, 32, 32))],
        [("sum", (1, 3, 32, 32))],
    ),
}


@pytest.mark.parametrize(
    ("model", "precision", "inputs", "outputs"), DESCRIPTIONS.values(), ids=DESCRIPTIONS.keys()
)
def test_load_describes_the_model(
    models: dict[str, Path],
    model: str,
    precision: str,
    inputs: list[TensorSpec],
    outputs: list[tuple[str, tuple[int | None, ...]]],
) -> None:
    engine = OnnxRuntimeEngine.load(models[model])
    assert isinstance(engine, Engine)
    assert engine.info == EngineInfo(engine="onnxruntime", provider=CPU, device="cpu", precision=precision)
    assert list(engine.inputs) == inputs
    assert [(spec.name, spec.shape) for spec in engine.outputs] == outputs
    assert engine.path == models[model] and not engine.closed


def check_is_engine(engine: OnnxRuntimeEngine) -> Engine:
    return (
        engine  # mypy checks that OnnxRuntimeEngine satisfies the protocol, warmup's extra parameter included
    )


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 17, 45), (8, 3, 1, 1)], ids=str)
def test_conv_matches_numpy(conv: OnnxRuntimeEngine, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = conv.infer({"x": x})
    assert list(outputs) == ["y"]
    assert outputs["y"].dtype == np.float32
    np.testing.assert_allclose(outputs["y"], conv_reference(x), rtol=1e-5, atol=1e-5)


def test_fp16_model_runs_in_fp16(models: dict[str, Path]) -> None:
    engine = OnnxRuntimeEngine.load(models["fp16"])
    x = np.arange(12, dtype=np.float16).reshape(3, 4) / 4
    y = engine.infer({"x": x})["y"]
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, x * 2)


def test_two_inputs_of_different_dtypes(models: dict[str, Path]) -> None:
    engine = OnnxRuntimeEngine.load(models["two_inputs"])
    a = np.full((1, 3, 32, 32), 200, np.uint8)
    b = np.full((1, 3, 32, 32), 0.5, np.float32)
    np.testing.assert_array_equal(engine.infer({"a": a, "b": b})["sum"], np.full((1, 3, 32, 32), 200.5))


# --- providers ------------------------------------------------------------------------------------------


# id -> (requested, providers the session uses, a provider that must be reported as unavailable)
PROVIDERS: dict[str, tuple[list[str] | None, list[str], str | None]] = {
    "default": (None, [CPU], None),
    "cpu-short": (["cpu"], [CPU], None),
    "cpu-full-name": ([CPU], [CPU], None),
    "cpu-any-case": ([" CPU "], [CPU], None),
    "cuda-falls-back": (["cuda"], [CPU], "CUDAExecutionProvider"),
    "tensorrt-cuda-cpu": (["tensorrt", "cuda", "cpu"], [CPU], "TensorrtExecutionProvider"),
    "full-cuda-name": (["CUDAExecutionProvider"], [CPU], "CUDAExecutionProvider"),
    "openvino": (["openvino", "cpu"], [CPU], "OpenVINOExecutionProvider"),
}


@pytest.mark.skipif(CUDA_AVAILABLE, reason="the fallback table assumes a CPU-only onnxruntime build")
@pytest.mark.parametrize(("requested", "used", "unavailable"), PROVIDERS.values(), ids=PROVIDERS.keys())
def test_provider_selection(
    models: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    requested: list[str] | None,
    used: list[str],
    unavailable: str | None,
) -> None:
    with caplog.at_level(logging.INFO, logger="visionrpc.engines.onnxruntime_engine"):
        engine = OnnxRuntimeEngine.load(models["conv"], providers=requested)

    assert engine.info.provider == used[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if unavailable is None:
        assert warnings == []
    else:
        assert any(unavailable in w and "not available" in w for w in warnings), warnings
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert len(loaded) == 1 and str(used) in loaded[0]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (["cpu", "azure"], ["AzureExecutionProvider", CPU]),  # CPU moves last: it is the fallback
        (["azure", "azure"], ["AzureExecutionProvider", CPU]),  # duplicates collapse, CPU is added
        ([], [CPU]),
    ],
    ids=["cpu-moves-last", "duplicates-and-cpu-added", "empty-list"],
)
def test_resolve_providers_orders_cpu_last(requested: list[str], expected: list[str]) -> None:
    if "AzureExecutionProvider" not in ort.get_available_providers() and "azure" in requested:
        pytest.skip("this onnxruntime build has no AzureExecutionProvider to order")
    assert resolve_providers(requested) == expected


def test_unknown_provider_is_an_error(models: dict[str, Path]) -> None:
    with pytest.raises(EngineError, match=r"unknown execution provider 'cuad'; expected one of \[.*'cuda'"):
        OnnxRuntimeEngine.load(models["conv"], providers=["cuad"])


def test_threads_are_sized_to_the_machine(models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    with caplog.at_level(logging.INFO, logger="visionrpc.engines.onnxruntime_engine"):
        OnnxRuntimeEngine.load(models["conv"])
        OnnxRuntimeEngine.load(models["conv"], intra_op_threads=1)
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert f"{cores} intra-op threads" in loaded[0] and "1 intra-op threads" in loaded[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"intra_op_threads": -1}, "intra_op_threads >= 0"), ({"inter_op_threads": 0}, "inter_op_threads >= 1")],
    ids=["negative-intra", "zero-inter"],
)
def test_thread_counts_are_checked(models: dict[str, Path], kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(EngineError, match=message):
        OnnxRuntimeEngine.load(models["conv"], **kwargs)  # type: ignore[arg-type]


# --- load errors ----------------------------------------------------------------------------------------


def _write(content: bytes) -> Callable[[Path, dict[str, Path]], Path]:
    def make(folder: Path, models: dict[str, Path]) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(content)
        return path

    return make


def _truncated(folder: Path, models: dict[str, Path]) -> Path:
    data = models["conv"].read_bytes()
    path = folder / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def _unsupported_op(folder: Path, models: dict[str, Path]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"], domain="example.invalid")],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.invalid", 1)],
        ir_version=8,
    )
    onnx.save(model, folder / "unsupported.onnx")
    return folder / "unsupported.onnx"


LOAD_ERRORS: dict[str, tuple[Callable[[Path, dict[str, Path]], Path], str]] = {
    "missing-file": (lambda folder, models: folder / "absent.onnx", "model file not found"),
    "directory": (lambda folder, models: folder, "it is a directory"),
    "garbage": (_write(np.random.default_rng(3).bytes(2048)), "not a valid ONNX model"),
    "text": (_write(b"this is not a model\n"), "not a valid ONNX model"),
    "empty": (_write(b""), "onnxruntime could not create a session"),
    "truncated": (_truncated, "not a valid ONNX model"),
    "unsupported-operator": (_unsupported_op, "onnxruntime could not create a session"),
}


@pytest.mark.parametrize(("make", "message"), LOAD_ERRORS.values(), ids=LOAD_ERRORS.keys())
def test_load_errors(
    tmp_path: Path, models: dict[str, Path], make: Callable[[Path, dict[str, Path]], Path], message: str
) -> None:
    path = make(tmp_path, models)
    with pytest.raises(EngineError, match=message) as caught:
        OnnxRuntimeEngine.load(path)
    assert str(path) in str(caught.value)


# --- infer errors ---------------------------------------------------------------------------------------

A = np.zeros((1, 3, 32, 32), np.uint8)
B = np.zeros((1, 3, 32, 32), np.float32)

INFER_ERRORS: dict[str, tuple[dict[str, object], str]] = {
    "missing-input": ({"a": A}, r"expected inputs \['a', 'b'\], got \['a'\]; missing \['b'\]"),
    "unexpected-input": ({"a": A, "b": B, "c": B}, r"unexpected \['c'\]"),
    "misnamed-input": ({"a": A, "B": B}, r"missing \['b'\]; unexpected \['B'\]"),
    "no-inputs": ({}, r"missing \['a', 'b'\]"),
    "float64-for-float32": (
        {"a": A, "b": B.astype(np.float64)},
        "input 'b': expected dtype float32, got float64",
    ),
    "float32-for-uint8": (
        {"a": A.astype(np.float32), "b": B},
        "input 'a': expected dtype uint8, got float32",
    ),
    "wrong-rank": ({"a": A, "b": B[0]}, r"input 'b': expected shape \(1, 3, 32, 32\), got \(3, 32, 32\)"),
    "wrong-fixed-dim": ({"a": A, "b": np.zeros((1, 3, 32, 31), np.float32)}, r"got \(1, 3, 32, 31\)"),
    "list-not-array": ({"a": A, "b": B.tolist()}, "input 'b': expected a numpy array, got list"),
}


@pytest.mark.parametrize(("inputs", "message"), INFER_ERRORS.values(), ids=INFER_ERRORS.keys())
def test_infer_errors(models: dict[str, Path], inputs: dict[str, object], message: str) -> None:
    engine = OnnxRuntimeEngine.load(models["two_inputs"])
    with pytest.raises(EngineError, match=message):
        engine.infer(inputs)  # type: ignore[arg-type]


def test_dynamic_dims_accept_any_size_but_fixed_ones_are_checked(conv: OnnxRuntimeEngine) -> None:
    with pytest.raises(EngineError, match=r"expected shape \(\?, 3, \?, \?\), got \(1, 4, 8, 8\)"):
        conv.infer({"x": np.zeros((1, 4, 8, 8), np.float32)})


def test_runtime_failures_become_engine_errors(conv: OnnxRuntimeEngine) -> None:
    # Passes our checks (dynamic dims), fails inside ONNX Runtime: a 0-sized spatial dimension.
    with pytest.raises(EngineError, match=r"onnxruntime failed to run conv\.onnx"):
        conv.infer({"x": np.zeros((1, 3, 0, 4), np.float32)})


# --- concurrency, warm-up, close ------------------------------------------------------------------------


def test_concurrent_infer_calls_give_correct_results(conv: OnnxRuntimeEngine) -> None:
    rng = np.random.default_rng(42)
    batches = [rng.standard_normal((1 + i % 4, 3, 24 + i % 3 * 8, 40)).astype(np.float32) for i in range(64)]
    start = threading.Barrier(16)

    def run(index: int) -> F32:
        if index < 16:
            start.wait(timeout=30)  # line the first 16 calls up on the 16 workers so they really overlap
        return conv.infer({"x": batches[index]})["y"]  # type: ignore[return-value]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(run, range(len(batches))))

    for x, y in zip(batches, results, strict=True):
        np.testing.assert_allclose(y, conv_reference(x), rtol=1e-5, atol=1e-5)


WARMUPS: dict[str, tuple[str, dict[str, tuple[int, ...]] | None, dict[str, tuple[int, ...]]]] = {
    "dynamic-defaults": ("conv", None, {"x": (1, 3, 320, 320)}),
    "caller-shape": ("conv", {"x": (2, 3, 64, 96)}, {"x": (2, 3, 64, 96)}),
    "unnamed-batch": ("fp16", None, {"x": (1, 4)}),
    "fixed-shapes": ("two_inputs", None, {"a": (1, 3, 32, 32), "b": (1, 3, 32, 32)}),
}


@pytest.mark.parametrize(("model", "shapes", "expected"), WARMUPS.values(), ids=WARMUPS.keys())
def test_warmup_runs_one_batch(
    models: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    shapes: dict[str, tuple[int, ...]] | None,
    expected: dict[str, tuple[int, ...]],
) -> None:
    engine = OnnxRuntimeEngine.load(models[model])
    seen: list[dict[str, tuple[int, ...]]] = []
    real_infer = engine.infer

    def spy(inputs: dict[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        seen.append({name: array.shape for name, array in inputs.items()})
        return real_infer(inputs)  # the real run: warm-up must succeed on the model

    monkeypatch.setattr(engine, "infer", spy)
    engine.warmup(shapes)
    assert seen == [expected]


def test_warmup_rejects_unknown_inputs(conv: OnnxRuntimeEngine) -> None:
    with pytest.raises(EngineError, match=r"unknown inputs \['images'\]; the model has \['x'\]"):
        conv.warmup({"images": (1, 3, 32, 32)})


def test_close(models: dict[str, Path]) -> None:
    engine = OnnxRuntimeEngine.load(models["conv"])
    x = np.zeros((1, 3, 8, 8), np.float32)
    engine.infer({"x": x})
    engine.close()
    assert engine.closed and "closed" in repr(engine)
    for call in (lambda: engine.infer({"x": x}), engine.warmup):
        with pytest.raises(EngineError, match="is closed"):
            call()
    engine.close()  # idempotent
    assert engine.info.provider == CPU  # what it was stays readable


def test_context_manager_closes(models: dict[str, Path]) -> None:
    with OnnxRuntimeEngine.load(models["conv"]) as engine:
        engine.warmup()
    assert engine.closed


def test_close_while_calls_are_in_flight(conv: OnnxRuntimeEngine) -> None:
    # Calls that already hold the session finish normally; only later ones see the closed engine.
    x = np.ones((4, 3, 256, 256), np.float32)
    errors: list[Exception] = []
    results: list[F32] = []

    def call() -> None:
        try:
            results.append(conv.infer({"x": x})["y"])  # type: ignore[arg-type]
        except EngineError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    conv.close()
    for thread in threads:
        thread.join()
    assert len(results) + len(errors) == 8
    assert all("is closed" in str(e) for e in errors)
    for y in results:
        np.testing.assert_allclose(y, conv_reference(x), rtol=1e-5, atol=1e-5)
