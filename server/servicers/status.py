"""The one place where the domain's exception family becomes gRPC statuses with rich details.

Every error carries google.rpc.ErrorInfo (domain "visionrpc.dev", the error's reason, its metadata);
INVALID_ARGUMENT adds google.rpc.BadRequest field violations, RESOURCE_EXHAUSTED adds google.rpc.RetryInfo.
Anything that is not a VisionRpcError is a bug: it is logged with its traceback and answered INTERNAL without
leaking internals to the client.
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

__all__ = ["ERROR_DOMAIN", "abort", "grpc_code", "map_errors", "map_stream_errors", "to_status"]

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "visionrpc.dev"

_CODES: dict[type[errors.VisionRpcError], grpc.StatusCode] = {
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.EngineFailedError: grpc.StatusCode.INTERNAL,
}


def grpc_code(error: errors.VisionRpcError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.VisionRpcError) -> status_pb2.Status:
    code = grpc_code(error)
    details: list[message.Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    ]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    if isinstance(error, errors.ResourceExhaustedError):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        message = any_pb2.Any()
        message.Pack(detail)
        packed.append(message)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message, details=packed)


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: errors.VisionRpcError) -> NoReturn:
    status = rpc_status.to_status(to_status(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
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
