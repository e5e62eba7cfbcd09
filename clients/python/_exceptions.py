"""The one exception family of the Python SDK: every failed RPC surfaces as one of these.

    VisionRpcError                 any failed call: code, message, reason, domain, metadata, field_violations,
    │                              retry_after_s
    ├── InvalidArgumentError       bad image, bad option, malformed model id             INVALID_ARGUMENT
    ├── NotFoundError              unknown model, unknown stream, unknown health service  NOT_FOUND
    ├── FailedPreconditionError    the model failed to load                               FAILED_PRECONDITION
    ├── ResourceExhaustedError     a queue or limit is full; see retry_after_s            RESOURCE_EXHAUSTED
    ├── PermissionDeniedError      a source outside the media root or the allow-list      PERMISSION_DENIED
    ├── UnavailableError           unreachable, warming up or draining; retryable         UNAVAILABLE
    ├── DeadlineExceededError      the call's timeout passed                              DEADLINE_EXCEEDED
    ├── CancelledError             the call was cancelled (by this process or the peer)  CANCELLED
    ├── InternalError              a bug in the server                                    INTERNAL
    └── UnexpectedStatusError      any other code (UNIMPLEMENTED, UNAUTHENTICATED, UNKNOWN, ...)

`from_rpc_error` (a failed call) and `from_status` (a google.rpc.Status inside a message, e.g. one frame's
error in InferStream) are the only places where gRPC status codes map to classes. A call's rich details come
from the `grpc-status-details-bin` trailer (a google.rpc.Status, decoded with grpcio-status): ErrorInfo gives
`reason`, `domain` and `metadata`, BadRequest gives `field_violations`, RetryInfo gives `retry_after_s`.

Example:
    try:
        client.infer(b"not an image")
    except InvalidArgumentError as err:
        print(err.reason, [v.field for v in err.field_violations])
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2 as _error_details_pb2
from google.rpc import status_pb2 as _status_pb2
from grpc_status import rpc_status as _rpc_status

__all__ = [
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnavailableError",
    "UnexpectedStatusError",
    "VisionRpcError",
    "from_rpc_error",
    "from_status",
    "map_rpc_errors",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, named by its path in the request (e.g. "images[2].raw.width")."""

    field: str
    description: str


class VisionRpcError(Exception):
    """A failed RPC, with the server's rich error details decoded.

    Attributes:
        code: the gRPC status code.
        message: the status message (grpc's `details()`).
        reason: google.rpc.ErrorInfo.reason, an UPPER_SNAKE machine-readable cause ("" when absent).
        domain: google.rpc.ErrorInfo.domain, e.g. "visionrpc.dev" ("" when absent).
        metadata: google.rpc.ErrorInfo.metadata.
        field_violations: google.rpc.BadRequest field violations, in server order.
        retry_after_s: google.rpc.RetryInfo.retry_delay in seconds, None when the server sent none.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = field_violations
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        """True only for UNAVAILABLE: the contract makes it the one status that is safe to retry blindly."""
        return self.code is grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        if self.reason:
            text += f" [{self.reason}]"
        for violation in self.field_violations:
            text += f"\n  {violation.field or '<request>'}: {violation.description}"
        return text

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Exception's default pickling replays only `args` (the message); keep every field across processes.
        rebuild = functools.partial(
            type(self),
            reason=self.reason,
            domain=self.domain,
            metadata=self.metadata,
            field_violations=self.field_violations,
            retry_after_s=self.retry_after_s,
        )
        return (rebuild, (self.code, self.message))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, reason={self.reason!r})"
        )


class InvalidArgumentError(VisionRpcError):
    """INVALID_ARGUMENT: the request is wrong; `field_violations` says where."""


class NotFoundError(VisionRpcError):
    """NOT_FOUND: unknown model, stream or health service."""


class FailedPreconditionError(VisionRpcError):
    """FAILED_PRECONDITION: the model exists but could not be loaded."""


class ResourceExhaustedError(VisionRpcError):
    """RESOURCE_EXHAUSTED: a queue or limit is full; wait `retry_after_s` before trying again."""


class PermissionDeniedError(VisionRpcError):
    """PERMISSION_DENIED: the server refuses this source or operation."""


class UnauthenticatedError(VisionRpcError):
    """UNAUTHENTICATED: the call carried no API key, or one the server does not know."""


class UnavailableError(VisionRpcError):
    """UNAVAILABLE: server unreachable, warming up or draining. Safe to retry."""


class DeadlineExceededError(VisionRpcError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""


class CancelledError(VisionRpcError):
    """CANCELLED: the call was cancelled by this process or by the server."""


class InternalError(VisionRpcError):
    """INTERNAL: a bug in the server; worth a report."""


class UnexpectedStatusError(VisionRpcError):
    """Any status the visionrpc contract does not produce itself (e.g. UNIMPLEMENTED from an older server,
    UNKNOWN)."""


_CLASS_BY_CODE: dict[grpc.StatusCode, type[VisionRpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_class(code: grpc.StatusCode) -> type[VisionRpcError]:
    """The exception class for a status code (UnexpectedStatusError for codes outside the contract)."""
    return _CLASS_BY_CODE.get(code, UnexpectedStatusError)


def from_rpc_error(err: grpc.RpcError) -> VisionRpcError:
    """Converts a failed call into the matching VisionRpcError subclass, decoding the rich details."""
    if isinstance(err, grpc.Call):
        code, message = err.code(), err.details() or ""
    else:
        # A bare RpcError carries no status (grpc raises those only for misuse); keep its text.
        code, message = grpc.StatusCode.UNKNOWN, str(err)
    return _from_parts(code, message, _rich_details(err))


def from_status(status: _status_pb2.Status) -> VisionRpcError:
    """The VisionRpcError of a google.rpc.Status carried inside a message (InferStream's per-frame errors)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return _from_parts(code, status.message, list(status.details))


def _from_parts(code: grpc.StatusCode, message: str, details: list[Any]) -> VisionRpcError:
    reason, domain = "", ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after_s: float | None = None
    for detail in details:
        if detail.Is(_error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = _error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(_error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = _error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
        elif detail.Is(_error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = _error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return error_class(code)(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_after_s=retry_after_s,
    )


def _rich_details(err: grpc.RpcError) -> list[Any]:
    """The google.protobuf.Any details of the call's google.rpc.Status trailer, [] when there is none."""
    if not isinstance(err, grpc.Call):
        return []
    try:
        status = _rpc_status.from_call(err)
    except (ValueError, DecodeError) as exc:
        # A proxy that rewrote the status (or a corrupt trailer): the details may describe another error,
        # so they are dropped rather than misattributed; code and message still come from the call.
        logger.debug("ignoring inconsistent rich error details: %s", exc)
        return []
    return list(status.details) if status is not None else []


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Re-raises any grpc.RpcError inside the block as its VisionRpcError; wraps unary calls and, later,
    the iteration of streaming calls (where the error surfaces at `next()`, not at the call)."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
