"""bench.profile sorts py-spy's samples into the steps of Infer. The stacks below are assembled from frames of
real py-spy output (raw format, --threads) of a visionrpc server at c=1."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile import classify, summarise

_RPC = (
    "thread (15790): visionrpc-rpc_1;Thread._bootstrap (threading.py:1002);Thread._bootstrap_inner "
    "(threading.py:1045);Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83);"
    "_WorkItem.run (concurrent/futures/thread.py:58);_unary_response_in_pool (grpc/_server.py:788);"
    "_call_behavior (grpc/_server.py:608);map_errors.<locals>.wrapper (server/servicers/status.py:99);"
)
_SUBMIT = (
    "InferenceServicer.Infer (server/servicers/inference.py:77);Predictor.submit (server/predictor.py:159);"
    "BatchScheduler.submit (server/scheduler.py:306);"
)
_MAIN = "thread (15700): MainThread;_run_module_as_main (<frozen runpy>:198);serve (server/app.py:259)"


@pytest.mark.parametrize(
    ("stack", "step"),
    [
        (
            _RPC
            + _SUBMIT
            + "BatchScheduler._run_claimed_batch (server/scheduler.py:372);BatchScheduler._run_batch "
            "(server/scheduler.py:416);OnnxRuntimeEngine.infer (engines/onnxruntime_engine.py:169)",
            "engine (ONNX Runtime)",
        ),
        (
            _RPC
            + _SUBMIT.replace("306", "289")
            + "Predictor.submit.<locals>.prepare (server/predictor.py:154);"
            "preprocess (server/processing/preprocess.py:168)",
            "preprocess (letterbox, normalise)",
        ),
        (
            _RPC + "InferenceServicer.Infer (server/servicers/inference.py:77);Predictor.submit "
            "(server/predictor.py:165);decode_batch (server/processing/decoders.py:164);_decode_yolo "
            "(server/processing/decoders.py:326)",
            "postprocess (decode, NMS)",
        ),
        (
            _RPC
            + "InferenceServicer.Infer (server/servicers/inference.py:66);_GeneratorContextManager.__enter__ "
            "(contextlib.py:137);ModelManager.acquire (server/models/manager.py:131);ModelManager._resolve "
            "(server/models/manager.py:215)",
            "model lookup (ModelManager.acquire)",
        ),
        (
            _RPC + "InferenceServicer.Infer (server/servicers/inference.py:60);decode_request_image "
            "(server/servicers/convert.py:68)",
            "request to array (decode_request_image)",
        ),
        (
            _RPC + "InferenceServicer.Infer (server/servicers/inference.py:80);infer_response "
            "(server/servicers/convert.py:167)",
            "response message (infer_response)",
        ),
        (
            _RPC + _SUBMIT + "Event.wait (threading.py:629);Condition.wait (threading.py:327)",
            "scheduler: queue, locks, waiting for a batch",
        ),
        (
            _RPC + "InferenceServicer.Infer (server/servicers/inference.py:48);ModelId.parse "
            "(server/models/repository.py:40)",
            "the rest of Infer (ids, options, scheduler bookkeeping)",
        ),
        (
            _RPC.replace(
                "_call_behavior (grpc/_server.py:608);map_errors.<locals>.wrapper "
                "(server/servicers/status.py:99);",
                "",
            ).replace("788", "796")
            + "_status (grpc/_server.py:766)",
            "grpcio around the handler (deserialise, send, status)",
        ),
        (  # an idle pool thread, the main thread, the poller: not a step
            "thread (15790): visionrpc-rpc_1;Thread._bootstrap (threading.py:1002);_worker "
            "(concurrent/futures/thread.py:85)",
            None,
        ),
        (_MAIN, None),
    ],
)
def test_samples_are_sorted_into_the_steps_of_infer(stack: str, step: str | None) -> None:
    assert classify(stack) == step


def test_at_concurrency_one_the_steps_and_the_transit_add_up_to_the_wall_time(tmp_path: Path) -> None:
    # 1 s sampled at 100 ticks (the main thread is sampled at each), 2 calls: 60 ticks in the engine,
    # 10 in grpcio around the handler, so 30 ticks (300 ms, 150 ms per call) were spent in transit.
    raw = tmp_path / "profile.txt"
    engine = _RPC + _SUBMIT + "OnnxRuntimeEngine.infer (engines/onnxruntime_engine.py:169)"
    around = _RPC.split("_call_behavior")[0] + "_status (grpc/_server.py:766)"
    raw.write_text(f"{_MAIN} 100\n{engine} 60\n{around} 10\n")
    table = summarise(raw, seconds=1.0, calls=2, concurrency=1)
    assert "| engine (ONNX Runtime) | 300.000 |" in table
    assert "| grpcio around the handler (deserialise, send, status) | 50.000 |" in table
    assert "in transit" in table and "| 150.000 |" in table
