"""The SDK's exception family against a real gRPC server that fails on demand.

The server in this module is a real grpcio server on 127.0.0.1:0 with a generic handler: the request body is
a serialized google.rpc.Status, and the handler aborts with exactly that status (details and all), so each
test says in one place which error the wire carries.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from streaming import free_port
from visionrpc.client import (
    CancelledError,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnexpectedStatusError,
    VisionRpcError,
    from_rpc_error,
)

SERVICE = "visionrpc.test.Failing"


def _abort_with_status(request: bytes, context: grpc.ServicerContext) -> bytes:
    status = status_pb2.Status.FromString(request)
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")


def _abort_plain(request: bytes, context: grpc.ServicerContext) -> bytes:
    # No google.rpc.Status trailer at all, like a server (or proxy) that knows nothing of rich errors.
    status = status_pb2.Status.FromString(request)
    context.abort(_code(status.code), status.message)
    raise AssertionError("unreachable")


def _abort_inconsistent(request: bytes, context: grpc.ServicerContext) -> bytes:
    # A details trailer whose message disagrees with the call's: what a status-rewriting proxy leaves behind.
    status = status_pb2.Status.FromString(request)
    context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(_code(status.code), "rewritten by a proxy")
    raise AssertionError("unreachable")


def _code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


@pytest.fixture(scope="module")
def failing_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "AbortWithStatus": grpc.unary_unary_rpc_method_handler(_abort_with_status),
        "AbortPlain": grpc.unary_unary_rpc_method_handler(_abort_plain),
        "AbortInconsistent": grpc.unary_unary_rpc_method_handler(_abort_inconsistent),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def channel(failing_server: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(failing_server) as ch:
        yield ch


def call_failing(
    channel: grpc.Channel, status: status_pb2.Status, method: str = "AbortWithStatus"
) -> grpc.RpcError:
    """Makes the real call and returns the grpc.RpcError it raised."""
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(f"/{SERVICE}/{method}", None, None)(status.SerializeToString(), timeout=10)
    return info.value


def packed(*messages: Message) -> list[any_pb2.Any]:
    result = []
    for message in messages:
        item = any_pb2.Any()
        item.Pack(message)
        result.append(item)
    return result


# ------------------------------------------------------------------------------------------ the table

CODE_TABLE = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.FAILED_PRECONDITION, FailedPreconditionError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, CancelledError),
    (grpc.StatusCode.INTERNAL, InternalError),
    (grpc.StatusCode.UNKNOWN, UnexpectedStatusError),
    (grpc.StatusCode.ALREADY_EXISTS, UnexpectedStatusError),
    (grpc.StatusCode.ABORTED, UnexpectedStatusError),
    (grpc.StatusCode.OUT_OF_RANGE, UnexpectedStatusError),
    (grpc.StatusCode.UNIMPLEMENTED, UnexpectedStatusError),
    (grpc.StatusCode.DATA_LOSS, UnexpectedStatusError),
]


def test_table_covers_every_error_code() -> None:
    assert {code for code, _ in CODE_TABLE} == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize(("code", "expected"), CODE_TABLE, ids=[code.name for code, _ in CODE_TABLE])
@pytest.mark.parametrize("method", ["AbortWithStatus", "AbortPlain"], ids=["rich", "plain"])
def test_status_code_maps_to_class(
    channel: grpc.Channel, code: grpc.StatusCode, expected: type[VisionRpcError], method: str
) -> None:
    err = from_rpc_error(call_failing(channel, status_pb2.Status(code=code.value[0], message="boom"), method))
    assert type(err) is expected
    assert isinstance(err, VisionRpcError)
    assert (err.code, err.message) == (code, "boom")
    assert err.retryable is (code is grpc.StatusCode.UNAVAILABLE)


# ------------------------------------------------------------------------------------- rich details


def test_rich_details_are_decoded(channel: grpc.Channel) -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="2 bad fields",
        details=packed(
            error_details_pb2.ErrorInfo(reason="INVALID_OPTION", domain="visionrpc.dev", metadata={"k": "v"}),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="images[1].encoded", description="empty"
                    ),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="options.top_k", description="too small"
                    ),
                ]
            ),
        ),
    )
    err = from_rpc_error(call_failing(channel, status))
    assert isinstance(err, InvalidArgumentError)
    assert (err.reason, err.domain, err.metadata) == ("INVALID_OPTION", "visionrpc.dev", {"k": "v"})
    assert err.field_violations == (
        FieldViolation("images[1].encoded", "empty"),
        FieldViolation("options.top_k", "too small"),
    )
    assert err.retry_after_s is None
    assert str(err) == (
        "INVALID_ARGUMENT: 2 bad fields [INVALID_OPTION]\n"
        "  images[1].encoded: empty\n"
        "  options.top_k: too small"
    )


@pytest.mark.parametrize(
    ("delay", "expected_s"),
    [(duration_pb2.Duration(seconds=2, nanos=500_000_000), 2.5), (duration_pb2.Duration(), 0.0)],
    ids=["2.5s", "zero"],
)
def test_retry_info_gives_retry_after(
    channel: grpc.Channel, delay: duration_pb2.Duration, expected_s: float
) -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        message="queue full",
        details=packed(
            error_details_pb2.RetryInfo(retry_delay=delay), error_details_pb2.ErrorInfo(reason="QUEUE_FULL")
        ),
    )
    err = from_rpc_error(call_failing(channel, status))
    assert isinstance(err, ResourceExhaustedError)
    assert err.retry_after_s == pytest.approx(expected_s)
    assert err.reason == "QUEUE_FULL"


def test_unknown_detail_types_are_skipped(channel: grpc.Channel) -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.NOT_FOUND.value[0],
        message="no such model",
        details=packed(
            error_details_pb2.DebugInfo(detail="stack"), error_details_pb2.ErrorInfo(reason="MODEL_NOT_FOUND")
        ),
    )
    err = from_rpc_error(call_failing(channel, status))
    assert isinstance(err, NotFoundError)
    assert err.reason == "MODEL_NOT_FOUND"


def test_no_details_trailer_leaves_fields_empty(channel: grpc.Channel) -> None:
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="gone")
    err = from_rpc_error(call_failing(channel, status, "AbortPlain"))
    assert (err.reason, err.domain, err.metadata, err.field_violations, err.retry_after_s) == (
        "",
        "",
        {},
        (),
        None,
    )
    assert str(err) == "NOT_FOUND: gone"


def test_inconsistent_details_are_dropped_not_misattributed(channel: grpc.Channel) -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="original",
        details=packed(error_details_pb2.ErrorInfo(reason="ORIGINAL")),
    )
    err = from_rpc_error(call_failing(channel, status, "AbortInconsistent"))
    assert isinstance(err, InvalidArgumentError)
    assert (err.message, err.reason) == ("rewritten by a proxy", "")


# ----------------------------------------------------------------------------------- other behaviour


def test_bare_rpc_error_becomes_unexpected_status() -> None:
    err = from_rpc_error(grpc.RpcError("no status"))
    assert type(err) is UnexpectedStatusError
    assert (err.code, err.message) == (grpc.StatusCode.UNKNOWN, "no status")


def test_errors_survive_pickling() -> None:
    err = ResourceExhaustedError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
        reason="QUEUE_FULL",
        domain="visionrpc.dev",
        metadata={"model": "m"},
        field_violations=(FieldViolation("f", "d"),),
        retry_after_s=1.5,
    )
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is ResourceExhaustedError
    assert vars(clone) == vars(err)
    assert str(clone) == str(err)


def test_public_names_report_the_public_module() -> None:
    assert NotFoundError.__module__ == "visionrpc.client"
    assert repr(NotFoundError(grpc.StatusCode.NOT_FOUND, "x", reason="R")) == (
        "NotFoundError(code=NOT_FOUND, message='x', reason='R')"
    )


def test_client_maps_errors_and_keeps_the_grpc_cause(failing_server: str) -> None:
    # The failing server implements no health service: UNIMPLEMENTED, outside the contract's codes.
    with Client(failing_server, timeout_s=5) as client, pytest.raises(UnexpectedStatusError) as info:
        client.health()
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_unreachable_server_is_unavailable() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout_s=5) as client, pytest.raises(UnavailableError) as info:
        client.health()
    assert info.value.retryable
