"""The error contract at the transport level and bounded errors (issue 11, findings 5 and 6), on real servers.

Before: malformed protobuf got UNKNOWN/INTERNAL "Exception deserializing request!" and a logged traceback per
call; over --max-concurrent-rpcs and oversize messages got RESOURCE_EXHAUSTED without details; a 10,000-name
class filter was echoed three times into a trailer past gRPC's 8 KiB metadata limit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer, start_server, wait_for
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import FieldViolation, InvalidArgumentError, ResourceExhaustedError
from visionrpc.server.servicers.status import to_status
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# The trailer of any error stays well under gRPC's default 8 KiB limit on received metadata.
MAX_TRAILER_BYTES = 6 * 1024


@dataclass(frozen=True)
class Rejection:
    code: grpc.StatusCode
    reason: str | None  # None: no rich details (grpc core answered)
    retry: bool  # RetryInfo expected
    trailer_bytes: int


def rejection(error: grpc.RpcError) -> Rejection:
    trailer = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    size = sum(len(k) + len(v) for k, v in trailer) + len((error.details() or "").encode())  # type: ignore[attr-defined]
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, retry = None, False
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        retry = retry or detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    return Rejection(error.code(), reason, retry, size)  # type: ignore[attr-defined]


def call_raw(address: str, method: str, payload: bytes, *, stream: bool = False) -> Rejection:
    with grpc.insecure_channel(address) as channel:
        try:
            if stream:
                for _ in channel.unary_stream(method)(payload, timeout=30):
                    pass
            else:
                channel.unary_unary(method)(payload, timeout=30)
        except grpc.RpcError as error:
            return rejection(error)
    raise AssertionError(f"{method} accepted {payload[:20]!r}")


# -- malformed protobuf --------------------------------------------------------------------------------------

INFER = "/visionrpc.v1.InferenceService/Infer"
STREAM = "/visionrpc.v1.InferenceService/StreamPredictions"
LIST_MODELS = "/visionrpc.v1.ModelService/ListModels"
HEALTH = "/grpc.health.v1.Health/Check"

MALFORMED: dict[str, tuple[str, bytes, bool]] = {
    "corrupt-wire": (INFER, b"\xff\xff\xff", False),
    "bad-utf8-in-model-id": (INFER, b"\x0a\x02\xff\xfe", False),
    "truncated-length": (INFER, b"\x12\x80\x80\x80\x80\x01", False),
    "stream-bad-utf8": (STREAM, b"\x0a\x02\xc3\x28", True),
    "models-corrupt-wire": (LIST_MODELS, b"\x0f", False),
    "health-bad-utf8": (HEALTH, b"\x0a\x01\xff", False),
}


@pytest.mark.parametrize(("method", "payload", "stream"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_protobuf_is_invalid_argument_with_a_reason(
    server: RunningServer, method: str, payload: bytes, stream: bool
) -> None:
    found = call_raw(server.address, method, payload, stream=stream)
    assert (found.code, found.reason, found.retry) == (INVALID, "MALFORMED_REQUEST", False)
    assert found.trailer_bytes < MAX_TRAILER_BYTES


def test_a_flood_of_malformed_requests_logs_no_traceback_and_one_warning(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for index in range(200):
        call_raw(server.address, INFER, b"\x0a\x02\xff" + bytes([index % 256]))
    tracebacks = [r for r in caplog.records if r.exc_info]
    warnings = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert tracebacks == []
    assert len(warnings) <= 1  # once per interval (60 s), however many


# -- limits ------------------------------------------------------------------------------------------------


def test_a_message_over_the_limit_is_resource_exhausted_with_the_reason_and_no_retry(
    server: RunningServer,
) -> None:
    limit = server.config.max_message_bytes
    request = inference_pb2.InferRequest(images=[types_pb2.Image(encoded=b"\xff" * (limit + 1024))])
    found = call_raw(server.address, INFER, request.SerializeToString())
    assert (found.code, found.reason, found.retry) == (EXHAUSTED, "MESSAGE_TOO_LARGE", False)
    # Past grpc core's own limit (twice ours) core refuses the message before any Python runs: no details.
    request = inference_pb2.InferRequest(images=[types_pb2.Image(encoded=b"\xff" * (2 * limit + 1024))])
    assert call_raw(server.address, INFER, request.SerializeToString()).reason is None


@pytest.fixture
def two_call_server(base_config: ServerConfig) -> Iterator[RunningServer]:
    running = start_server(replace(base_config, max_concurrent_rpcs=2, preload_default_model=False))
    yield running
    running.server.stop(grace_s=0.5)


def test_calls_over_max_concurrent_rpcs_get_retry_info_and_health_still_answers(
    two_call_server: RunningServer,
) -> None:
    request = inference_pb2.StreamPredictionsRequest(
        sources=[inference_pb2.VideoSource(path="bikes.mp4")],
        stream_options=inference_pb2.StreamOptions(max_fps=2.0),
    )
    with grpc.insecure_channel(two_call_server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        streams = [stub.StreamPredictions(request, timeout=120) for _ in range(2)]
        try:
            for stream in streams:
                next(stream)  # both calls are running
            with pytest.raises(grpc.RpcError) as caught:
                stub.Infer(inference_pb2.InferRequest(), timeout=30)
            found = rejection(caught.value)
            assert (found.code, found.reason, found.retry) == (EXHAUSTED, "TOO_MANY_CALLS", True)
            with grpc.insecure_channel(two_call_server.address) as probe_channel:
                health = health_pb2_grpc.HealthStub(probe_channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for stream in streams:
                stream.cancel()
        # The slots come back once the streams are gone.
        assert wait_for(lambda: infer_reason(stub) == "INVALID_IMAGE_COUNT", 20)


def infer_reason(stub: inference_pb2_grpc.InferenceServiceStub) -> str | None:
    try:
        stub.Infer(inference_pb2.InferRequest(), timeout=10)
    except grpc.RpcError as error:
        return rejection(error).reason
    return "OK"


# -- bounded errors ----------------------------------------------------------------------------------------

LONG = "x" * 5_000


def tiny_png() -> types_pb2.Image:
    ok, data = cv2.imencode(".png", np.full((8, 8, 3), 127, np.uint8))
    assert ok
    return types_pb2.Image(encoded=data.tobytes())


BOUNDED: dict[str, tuple[inference_pb2.InferRequest, str]] = {
    "10000-class-names": (
        inference_pb2.InferRequest(
            images=[tiny_png()],
            options=types_pb2.InferOptions(class_names=[f"class-{i}" for i in range(10_000)]),
        ),
        "INVALID_OPTION",
    ),
    "900-long-unknown-class-names": (
        inference_pb2.InferRequest(
            images=[tiny_png()],
            options=types_pb2.InferOptions(class_names=[f"{i}-{'y' * 200}" for i in range(900)]),
        ),
        "UNKNOWN_CLASS",
    ),
    "long-model-id": (inference_pb2.InferRequest(images=[tiny_png()], model_id=LONG), "INVALID_MODEL_ID"),
    "long-unknown-model": (
        inference_pb2.InferRequest(images=[tiny_png()], model_id="m" * 60),
        "MODEL_NOT_FOUND",
    ),
}


@pytest.mark.parametrize(("request_", "reason"), BOUNDED.values(), ids=BOUNDED.keys())
def test_errors_that_quote_the_request_are_bounded(
    server: RunningServer, request_: inference_pb2.InferRequest, reason: str
) -> None:
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        inference_pb2_grpc.InferenceServiceStub(channel).Infer(request_, timeout=60)
    found = rejection(caught.value)
    assert found.reason == reason, caught.value.details()  # type: ignore[attr-defined]
    assert found.code != EXHAUSTED
    assert found.trailer_bytes < MAX_TRAILER_BYTES


def test_the_worst_error_fits_the_metadata_limit() -> None:
    huge = "\u4e2d" * 100_000  # 3 bytes of UTF-8, 9 characters once percent-encoded in grpc-message
    error = InvalidArgumentError(
        huge,
        reason="INVALID_ARGUMENT",
        metadata={huge[:1000] + str(i): huge for i in range(100)},
        violations=tuple(FieldViolation(huge, huge) for _ in range(100)),
    )
    for candidate in (error, ResourceExhaustedError(huge, metadata={"a": huge})):
        status = to_status(candidate)
        assert len(status.SerializeToString()) * 4 / 3 + 3 * len(status.message.encode()) < MAX_TRAILER_BYTES
