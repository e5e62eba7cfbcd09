"""The server's Prometheus metrics: one registry, served on its own port (`--metrics-port`, 0: off).

Names follow Prometheus conventions (`visionrpc_` prefix, base units, `_total` counters); labels are few and
bounded (method, status code, model key, engine kind, origin, outcome): never a request, stream or client id.
Work on the request path is one counter increment or histogram observation per event (a few microseconds);
what already exists as state — queue depths, open pipelines and subscribers, model states — is read when
Prometheus scrapes (`StateCollector`), not updated per call.

Families:
    visionrpc_rpc_calls_total{method, code}                   every call, by its final status code
    visionrpc_rpc_duration_seconds{method}                    unary calls, server-side
    visionrpc_infer_duration_seconds{model, engine}           Infer, from decoding to the response built
    visionrpc_batch_size{model}                               images per engine call
    visionrpc_batch_duration_seconds{model, engine}           one engine call
    visionrpc_queue_wait_seconds{model, origin}               an image's wait for its batch
    visionrpc_queue_depth{model, origin}                      images waiting now (scrape time)
    visionrpc_images_dropped_total{model, reason}             deadline, cancelled, rejected (queue full)
    visionrpc_stream_pipelines / visionrpc_stream_subscribers open now (scrape time)
    visionrpc_stream_frames_total{outcome}                    decoded, skipped, inferred
    visionrpc_stream_results_dropped_total                    results a lossy subscriber was too slow for
    visionrpc_source_reconnects_total                         a source reopened after a failure
    visionrpc_model_load_duration_seconds{model}              load + warm-up
    visionrpc_engine_build_duration_seconds{model}            background TensorRT builds
    visionrpc_model_state{model, state}                       1 for the model's current state (scrape time)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "BATCH_DURATION",
    "BATCH_SIZE",
    "ENGINE_BUILD_DURATION",
    "IMAGES_DROPPED",
    "INFER_DURATION",
    "MODEL_LOAD_DURATION",
    "QUEUE_WAIT",
    "REGISTRY",
    "RPC_CALLS",
    "RPC_DURATION",
    "SOURCE_RECONNECTS",
    "STREAM_FRAMES",
    "STREAM_RESULTS_DROPPED",
    "ServerState",
    "StateCollector",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
# Per-call, per-batch and per-frame observations happen only while the endpoint is served (`serve_metrics`):
# with metrics off the hot path pays one attribute read. Rare events (drops, reconnects, loads, builds) are
# always counted.
ON = False
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

# Latency buckets from 1 ms to 30 s: CPU inference is tens of ms, a queued batch or a model load far more.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LOAD_SECONDS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

RPC_CALLS = Counter(
    "visionrpc_rpc_calls",
    "gRPC calls by method and final status code.",
    ["method", "code"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "visionrpc_rpc_duration_seconds",
    "Server-side duration of unary gRPC calls.",
    ["method"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
INFER_DURATION = Histogram(
    "visionrpc_infer_duration_seconds",
    "Infer calls from decoding their images to their response built, by model and engine.",
    ["model", "engine"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "visionrpc_batch_size",
    "Images per engine call.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "visionrpc_batch_duration_seconds",
    "Duration of one engine call (one batch).",
    ["model", "engine"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "visionrpc_queue_wait_seconds",
    "How long an image waited in its model's queue for a batch to start.",
    ["model", "origin"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
IMAGES_DROPPED = Counter(
    "visionrpc_images_dropped",
    "Images not run: their deadline passed, their caller left, or the queue was full.",
    ["model", "reason"],
    registry=REGISTRY,
)
STREAM_FRAMES = Counter(
    "visionrpc_stream_frames",
    "Stream frames by outcome: decoded from a source, skipped (max_fps or newest-frame policy), inferred.",
    ["outcome"],
    registry=REGISTRY,
)
STREAM_RESULTS_DROPPED = Counter(
    "visionrpc_stream_results_dropped",
    "Stream results dropped for lossy subscribers that read too slowly.",
    registry=REGISTRY,
)
SOURCE_RECONNECTS = Counter(
    "visionrpc_source_reconnects", "Video sources reopened after a failure.", registry=REGISTRY
)
MODEL_LOAD_DURATION = Histogram(
    "visionrpc_model_load_duration_seconds",
    "Model loads, warm-up included.",
    ["model"],
    buckets=_LOAD_SECONDS,
    registry=REGISTRY,
)
ENGINE_BUILD_DURATION = Histogram(
    "visionrpc_engine_build_duration_seconds",
    "Background engine builds (TensorRT).",
    ["model"],
    buckets=_LOAD_SECONDS,
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class ServerState:
    """What the state collector reads at scrape time; each a callable so nothing is copied per call."""

    queue_depths: Callable[[], Iterable[tuple[str, str, int]]]  # (model, origin, images waiting)
    pipelines: Callable[[], int]
    subscribers: Callable[[], int]
    model_states: Callable[[], Iterable[tuple[str, str]]]  # (model, state)
    # Declared pipelines (--pipelines): (pipeline, state, restarts, frames processed by its running stream)
    declared_pipelines: Callable[[], Iterable[tuple[str, str, int, int]]] = lambda: ()
    # Their sinks: (pipeline, sink, kind, delivered, failed, dropped, queued); counts restart with each run
    sinks: Callable[[], Iterable[tuple[str, str, str, int, int, int, int]]] = lambda: ()


class StateCollector(Collector):
    """Gauges read from the server's state when Prometheus scrapes."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "visionrpc_queue_depth", "Images waiting for a batch now.", labels=["model", "origin"]
        )
        for model, origin, waiting in self._state.queue_depths():
            depth.add_metric([model, origin], waiting)
        yield depth
        yield GaugeMetricFamily(
            "visionrpc_stream_pipelines", "Stream pipelines open.", self._state.pipelines()
        )
        yield GaugeMetricFamily(
            "visionrpc_stream_subscribers", "Stream subscribers attached.", self._state.subscribers()
        )
        states = GaugeMetricFamily(
            "visionrpc_model_state", "1 for each model's current state.", labels=["model", "state"]
        )
        for model, state in self._state.model_states():
            states.add_metric([model, state], 1)
        yield states
        yield from self._declared()

    def _declared(self) -> Iterator[Metric]:
        pipeline_state = GaugeMetricFamily(
            "visionrpc_pipeline_state",
            "1 for each declared pipeline's current state.",
            labels=["pipeline", "state"],
        )
        restarts = CounterMetricFamily(
            "visionrpc_pipeline_restarts",
            "Restarts of a declared pipeline after failures.",
            labels=["pipeline"],
        )
        frames = GaugeMetricFamily(
            "visionrpc_pipeline_frames",
            "Frames inferred by a declared pipeline's running stream.",
            labels=["pipeline"],
        )
        for name, state, restart_count, frame_count in self._state.declared_pipelines():
            pipeline_state.add_metric([name, state], 1)
            restarts.add_metric([name], restart_count)
            frames.add_metric([name], frame_count)
        yield from (pipeline_state, restarts, frames)
        messages = CounterMetricFamily(
            "visionrpc_sink_messages",
            "Sink messages by outcome: delivered, failed (attempts, retries included), dropped (given up).",
            labels=["pipeline", "sink", "kind", "outcome"],
        )
        queued = GaugeMetricFamily(
            "visionrpc_sink_queued",
            "Messages waiting in a sink's queue.",
            labels=["pipeline", "sink", "kind"],
        )
        for pipeline, sink, kind, delivered, failed, dropped, waiting in self._state.sinks():
            for outcome, count in (("delivered", delivered), ("failed", failed), ("dropped", dropped)):
                messages.add_metric([pipeline, sink, kind, outcome], count)
            queued.add_metric([pipeline, sink, kind], waiting)
        yield from (messages, queued)


def serve_metrics(host: str, port: int, state: ServerState) -> tuple[Callable[[], None], int]:
    """Serves /metrics over HTTP on (host, port) in a daemon thread; returns (stop, bound port)."""
    collector = StateCollector(state)
    REGISTRY.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except BaseException:
        REGISTRY.unregister(collector)
        raise

    def stop() -> None:
        global ON
        ON = False
        server.shutdown()
        server.server_close()
        thread.join(5)
        REGISTRY.unregister(collector)

    global ON
    ON = True
    bound = int(server.server_address[1])
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return stop, bound
