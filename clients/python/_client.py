"""The synchronous client: one gRPC channel, typed methods, errors mapped to the `VisionRpcError` family.

Example:
    from visionrpc.client import Client

    with Client("127.0.0.1:50051") as client:
        result = client.infer("coffee.png", confidence=0.4)
        for det in result.predictions[0].detections:
            print(det.class_name, round(det.confidence, 2), det.box.as_tuple())
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, TypeAlias, TypeVar

import grpc
from grpc_health.v1 import health_pb2 as _health_pb2
from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc
from visionrpc.v1 import (
    analytics_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    pipelines_pb2_grpc,
    shared_memory_pb2,
    shared_memory_pb2_grpc,
)

from ._analytics import Analytics, analytics_to_proto
from ._channel import DEFAULT_SERVICE_CONFIG, open_channel
from ._convert import (
    ImageInput,
    build_infer_request,
    image_list,
    image_to_proto,
    infer_result_from_proto,
    model_info_from_proto,
    options_to_proto,
)
from ._exceptions import map_rpc_errors
from ._infer_stream import InferStream, InputFrame, build_infer_stream_config
from ._pipeline_key import pipeline_metadata
from ._pipelines import Pipelines
from ._resume import ResumePolicy
from ._shared_memory import DEFAULT_SHARED_MEMORY_PREFIX, SharedMemoryRegion
from ._stream import PredictionStream, build_stream_request
from ._types import InferResult, ModelInfo

__all__ = ["DEFAULT_ADDRESS", "USE_CLIENT_DEFAULT", "Client", "UseClientDefault"]

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"
MIB: Final = 1024 * 1024

_Response = TypeVar("_Response")


class UseClientDefault:
    """Type of `USE_CLIENT_DEFAULT`: "take the client's setting", distinct from None ("no deadline")."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = UseClientDefault()

Timeout: TypeAlias = float | UseClientDefault | None


class Client:
    """A connection to one visionrpc server (or a load balancer in front of several).

    The channel connects lazily on the first call and reconnects on its own; one client is safe to share
    between threads. Use it as a context manager, or call `close()`.

    Args:
        address: "host:port" or any gRPC target ("dns:///svc:50051", "unix:///run/visionrpc.sock").
        timeout_s: deadline of each call in seconds unless the call gives its own; None waits forever.
        credentials: TLS (or other) channel credentials, e.g. `tls_credentials(ca_file="ca.pem")` (add
            cert_file and key_file for mutual TLS); None means a plaintext channel, as on loopback or inside
            a service mesh that does mTLS for us.
        api_key: sent with every call as `authorization: Bearer <key>` (call credentials over TLS); the
            server's --api-keys-file (or, for load/unload, --admin-keys-file) must hold it.
        max_message_bytes: limit on request and response size, set explicitly both ways
            (`grpc.max_send_message_length`, `grpc.max_receive_message_length`) instead of gRPC's 4 MiB
            receive default; keep it equal to the server's `--max-message-bytes` (16 MiB by default).
        keepalive_time_s: interval of HTTP/2 keepalive pings during calls (`grpc.keepalive_time_ms`, gRPC's
            default is 2 hours) so a dead connection through a NAT or proxy is noticed within
            keepalive_time_s + 10 s (`grpc.keepalive_timeout_ms` = 10000). Pings are only sent while a call
            is in flight (`grpc.keepalive_permit_without_calls` = 0): the visionrpc server accepts pings every
            10 s even when idle, but proxies and servers with gRPC's default policy answer pings on idle
            connections with GOAWAY "too_many_pings". None leaves keepalive off.
        options: extra channel options as (key, value) pairs; they override the ones above by key. The
            default `grpc.service_config` balances round-robin over every address of the target and
            retries UNAVAILABLE with backoff (`visionrpc.client.DEFAULT_SERVICE_CONFIG`).

    Raises (from every RPC method): a `VisionRpcError` subclass, see `visionrpc.client._exceptions`.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout_s: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        api_key: str | None = None,
        max_message_bytes: int = 16 * MIB,
        keepalive_time_s: float | None = 30.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"expected timeout_s > 0 or None, got {timeout_s}")
        if max_message_bytes < 1:
            raise ValueError(f"expected max_message_bytes >= 1, got {max_message_bytes}")
        self.address = address
        self.timeout_s = timeout_s
        merged = dict(channel_options(max_message_bytes, keepalive_time_s))
        merged.update(options)
        channel_args = list(merged.items())
        self._channel = open_channel(address, credentials, api_key, channel_args)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._health = _health_pb2_grpc.HealthStub(self._channel)
        self._shared_memory = shared_memory_pb2_grpc.SharedMemoryServiceStub(self._channel)
        # The server's declared pipelines: client.pipelines.list() / get / start / stop.
        self.pipelines = Pipelines(
            pipelines_pb2_grpc.PipelineServiceStub(self._channel), self._unary, USE_CLIENT_DEFAULT
        )
        self._closed = False
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel, cancelling calls in flight. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._channel.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Client(address={self.address!r}, {state})"

    # -------------------------------------------------------------------------------------- inference

    def infer(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        model: str | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_detections: int | None = None,
        classes: Iterable[str | int] | None = None,
        top_k: int | None = None,
        channel_order: Literal["bgr", "rgb"] = "bgr",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> InferResult:
        """Runs a model on one or more images in one request.

        Args:
            images: one image or an iterable of them. Each is encoded bytes (JPEG, PNG, BMP, WebP), a path
                to such a file (sent encoded; the server decodes), or a uint8 numpy array HxW / HxWx3 / HxWx4
                sent as raw pixels (no encoding cost on either side).
            model: "name" or "name/version"; None uses the server's default model.
            confidence: minimum detection confidence in [0, 1]; None uses the model's default.
            iou: NMS IoU threshold in [0, 1]; None uses the model's default.
            max_detections: at most this many detections per image.
            classes: keep only these classes, given by name ("cup") or id (41), mixed freely.
            top_k: classifiers: how many top classes to return.
            channel_order: channel order of numpy arrays: "bgr" (the default, OpenCV's `cv2.imread` order) or
                "rgb" (PIL / imageio). 4-channel arrays are BGRA / RGBA; 2-D arrays are grayscale.
            timeout_s: this call's deadline; the client's `timeout_s` when not given.

        Returns:
            InferResult with one ImagePrediction per image, in order.

        Raises:
            InvalidArgumentError: an undecodable image or an option out of range (see `field_violations`).
            NotFoundError: unknown model.
            OSError: an image path cannot be read (before any RPC).
            TypeError, ValueError: an image or option of the wrong kind (before any RPC).
        """
        response = self._infer_response(
            images,
            model=model,
            options=options_to_proto(
                confidence=confidence, iou=iou, max_detections=max_detections, classes=classes, top_k=top_k
            ),
            channel_order=channel_order,
            timeout_s=timeout_s,
        )
        return infer_result_from_proto(response)

    def _infer_response(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        model: str | None,
        options: Any,
        channel_order: Literal["bgr", "rgb"],
        timeout_s: Timeout,
    ) -> Any:
        """The raw InferResponse; `infer` wraps it (and keeps it as `InferResult.response`)."""
        request = build_infer_request(
            model or "", [image_to_proto(image, channel_order) for image in image_list(images)], options
        )
        return self._unary(self._inference.Infer, request, timeout_s)

    def stream(
        self,
        sources: Iterable[str | int] = (),
        *,
        model: str | None = None,
        stream_id: str | None = None,
        pipeline: str | None = None,
        max_fps: float | None = None,
        frame_policy: Literal["every_frame", "newest_frame"] | None = None,
        every_frame_delivery: bool = False,
        frame_image: Literal["raw", "annotated"] | None = None,
        jpeg_quality: int | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_detections: int | None = None,
        classes: Iterable[str | int] | None = None,
        timeout_s: float | None = None,
        resume: ResumePolicy | None = None,
        analytics: Analytics | analytics_pb2.StreamAnalytics | None = None,
        face_redaction: Literal["blur", "pixelate"] | None = None,
        content: Literal["frames", "events"] = "frames",
    ) -> PredictionStream:
        """Subscribes to the predictions of a server-side video pipeline.

        Identical requests share one pipeline on the server (decoded and inferred once); `stream_id` joins a
        running one instead (every message carries its stream id); `pipeline` watches a pipeline declared in
        the server's pipelines file by name (`client.pipelines.list()`), and the options are then its own.

        Args:
            sources: file paths below the server's media root ("clips/bikes.mp4"), URLs ("rtsp://...",
                "http://..."), or device indexes (ints); results carry the source's index in this list.
            max_fps: cap on processed frames per second per source.
            frame_policy: "every_frame" or "newest_frame"; None lets the server choose (files: every frame,
                live sources: newest frame).
            every_frame_delivery: receive every result, making the pipeline wait for you (one subscriber,
                file sources only). By default a slow subscriber loses its own oldest results instead.
            frame_image: "raw" or "annotated" to receive each frame as JPEG.
            analytics: tracking, zones and lines (`Analytics`); frames then carry `analytics` (their zones'
                and lines' state and events) and detections a `track_id`.
            face_redaction: "blur" or "pixelate" hides faces in the frame images returned.
            content: "events" receives only `StreamEvents` (frames that caused analytics events) besides
                status events: cheap to watch a busy camera.
            timeout_s: deadline of the whole stream; None (the default) streams until the server ends it.
            resume: how a broken subscription (UNAVAILABLE) resumes; default `ResumePolicy()`: up to 8
                attempts 50 ms..2 s apart; `ResumePolicy(enabled=False)` ends the stream at the first break.

        Returns:
            A PredictionStream: iterate it for StreamFrame and StreamStatus events; use it as a context
            manager or call `cancel()` to unsubscribe.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        request = build_stream_request(
            sources,
            model=model,
            stream_id=stream_id,
            pipeline=pipeline,
            options=options_to_proto(
                confidence=confidence, iou=iou, max_detections=max_detections, classes=classes, top_k=None
            ),
            max_fps=max_fps,
            frame_policy=frame_policy,
            every_frame_delivery=every_frame_delivery,
            frame_image=frame_image,
            jpeg_quality=jpeg_quality,
            analytics=analytics,
            face_redaction=face_redaction,
            content=content,
        )
        metadata = pipeline_metadata(request)  # stream affinity: identical subscriptions, one replica
        return PredictionStream(
            lambda message, timeout: self._inference.StreamPredictions(
                message, timeout=timeout, metadata=metadata
            ),
            request,
            timeout_s=timeout_s,
            resume=resume,
        )

    def infer_stream(
        self,
        frames: Iterable[ImageInput | InputFrame],
        *,
        model: str | None = None,
        confidence: float | None = None,
        iou: float | None = None,
        max_detections: int | None = None,
        classes: Iterable[str | int] | None = None,
        analytics: Analytics | analytics_pb2.StreamAnalytics | None = None,
        max_in_flight: int | None = None,
        drop: bool = False,
        channel_order: Literal["bgr", "rgb"] = "bgr",
        timeout_s: float | None = None,
    ) -> InferStream:
        """Infers frames the caller sends on one call (a camera it owns), one result per frame in order.

        Args:
            frames: images (encoded bytes, paths, uint8 arrays, as for `infer`), numbered 0, 1, 2, ... on
                source 0, or `InputFrame`s with their own numbering, source and timestamp. Read lazily, on
                gRPC's sending thread, as the server accepts them.
            analytics: tracking, zones and lines (`Analytics`, or a `visionrpc.v1.StreamAnalytics`) applied
                per source; results then carry `analytics` and detections a `track_id`.
            max_in_flight: frames the server holds unanswered (None: the server's default, 8; at most 64).
            drop: past `max_in_flight`, the server answers frames `dropped` at once (a live camera stays
                live) instead of reading no further until one is answered (the default: nothing is lost).
            timeout_s: deadline of the whole call; None (the default) runs until the frames end.

        Returns:
            An InferStream: iterate it for `FrameResult`s; use it as a context manager or call `cancel()`.

        Raises (from iteration): NotFoundError (unknown model), InvalidArgumentError (bad options), and the
        first exception the frames iterable or an image's conversion raised, after the frames before it.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        config = build_infer_stream_config(
            model=model,
            options=options_to_proto(
                confidence=confidence, iou=iou, max_detections=max_detections, classes=classes, top_k=None
            ),
            analytics=None if analytics is None else analytics_to_proto(analytics),
            max_in_flight=max_in_flight,
            drop=drop,
        )
        return InferStream(
            lambda requests: self._inference.InferStream(requests, timeout=timeout_s),
            config,
            frames,
            channel_order,
        )

    # ----------------------------------------------------------------------------------------- models

    def list_models(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> list[ModelInfo]:
        """Every model of the server's repository, built-ins included."""
        response = self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout_s)
        return [model_info_from_proto(m) for m in response.models]

    def get_model(self, model_id: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> ModelInfo:
        """One model by "name" (newest version) or "name/version". Raises NotFoundError when unknown."""
        response = self._unary(
            self._models.GetModel, models_pb2.GetModelRequest(model_id=model_id), timeout_s
        )
        return model_info_from_proto(response.model)

    def load_model(self, model_id: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> ModelInfo:
        """Loads and warms a model now rather than on its first request; idempotent.

        A first load of a built-in may download and convert it: give a generous `timeout_s` (or None).
        """
        response = self._unary(
            self._models.LoadModel, models_pb2.LoadModelRequest(model_id=model_id), timeout_s
        )
        return model_info_from_proto(response.model)

    def unload_model(self, model_id: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> ModelInfo:
        """Releases a loaded model (it loads again on demand); idempotent."""
        response = self._unary(
            self._models.UnloadModel, models_pb2.UnloadModelRequest(model_id=model_id), timeout_s
        )
        return model_info_from_proto(response.model)

    # ----------------------------------------------------------------------------------------- health

    def health(self, service: str = "", *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> str:
        """The grpc.health.v1 status of `service`: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN".

        "" is the whole server (liveness); "visionrpc.v1.InferenceService" turns SERVING only once the default
        model is warm (readiness). Raises NotFoundError for a service the server does not know.
        """
        response = self._unary(self._health.Check, _health_pb2.HealthCheckRequest(service=service), timeout_s)
        name: str = _health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name

    # ----------------------------------------------------------------------------------- shared memory

    def create_shared_memory(
        self,
        byte_size: int,
        *,
        prefix: str = DEFAULT_SHARED_MEMORY_PREFIX,
        timeout_s: float | None = 30.0,
    ) -> SharedMemoryRegion:
        """Creates a POSIX shared-memory region of `byte_size` bytes and registers it with the server, which
        must run on this host, as this user, with `--shared-memory` (docs/shared-memory.md).

        `region.write(array)` copies an image in and returns its `SharedMemoryImage`, which `infer` accepts
        like any image; the pixels then never travel through the connection. A background thread keeps the
        region registered (again after a broken connection) until `region.close()`.

        Raises:
            PermissionDeniedError: shared memory is off on the server, or `prefix` is not its prefix.
            InvalidArgumentError: the server cannot use the region (another user, another /dev/shm, too big).
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        return SharedMemoryRegion(self._channel, byte_size, prefix=prefix, timeout_s=timeout_s)

    def list_shared_memory(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> dict[str, int]:
        """The regions the server holds now (of every client), name -> registered bytes."""
        response = self._unary(
            self._shared_memory.ListSharedMemory, shared_memory_pb2.ListSharedMemoryRequest(), timeout_s
        )
        return {region.name: region.byte_size for region in response.regions}

    # ---------------------------------------------------------------------------------------- plumbing

    def _unary(self, method: Callable[..., _Response], request: Any, timeout_s: Timeout) -> _Response:
        """Every RPC goes through here: one deadline rule, one error mapping."""
        if self._closed:
            # grpc's own message for this ("Cannot invoke RPC on closed channel!") is a bare ValueError.
            raise RuntimeError("the client is closed")
        timeout = self.timeout_s if isinstance(timeout_s, UseClientDefault) else timeout_s
        with map_rpc_errors():
            return method(request, timeout=timeout)


def channel_options(max_message_bytes: int, keepalive_time_s: float | None) -> list[tuple[str, Any]]:
    """The channel options a Client sets, documented in `Client`."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.primary_user_agent", "visionrpc-python"),
        ("grpc.service_config", DEFAULT_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
    ]
    if keepalive_time_s is not None:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
    return options
