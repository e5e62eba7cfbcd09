"""The server's one configuration object, read once at start-up from flags and environment.

Every setting has a flag and an environment variable (`VISIONRPC_` + the flag in upper snake case); a flag
wins over the environment, which wins over the default. Nothing else in the server reads the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .manifest import MAX_INSTANCES

__all__ = ["ServerConfig", "add_server_arguments", "default_cache_dir"]

MIB = 1024 * 1024


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visionrpc"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of one server process. Example: `ServerConfig(port=0, model_repository=tmp_path)`."""

    host: str = "127.0.0.1"
    port: int = 50051
    # Models: the repository holds user models; built-ins are installed into it on first use.
    model_repository: Path = default_cache_dir() / "models"
    cache_dir: Path = default_cache_dir() / "downloads"
    default_model: str = "yolov3-tiny-coco"
    # Load and warm the default model at start-up; the inference health status is SERVING only after that.
    preload_default_model: bool = True
    max_loaded_models: int = 4
    # Engines: "auto" runs TensorRT where it imports and a GPU is visible (serving from ONNX Runtime while the
    # engine builds), else ONNX Runtime; "tensorrt" insists (models fail to load without it); "onnxruntime".
    engine: str = "auto"
    # ONNX Runtime execution providers in order; empty: the best available (cuda,cpu with onnxruntime-gpu).
    providers: tuple[str, ...] = ()
    intra_op_threads: int = 0  # 0: sized to the machine
    # Engine instances per model for models whose manifest does not say (`instances`): each its own ONNX
    # Runtime session, the intra-op threads split between them, so batches overlap (docs/performance.md).
    engine_instances: int = 1
    # TensorRT: built engines are cached on disk ("" = <cache_dir>/engines); builds get this much scratch
    # memory; the optimisation profile spans batch 1..trt_max_batch; fp16 where the GPU has fast FP16.
    engine_cache_dir: str = ""
    trt_workspace_bytes: int = 1024 * MIB
    trt_max_batch: int = 8
    trt_precision: str = "fp16"
    trt_calibration_cache: str = ""  # INT8 calibration cache (trt_precision int8, TensorRT 10 only)
    dla_core: int = -1  # Jetson: the DLA core to build for (-1: the GPU); layers DLA cannot run use the GPU
    # Dynamic batching, per loaded model (a model's manifest may override the first two). Unary requests
    # and stream frames share one scheduler: a batch runs when max_batch_size images are queued, or when the
    # engine is free and no more work is on its way, waiting at most max_queue_delay_ms for it. 0 / negative:
    # the device default, max batch 8 and 2 ms on CPU, 16 and 1 ms on GPU. batch_queue_size: images waiting
    # per model and origin (unary, stream) before RESOURCE_EXHAUSTED.
    max_batch_size: int = 0
    max_queue_delay_ms: float = -1.0
    batch_queue_size: int = 128
    # Requests.
    max_message_bytes: int = 16 * MIB
    max_images_per_request: int = 64
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    # Decoded pixels (3 bytes each) one Infer call may hold, and all calls together; both are checked from
    # the images' headers before any decoding (budget.py). A call over the first is INVALID_ARGUMENT, one
    # that would pass the second RESOURCE_EXHAUSTED with RetryInfo.
    max_request_pixels: int = 80_000_000
    max_inflight_pixels: int = 320_000_000
    max_concurrent_rpcs: int = 256
    # Threads for requests' CPU work (image decoding, preprocessing, NMS); 0: the cores + 2. RPCs themselves
    # hold no thread (asyncio), so this bounds CPU work, not how many calls or streams may be open.
    worker_threads: int = 0
    # Streams. File sources must lie below media_root; URL sources need their scheme and host allowed
    # ("*" allows any host; the default allows none, so a server never fetches URLs unless told to).
    media_root: Path = Path("media")
    allowed_url_schemes: tuple[str, ...] = ("rtsp", "rtsps", "http", "https")
    allowed_url_hosts: tuple[str, ...] = ()
    # Wildcard entries ("*", "*.example.com") never reach private, loopback or link-local addresses unless
    # this is set; hosts listed exactly are trusted as named. Entries may carry a port (host:8554).
    allow_private_urls: bool = False
    enable_devices: bool = False
    max_pipelines: int = 16
    max_subscribers: int = 64
    subscriber_queue: int = 32  # results buffered per lossy subscriber before its oldest are dropped
    # Newest messages each pipeline keeps so a subscriber whose call broke resumes without loss.
    stream_replay_messages: int = 64
    pipeline_linger_s: float = 2.0  # a pipeline outlives its last subscriber this long, for quick rejoins
    reconnect_initial_backoff_s: float = 0.5
    reconnect_max_backoff_s: float = 10.0
    source_open_timeout_s: float = 5.0
    source_read_timeout_s: float = 5.0
    # Declared pipelines (server/declared/config.py, docs/pipelines.md): a YAML file of named pipelines that
    # start with the server and feed sinks; "" for none. A bad file stops the server at start-up.
    pipelines_file: str = ""
    # Connections: pings keep idle connections through NATs and proxies alive; a bounded connection age
    # makes clients reconnect now and then so L7 load balancers in a mesh can rebalance them. A stream still
    # open when the grace runs out is cut, and the SDKs resume it on a new connection without loss.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    # Shutdown: on SIGTERM health turns NOT_SERVING; new calls are still accepted for shutdown_notice_s so
    # load balancers probing health steer traffic away first; then in-flight calls get shutdown_grace_s.
    shutdown_notice_s: float = 0.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"  # "json": one JSON object per line, with request and trace ids
    # TLS: with a certificate and key the port serves TLS only; a client CA makes it mutual TLS (clients
    # must present a certificate it signed). The files are re-read when they change (rotation).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # API keys (access.py): files of keys, one per line, re-read when they change. With any key file set,
    # LoadModel/UnloadModel need an admin key. Health and reflection are exempt.
    api_keys_file: str = ""
    admin_keys_file: str = ""
    auth_exempt_services: tuple[str, ...] = (
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    )
    # Prometheus metrics over HTTP on this port (0: off), at /metrics, on the same host as the gRPC port.
    metrics_port: int = 0
    # OpenTelemetry: OTLP/gRPC collector ("http://otel-collector:4317"); empty: tracing off.
    tracing_endpoint: str = ""
    tracing_sample_ratio: float = 1.0
    # Shared-memory inputs for clients on this host (server/shared_memory.py, docs/shared-memory.md): off
    # unless enabled; region names must start with the prefix; limits on one region's size and their count.
    shared_memory: bool = False
    shared_memory_prefix: str = "/visionrpc-"
    shared_memory_max_region_bytes: int = 1024 * MIB
    shared_memory_max_regions: int = 64
    # A region whose client went away (its connection cut, e.g. by max_connection_age) stays registered this
    # long, so the SDK registering it again on a new connection leaves requests no gap to fail in.
    shared_memory_linger_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"expected a port in [0, 65535], got {self.port}")
        if self.max_message_bytes < 1024 or self.max_message_bytes > 1024 * MIB:
            raise ValueError(f"expected max_message_bytes in [1 KiB, 1 GiB], got {self.max_message_bytes}")
        for name in (
            "max_loaded_models", "max_images_per_request", "max_image_pixels", "max_request_pixels",
            "max_inflight_pixels", "max_pipelines",
            "max_subscribers", "subscriber_queue", "stream_replay_messages", "batch_queue_size",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.max_inflight_pixels < self.max_request_pixels:
            raise ValueError(
                f"expected max_inflight_pixels >= max_request_pixels, got {self.max_inflight_pixels} < "
                f"{self.max_request_pixels}"
            )
        if self.log_format not in ("text", "json"):
            raise ValueError(f"expected log_format text or json, got {self.log_format!r}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"expected metrics_port in [0, 65535] (0: off), got {self.metrics_port}")
        if not 0.0 <= self.tracing_sample_ratio <= 1.0:
            raise ValueError(f"expected tracing_sample_ratio in [0, 1], got {self.tracing_sample_ratio}")
        if self.worker_threads < 0:
            raise ValueError(f"expected worker_threads >= 0 (0: the cores + 2), got {self.worker_threads}")
        if self.max_batch_size < 0:
            raise ValueError(
                f"expected max_batch_size >= 0 (0: the device default), got {self.max_batch_size}"
            )
        if self.max_queue_delay_ms > 1000.0:
            raise ValueError(
                f"expected max_queue_delay_ms <= 1000 (negative: the device default), got "
                f"{self.max_queue_delay_ms}"
            )
        if not 1 <= self.engine_instances <= MAX_INSTANCES:
            raise ValueError(
                f"expected engine_instances in [1, {MAX_INSTANCES}], got {self.engine_instances}"
            )
        if self.engine not in ("onnxruntime", "auto", "tensorrt"):
            raise ValueError(f"expected engine onnxruntime, tensorrt or auto, got {self.engine!r}")
        if self.trt_precision not in ("fp16", "fp32", "int8"):
            raise ValueError(f"expected trt_precision fp16, fp32 or int8, got {self.trt_precision!r}")
        if self.trt_workspace_bytes < MIB:
            raise ValueError(f"expected trt_workspace_bytes >= 1 MiB, got {self.trt_workspace_bytes}")
        if self.trt_max_batch < 1:
            raise ValueError(f"expected trt_max_batch >= 1, got {self.trt_max_batch}")
        if self.dla_core < -1:
            raise ValueError(f"expected dla_core -1 (GPU) or a DLA core index >= 0, got {self.dla_core}")
        if self.dla_core >= 0 and self.trt_precision == "fp32":
            raise ValueError(
                "DLA runs fp16 or int8 only; expected trt_precision fp16 or int8 with dla_core >= 0"
            )
        if self.trt_calibration_cache and self.trt_precision != "int8":
            raise ValueError("trt_calibration_cache only applies with trt_precision int8")
        prefix = self.shared_memory_prefix
        if len(prefix) < 2 or not prefix.startswith("/") or "/" in prefix[1:]:
            raise ValueError(f'expected shared_memory_prefix like "/visionrpc-", got {prefix!r}')
        if self.shared_memory_max_region_bytes < 1 or self.shared_memory_max_regions < 1:
            raise ValueError("expected shared_memory_max_region_bytes and shared_memory_max_regions >= 1")
        if self.shared_memory_linger_s < 0:
            raise ValueError(f"expected shared_memory_linger_s >= 0, got {self.shared_memory_linger_s}")

    @property
    def cpu_workers(self) -> int:
        """Threads for requests' CPU work: `worker_threads`, or two more than the cores this process may use
        (a worker may be running an idle engine's batch inline; the others keep decoding and NMS flowing)."""
        return self.worker_threads or len(os.sched_getaffinity(0)) + 2

    @property
    def builtin_repository(self) -> Path:
        """Where built-in models are installed: a model repository of their own inside the cache."""
        return self.cache_dir / "builtin-models"

    @property
    def engine_cache(self) -> Path:
        """Where built TensorRT engines and the timing cache are kept."""
        return Path(self.engine_cache_dir) if self.engine_cache_dir else self.cache_dir / "engines"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_namespace(
        cls, namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Builds the config from parsed flags (None where not given) over environment over defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            flag_value = getattr(namespace, f.name, None)
            env_value = env.get("VISIONRPC_" + f.name.upper())
            if flag_value is not None:
                values[f.name] = flag_value
            elif env_value is not None:
                values[f.name] = _parse(f.name, env_value, getattr(cls(), f.name))
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, text: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(f"expected a boolean, got {text!r}")
            return text.lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, Path):
            return Path(text)
        if isinstance(default, tuple):
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError as exc:
        raise ValueError(f"VISIONRPC_{name.upper()}: {exc}") from None


# Flags whose name is not the field's: `serve --pipelines FILE` reads better than --pipelines-file.
_FLAG_NAMES = {"pipelines_file": "--pipelines"}


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per ServerConfig field; unset flags stay None so the environment can fill them."""
    defaults = ServerConfig()
    for f in fields(ServerConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name in _FLAG_NAMES:
            flag = _FLAG_NAMES[f.name]
        env = "VISIONRPC_" + f.name.upper()
        help_text = f"(env {env}; default {_show(default)})"
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif isinstance(default, tuple):
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                help=help_text,
                type=lambda s: tuple(p.strip() for p in s.split(",") if p.strip()),
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=type(default), help=help_text)


def _show(value: object) -> str:
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return text or "empty"
