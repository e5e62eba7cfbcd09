"""Assembling and running the gRPC server: servicers, health, reflection, start-up and graceful shutdown.

`create_server(config)` builds a server bound to its port without starting it (tests bind port 0 and read
the real port back); `serve(config)` is the process entry point that adds signal handling.

Health: "" (liveness) is SERVING as soon as the server starts; "visionrpc.v1.InferenceService" turns SERVING
only once the default model is loaded and warm, so a mesh or Kubernetes readiness probe keeps traffic away
until the first request can be answered at full speed. On SIGTERM every status turns NOT_SERVING first, then
in-flight calls get `shutdown_grace_s` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
import grpc.aio
import onnxruntime as ort
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]  # not in its __all__
from grpc_reflection.v1alpha import reflection
from visionrpc.engines import Engine, OnnxRuntimeEngine
from visionrpc.engines.tensorrt_plan import Precision
from visionrpc.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
    shared_memory_pb2,
    shared_memory_pb2_grpc,
)

from . import metrics
from .access import AccessPolicy
from .config import ServerConfig
from .declared.config import DeclaredPipeline, PipelinesFileError, load_pipelines_file
from .declared.supervisor import Supervisor
from .errors import VisionRpcError
from .logs import configure_logging
from .manifest import ResolvedModel
from .models.builds import EngineBuilder
from .models.engine_selection import EngineSelector, RuntimeProbe, best_ort_providers
from .models.manager import ModelManager
from .models.repository import ModelId, ModelRepository
from .models.tensorrt_builder import TensorRTBuilder, TensorRTSettings
from .scheduler import BatchSettings
from .servicers.inference import InferenceServicer
from .servicers.interceptors import CallInterceptor
from .servicers.models import ModelServicer
from .servicers.pipelines import PipelineServicer
from .servicers.shared_memory import SharedMemoryServicer
from .servicers.transport import TransportGuard, add_services, core_receive_limit
from .shared_memory import SharedMemoryLimits, SharedMemoryRegistry
from .streams.manager import StreamManager
from .streams.source_policy import SourcePolicy
from .tls import TlsFiles, server_credentials
from .tracing import enable_tracing

__all__ = [
    "INFERENCE_SERVICE",
    "MODEL_SERVICE",
    "PIPELINE_SERVICE",
    "VisionRpcServer",
    "create_server",
    "grpc_server",
    "serve",
]

logger = logging.getLogger(__name__)

INFERENCE_SERVICE: str = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
MODEL_SERVICE: str = models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name
PIPELINE_SERVICE: str = pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name
SHARED_MEMORY_SERVICE: str = shared_memory_pb2.DESCRIPTOR.services_by_name["SharedMemoryService"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Threads for blocking calls that are not CPU work (model loads, opening streams): enough that a slow model
# load does not hold up other streams' opening, few enough to bound the server's thread count.
_CONTROL_THREADS = 8
_T = TypeVar("_T")


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments of the server; each one is set on purpose rather than left to gRPC's defaults."""
    return [
        # Explicit limits: big enough for several full-size photos, never "unlimited". grpc core's receive
        # limit sits above ours so that ours answers with details (servicers/transport.py).
        ("grpc.max_receive_message_length", core_receive_limit(config.max_message_bytes)),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client pings as often as every 10 s (clients default to 30 s); more often is abuse.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # Bounded connection age: clients reconnect now and then, so L7 load balancers can rebalance them.
        ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_s * 1000)),
        # Two servers must never silently share a port.
        ("grpc.so_reuseport", 0),
    ]


def onnxruntime_engine_factory(config: ServerConfig) -> OnnxRuntimeEngineFactory:
    """ONNX Runtime with `--providers`, or (left empty) the best providers this onnxruntime build offers."""
    providers = config.providers or best_ort_providers(tuple(ort.get_available_providers()))
    return OnnxRuntimeEngineFactory(providers, config.intra_op_threads or None, config.engine_instances)


def tensorrt_settings(config: ServerConfig) -> TensorRTSettings:
    return TensorRTSettings(
        cache_dir=config.engine_cache,
        workspace_bytes=config.trt_workspace_bytes,
        max_batch=config.trt_max_batch,
        precision=Precision(config.trt_precision),
        dla_core=config.dla_core,
        calibration_cache=Path(config.trt_calibration_cache) if config.trt_calibration_cache else None,
    )


def batch_settings(config: ServerConfig) -> BatchSettings:
    """The server's dynamic batching defaults; each model's manifest may override the first two."""
    return BatchSettings(config.max_batch_size, config.max_queue_delay_ms, config.batch_queue_size)


@dataclass(frozen=True, slots=True)
class OnnxRuntimeEngineFactory:
    """A model's ONNX Runtime engine instances: its manifest's `instances`, else `instances` (the server's
    --engine-instances), sharing the intra-op threads one engine would have."""

    providers: tuple[str, ...]
    intra_op_threads: int | None
    instances: int = 1

    def __call__(self, model: ResolvedModel) -> Sequence[Engine]:
        return OnnxRuntimeEngine.load_instances(
            model.onnx_path,
            model.manifest.instances or self.instances,
            providers=self.providers,
            intra_op_threads=self.intra_op_threads,
        )


class VisionRpcServer:
    """A created server running on an event loop of its own (thread "visionrpc-loop"): start it, wait until
    the default model is warm, stop it gracefully. Its methods are plain blocking calls, safe from any thread
    but the loop's."""

    def __init__(
        self,
        config: ServerConfig,
        runtime: _LoopThread,
        server: grpc.aio.Server,
        health_servicer: health_aio.HealthServicer,
        models: ModelManager,
        streams: StreamManager,
        workers: ThreadPoolExecutor,
        stop_tracing: Callable[[], None] | None = None,
        shared_memory: SharedMemoryRegistry | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.models = models
        self.streams = streams
        self.shared_memory = shared_memory
        self.supervisor = supervisor  # the pipelines file's pipelines
        self._runtime = runtime
        self._server = server
        self._health = health_servicer
        self._workers = workers
        self._ready = threading.Event()
        self._preload_error: str | None = None
        self._stopped = False
        self._stop_tracing = stop_tracing
        self._stop_metrics: Callable[[], None] | None = None
        self.metrics_port: int | None = None  # bound once started, when metrics are on

    def start(self) -> None:
        self._runtime.call(self._start())
        if self.supervisor is not None:  # once listening: their subscribers can join by name at once
            self.supervisor.start_all()
        if self.config.metrics_port:
            self._stop_metrics, self.metrics_port = metrics.serve_metrics(
                self.config.host, self.config.metrics_port, self._state()
            )
        if self.config.preload_default_model:
            threading.Thread(target=self._preload, name="visionrpc-preload", daemon=True).start()
        else:
            self._ready.set()

    async def _start(self) -> None:
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(MODEL_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        inference = NOT_SERVING if self.config.preload_default_model else SERVING
        await self._health.set(INFERENCE_SERVICE, inference)

    def _preload(self) -> None:
        model = self.config.default_model
        try:
            self.models.load(ModelId.parse(model))
        except VisionRpcError as exc:
            # Other models keep serving; the inference service stays NOT_SERVING so probes say why.
            self._preload_error = exc.message
            logger.error("default model %s did not load: %s", model, exc.message)
            self._ready.set()
            return
        self._runtime.call(self._health.set(INFERENCE_SERVICE, SERVING))
        logger.info("default model %s is warm; %s is SERVING", model, INFERENCE_SERVICE)
        self._ready.set()

    def wait_until_ready(self, timeout_s: float | None = None) -> None:
        """Blocks until the default model is warm. Raises RuntimeError when it failed or took too long."""
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the default model was not ready within {timeout_s} s")
        if self._preload_error is not None:
            raise RuntimeError(f"the default model failed to load: {self._preload_error}")

    def stop(self, grace_s: float | None = None) -> None:
        """Turns health NOT_SERVING, stops taking calls, ends streams (their clients resume elsewhere), lets
        other calls finish within the grace, then closes everything. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._runtime.call(self._health.enter_graceful_shutdown())
        if self.config.shutdown_notice_s > 0:
            logger.info(
                "health is NOT_SERVING; accepting calls for %.1f s more", self.config.shutdown_notice_s
            )
            time.sleep(self.config.shutdown_notice_s)
        logger.info("shutting down: draining in-flight calls for up to %.1f s", grace)
        self._runtime.call(self._drain(grace))
        if self.supervisor is not None:  # their streams ended in the drain: this waits for the sinks to flush
            self.supervisor.close()
        self.models.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._runtime.close()
        if self._stop_metrics is not None:
            self._stop_metrics()
        if self._stop_tracing is not None:
            self._stop_tracing()  # flushes the spans still buffered
        logger.info("stopped")

    def _state(self) -> metrics.ServerState:
        """What Prometheus reads at scrape time."""

        def queue_depths() -> list[tuple[str, str, int]]:
            rows = []
            for key, stats in self.models.scheduler_stats().items():
                rows += [(key, "unary", stats.queued_unary), (key, "stream", stats.queued_stream)]
            return rows

        def model_states() -> list[tuple[str, str]]:
            return [
                (f"{status.name}/{status.version}" if status.version else status.name, status.state.value)
                for status in self.models.list_models()
            ]

        def declared_pipelines() -> list[tuple[str, str, int, int]]:
            statuses = self.supervisor.list() if self.supervisor is not None else []
            return [(p.name, p.state.value, p.restarts, p.frames_processed) for p in statuses]

        def sinks() -> list[tuple[str, str, str, int, int, int, int]]:
            statuses = self.supervisor.list() if self.supervisor is not None else []
            return [
                (p.name, s.name, s.kind, s.delivered, s.failed, s.dropped, s.queued)
                for p in statuses
                for s in p.sinks
            ]

        return metrics.ServerState(
            queue_depths=queue_depths,
            pipelines=lambda: len(self.streams.pipelines()),
            subscribers=lambda: self.streams.subscriber_count,
            model_states=model_states,
            declared_pipelines=declared_pipelines,
            sinks=sinks,
        )

    async def _drain(self, grace: float) -> None:
        stopping = asyncio.ensure_future(self._server.stop(grace))
        await asyncio.sleep(0)  # the stop begins: GOAWAY to clients, listeners closed, no new calls
        if self.shared_memory is not None:  # its holding calls end OK instead of waiting out the grace
            self.shared_memory.close()
        # Streams never finish by themselves (live sources): end them so their calls complete (UNAVAILABLE,
        # SHUTTING_DOWN: the clients resume on another server) instead of being cut at the grace.
        await asyncio.get_running_loop().run_in_executor(None, self.streams.close)
        await stopping

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return bool(self._runtime.call(self._server.wait_for_termination(timeout_s)))


class _LoopThread:
    """An asyncio event loop running in a daemon thread, for code that lives outside it (tests, `serve`)."""

    def __init__(self, control_threads: int) -> None:
        self.loop = asyncio.new_event_loop()
        # Blocking calls that are not CPU work (model loads, opening streams, model control) run here.
        self.loop.set_default_executor(started_pool(control_threads, "visionrpc-control"))
        self._thread = threading.Thread(target=self.loop.run_forever, name="visionrpc-loop", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Runs `coroutine` on the loop and waits for its result (never call from the loop itself)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.call(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def started_pool(size: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads all run from the start: the server's thread count is fixed from start-up
    instead of creeping up with load (a ThreadPoolExecutor otherwise adds a thread only when none is idle)."""
    pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
    everyone = threading.Barrier(size)
    for _ in range(size):  # each task holds its thread until all have one, so each submit starts a thread
        pool.submit(everyone.wait, 10.0)
    return pool


def build_model_manager(
    config: ServerConfig,
    *,
    builder: EngineBuilder | None = None,
    probe: RuntimeProbe | Callable[[], RuntimeProbe] | None = None,
) -> ModelManager:
    """The model manager of `config`: ONNX Runtime engines, plus TensorRT builds for models that select it.

    Args:
        builder: the background engine builder; default: TensorRT with the config's settings.
        probe: what this machine can run, or how to find out (called once, on the first model that needs
            it); default: `RuntimeProbe.detect`.
    """
    repository = ModelRepository(
        user_root=config.model_repository,
        builtin_root=config.builtin_repository,
        download_dir=config.cache_dir,
    )
    factory = onnxruntime_engine_factory(config)
    # Always present, whatever --engine says: a manifest may ask for TensorRT. Neither imports TensorRT until
    # a model actually selects it.
    selector = EngineSelector(
        config.engine,
        ort_providers=factory.providers,
        probe=probe if probe is not None else RuntimeProbe.detect,
    )
    return ModelManager(
        repository,
        factory,
        max_loaded=config.max_loaded_models,
        builder=builder if builder is not None else TensorRTBuilder(tensorrt_settings(config)),
        selector=selector,
        batching=batch_settings(config),
    )


def grpc_server(
    config: ServerConfig, interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()
) -> grpc.aio.Server:
    """The bare grpc.aio server, no services yet: its channel arguments and RPC limit. Call it on the loop
    that will run it.

    `max_concurrent_rpcs` is enforced by the transport guard, with details and RetryInfo; grpc's own limit,
    which answers without either, is only a backstop above it (for reflection, which is not guarded)."""
    backstop = 2 * config.max_concurrent_rpcs + 16
    return grpc.aio.server(
        options=grpc_options(config), maximum_concurrent_rpcs=backstop, interceptors=list(interceptors)
    )


def declared_pipelines(config: ServerConfig) -> tuple[DeclaredPipeline, ...]:
    """The pipelines of `config.pipelines_file` (none without one). Raises PipelinesFileError."""
    if not config.pipelines_file:
        return ()
    policy = SourcePolicy.from_config(config)
    return load_pipelines_file(Path(config.pipelines_file), policy, config.default_model)


def create_server(config: ServerConfig, *, models: ModelManager | None = None) -> tuple[VisionRpcServer, int]:
    """Builds the server and binds its port (port 0 picks a free one); returns it unstarted with the port.

    Args:
        models: a model manager to serve instead of `build_model_manager(config)`'s (tests use one with a
            stand-in engine builder); the server closes it when it stops.
    """
    # Configuration mistakes (TLS files, key files, the pipelines file) stop the server here, before anything
    # starts.
    tls = TlsFiles.from_settings(config.tls_cert_file, config.tls_key_file, config.tls_client_ca_file)
    credentials = server_credentials(tls) if tls is not None else None
    access = AccessPolicy.from_files(
        config.api_keys_file, config.admin_keys_file, config.auth_exempt_services
    )
    declared = declared_pipelines(config)
    models = models if models is not None else build_model_manager(config)
    streams = StreamManager(models, config)
    supervisor = Supervisor(declared, streams)
    shared_memory = SharedMemoryRegistry(
        SharedMemoryLimits(
            enabled=config.shared_memory,
            prefix=config.shared_memory_prefix,
            max_region_bytes=config.shared_memory_max_region_bytes,
            max_regions=config.shared_memory_max_regions,
            linger_s=config.shared_memory_linger_s,
        )
    )
    workers = started_pool(config.cpu_workers, "visionrpc-worker")
    runtime = _LoopThread(_CONTROL_THREADS)

    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = []
    stop_tracing = None
    if config.tracing_endpoint:
        tracing_interceptor, stop_tracing = enable_tracing(
            config.tracing_endpoint, config.tracing_sample_ratio
        )
        interceptors.append(tracing_interceptor)  # first: the call's span encloses everything else
    interceptors.append(CallInterceptor(access))

    async def assemble() -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
        server = grpc_server(config, interceptors)
        health_servicer = health_aio.HealthServicer()
        guard = TransportGuard(
            max_message_bytes=config.max_message_bytes, max_concurrent_rpcs=config.max_concurrent_rpcs
        )
        add_services(
            server,
            guard,
            (
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                InferenceServicer(models, streams, config, workers, shared_memory, pipelines=supervisor),
            ),
            (models_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(models)),
            (pipelines_pb2_grpc.add_PipelineServiceServicer_to_server, PipelineServicer(supervisor)),
            (
                shared_memory_pb2_grpc.add_SharedMemoryServiceServicer_to_server,
                SharedMemoryServicer(shared_memory),
            ),
            (health_pb2_grpc.add_HealthServicer_to_server, health_servicer),
        )
        reflection.enable_server_reflection(
            (
                INFERENCE_SERVICE,
                MODEL_SERVICE,
                PIPELINE_SERVICE,
                SHARED_MEMORY_SERVICE,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        if credentials is not None:
            return server, health_servicer, server.add_secure_port(config.address, credentials)
        return server, health_servicer, server.add_insecure_port(config.address)

    try:
        server, health_servicer, port = runtime.call(assemble())
        if port == 0:
            raise OSError(f"could not bind {config.address}")
    except BaseException:
        runtime.close()
        workers.shutdown(wait=False)
        if stop_tracing is not None:
            stop_tracing()
        raise
    server_ = VisionRpcServer(
        config, runtime, server, health_servicer, models, streams, workers, stop_tracing, shared_memory,
        supervisor,
    )  # fmt: skip
    return server_, port


def serve(config: ServerConfig) -> int:
    """Runs the server until SIGTERM or SIGINT, then shuts down gracefully. Returns the exit code."""
    configure_logging(config.log_level, config.log_format)
    try:
        server, port = create_server(config)
    except PipelinesFileError as exc:  # the operator's mistake: say where, without a traceback
        logger.error("%s", exc)
        return 2
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    logger.info("visionrpc listening on %s:%d (pid %d)", config.host, port, os.getpid())
    while not stop_requested.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
    server.stop()
    return 0
