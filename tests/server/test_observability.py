"""Metrics, traces and logs, read the way operators read them: /metrics over HTTP from a real server, spans
received by an OTLP collector (a real gRPC TraceService in this process), JSON lines on stderr."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from conftest import RunningServer, start_server, wait_for
from media import media
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from streaming import free_port
from visionrpc.server.config import ServerConfig
from visionrpc.server.logs import configure_logging
from visionrpc.server.tracing import PIPELINE_STEPS
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def infer_request() -> inference_pb2.InferRequest:
    return inference_pb2.InferRequest(images=[types_pb2.Image(encoded=media("coffee.png").read_bytes())])


@pytest.fixture(scope="module")
def metered_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    config = replace(
        base_config, model_repository=tmp_path_factory.mktemp("models"), metrics_port=free_port()
    )
    running = start_server(config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=0.5)


def scrape(server: RunningServer) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = [(s.name, dict(s.labels), s.value) for s in family.samples]
    return families


# (family, labels a sample must carry): after one good and one bad Infer and a short stream.
EXPECTED = [
    ("visionrpc_rpc_calls", {"method": "/visionrpc.v1.InferenceService/Infer", "code": "OK"}),
    ("visionrpc_rpc_calls", {"method": "/visionrpc.v1.InferenceService/Infer", "code": "INVALID_ARGUMENT"}),
    ("visionrpc_rpc_calls", {"method": "/visionrpc.v1.InferenceService/StreamPredictions"}),
    ("visionrpc_rpc_duration_seconds", {"method": "/visionrpc.v1.InferenceService/Infer"}),
    ("visionrpc_infer_duration_seconds", {"model": "yolov3-tiny-coco/1", "engine": "onnxruntime"}),
    ("visionrpc_batch_size", {"model": "yolov3-tiny-coco/1"}),
    ("visionrpc_batch_duration_seconds", {"model": "yolov3-tiny-coco/1", "engine": "onnxruntime"}),
    ("visionrpc_queue_wait_seconds", {"model": "yolov3-tiny-coco/1", "origin": "unary"}),
    ("visionrpc_queue_wait_seconds", {"model": "yolov3-tiny-coco/1", "origin": "stream"}),
    ("visionrpc_queue_depth", {"model": "yolov3-tiny-coco/1", "origin": "unary"}),
    ("visionrpc_images_dropped", {}),
    ("visionrpc_stream_pipelines", {}),
    ("visionrpc_stream_subscribers", {}),
    ("visionrpc_stream_frames", {"outcome": "decoded"}),
    ("visionrpc_stream_frames", {"outcome": "inferred"}),
    ("visionrpc_stream_results_dropped", {}),
    ("visionrpc_source_reconnects", {}),
    ("visionrpc_model_load_duration_seconds", {"model": "yolov3-tiny-coco/1"}),
    ("visionrpc_engine_build_duration_seconds", {}),
    ("visionrpc_model_state", {"model": "yolov3-tiny-coco/1", "state": "ready"}),
    ("process_resident_memory_bytes", {}),
]


def test_metrics_endpoint_shows_every_family(metered_server: RunningServer) -> None:
    with grpc.insecure_channel(metered_server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.Infer(infer_request(), timeout=30)
        with pytest.raises(grpc.RpcError):
            stub.Infer(inference_pb2.InferRequest(), timeout=30)  # no image: INVALID_ARGUMENT
        request = inference_pb2.StreamPredictionsRequest(
            sources=[inference_pb2.VideoSource(path="bikes.mp4")]
        )
        stream = stub.StreamPredictions(request, timeout=60)
        frames = 0
        for message in stream:
            frames += message.HasField("frame")
            if frames == 3:
                break
        stream.cancel()
    assert frames == 3
    # A call is counted as it ends on the server, which may be just after the client has let go of it.
    assert wait_for(lambda: not missing_from(scrape(metered_server))), missing_from(scrape(metered_server))
    families = scrape(metered_server)
    print(f"\n/metrics: {len(families)} families, {sum(len(s) for s in families.values())} samples")


def missing_from(families: dict[str, list[tuple[str, dict[str, str], float]]]) -> list[tuple[str, object]]:
    missing: list[tuple[str, object]] = []
    for name, labels in EXPECTED:
        samples = families.get(name)
        if samples is None and name != "visionrpc_engine_build_duration_seconds":
            missing.append((name, labels))
            continue
        if (
            samples is not None
            and labels
            and not any(labels.items() <= sample_labels.items() for _, sample_labels, _ in samples)
        ):
            missing.append((name, labels))
    return missing


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[object] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - the generated base class fixes the name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_a_call_continues_the_clients_trace_with_a_span_per_pipeline_step(
    base_config: ServerConfig, tmp_path: Path
) -> None:
    collector = _Collector()
    otlp = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    config = replace(
        base_config,
        model_repository=tmp_path / "models",
        tracing_endpoint=f"http://127.0.0.1:{otlp_port}",
    )
    running = start_server(config)
    try:
        running.server.wait_until_ready(timeout_s=300)
        with grpc.insecure_channel(running.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
            stub.Infer(infer_request(), metadata=(("traceparent", traceparent),), timeout=30)
    finally:
        running.server.stop(grace_s=0.5)  # flushes the spans
        otlp.stop(None)
    spans = [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]  # type: ignore[attr-defined]
    by_name = {s.name: s for s in spans}  # type: ignore[attr-defined]
    call = by_name.get("/visionrpc.v1.InferenceService/Infer")
    assert call is not None, f"no server span in the client's trace: {sorted(by_name)}"
    assert call.parent_span_id.hex() == PARENT_SPAN  # type: ignore[attr-defined]
    for step in PIPELINE_STEPS:
        assert step in by_name, f"no {step} span: {sorted(by_name)}"
        assert by_name[step].parent_span_id == call.span_id  # type: ignore[attr-defined]
    steps = [by_name[step] for step in PIPELINE_STEPS]
    for earlier, later in itertools.pairwise(steps):
        assert earlier.end_time_unix_nano <= later.start_time_unix_nano  # type: ignore[attr-defined]
    print(f"\nspans in the client's trace: {sorted(by_name)}")


def test_json_logs_carry_the_calls_request_id(
    base_config: ServerConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", "json")
    try:
        config = replace(base_config, model_repository=tmp_path / "models", preload_default_model=False)
        running = start_server(config)
        try:
            with grpc.insecure_channel(running.address) as channel:
                stub = inference_pb2_grpc.InferenceServiceStub(channel)
                # The first call loads the model: its log lines are written in a worker, inside the call.
                stub.Infer(infer_request(), metadata=(("x-request-id", "req-42"),), timeout=60)
        finally:
            running.server.stop(grace_s=0.5)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert entries, "no JSON log line"
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    loading = [e for e in entries if e["message"].startswith("loading model")]
    assert loading and loading[0].get("request_id") == "req-42", loading
