"""The one place where the domain's exception family becomes gRPC statuses with rich details.

Every error carries google.rpc.ErrorInfo (domain "visionrpc.dev", the error's reason, its metadata);
INVALID_ARGUMENT adds google.rpc.BadRequest field violations, RESOURCE_EXHAUSTED adds google.rpc.RetryInfo.
Anything that is not a VisionRpcError is a bug: it is logged with its traceback and answered INTERNAL without
leaking internals to the client.

Every error is bounded here, whatever its raiser put in it: messages quote client input (unknown class
names, model ids, paths), and a status larger than the client's metadata limit (8 KiB by default) reaches
the client as RESOURCE_EXHAUSTED "metadata size exceeds limit", which looks retryable and hides the real
error. Text is cut by UTF-8 bytes (grpc-message percent-encodes non-ASCII bytes to three characters each),
at most a few entries of metadata and field violations are kept, and the whole trailer stays under 6 KiB.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .. import errors

__all__ = [
    "ERROR_DOMAIN",
    "abort",
    "bounded",
    "grpc_code",
    "map_errors",
    "map_stream_errors",
    "pushback",
    "to_status",
]

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "visionrpc.dev"

_CODES: dict[type[errors.VisionRpcError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.EngineFailedError: grpc.StatusCode.INTERNAL,
}


# Bounds of what one status carries (bytes of UTF-8, entries); see the module docstring for the sum.
MAX_MESSAGE_BYTES = 400
MAX_METADATA_ENTRIES = 8
MAX_METADATA_KEY_BYTES = 32
MAX_METADATA_VALUE_BYTES = 128
MAX_VIOLATIONS = 4
MAX_FIELD_BYTES = 96
MAX_DESCRIPTION_BYTES = 200
_CUT = "\u2026"  # an ellipsis marks a cut


def bounded(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (an ellipsis marks the cut), never mid-character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: limit - len(_CUT.encode())].decode("utf-8", "ignore") + _CUT


def grpc_code(error: errors.VisionRpcError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.VisionRpcError) -> status_pb2.Status:
    code = grpc_code(error)
    metadata = {
        bounded(key, MAX_METADATA_KEY_BYTES): bounded(value, MAX_METADATA_VALUE_BYTES)
        for key, value in list(error.metadata.items())[:MAX_METADATA_ENTRIES]
    }
    details: list[message.Message] = [
        error_details_pb2.ErrorInfo(reason=bounded(error.reason, 64), domain=ERROR_DOMAIN, metadata=metadata)
    ]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=bounded(v.field, MAX_FIELD_BYTES),
                        description=bounded(v.description, MAX_DESCRIPTION_BYTES),
                    )
                    for v in error.violations[:MAX_VIOLATIONS]
                ]
            )
        )
    # A delay of 0 means "retrying cannot help" (a message over the size limit): no RetryInfo then.
    if isinstance(error, errors.ResourceExhaustedError) and error.retry_after_s > 0:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        message = any_pb2.Any()
        message.Pack(detail)
        packed.append(message)
    text = bounded(error.message, MAX_MESSAGE_BYTES)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=text, details=packed)


def pushback(error: errors.VisionRpcError) -> tuple[tuple[str, str], ...]:
    """`grpc-retry-pushback-ms` for a retryable RESOURCE_EXHAUSTED: gRPC clients with a retry policy wait
    that long before their next attempt (gRFC A6), the same delay RetryInfo tells the SDKs."""
    if isinstance(error, errors.ResourceExhaustedError) and error.retry_after_s > 0:
        return (("grpc-retry-pushback-ms", str(max(1, int(error.retry_after_s * 1000)))),)
    return ()


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.VisionRpcError) -> NoReturn:
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, (*status.trailing_metadata, *pushback(error)))
    raise AssertionError("abort returned")  # it always raises; this keeps NoReturn honest


async def _internal(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: BaseException) -> NoReturn:
    logger.error("bug: unexpected %s in %s", type(exc).__name__, method, exc_info=exc)
    await abort(
        context,
        errors.VisionRpcError(
            f"internal error in {method}; the server logged the details", reason="INTERNAL"
        ),
    )


Method = TypeVar("Method", bound=Callable[..., Any])


def map_errors(method: Method) -> Method:
    """Decorates an async unary servicer method: domain errors become their status, anything else INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except errors.VisionRpcError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:  # context.abort() was called: the status is set already
            raise
        except Exception as exc:
            await _internal(context, method.__qualname__, exc)

    return cast(Method, wrapper)


def map_stream_errors(method: Method) -> Method:
    """Like map_errors, for server-streaming methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for message in method(self, request, context):
                yield message
        except errors.VisionRpcError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _internal(context, method.__qualname__, exc)

    return cast(Method, wrapper)
