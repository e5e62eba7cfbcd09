"""What every call goes through before its servicer: its id, its access check, its metrics.

One interceptor does all three so a call pays one wrapper: it sets the call's request id (the client's
`x-request-id`, else a fresh one) for the call's task, refuses a call the access policy refuses
(UNAUTHENTICATED / PERMISSION_DENIED with ErrorInfo, through `status.abort` like every other error), and
counts the call by method and final status code (and times unary calls) once it ends.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .. import errors, metrics
from ..access import AccessPolicy
from ..logs import REQUEST_ID
from .status import abort

__all__ = ["CallInterceptor"]

if TYPE_CHECKING:  # generic only in grpc-stubs
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

_MAX_REQUEST_ID = 64


def _request_id(metadata: Any) -> str:
    for name, value in metadata or ():
        if name == "x-request-id":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            text = "".join(c for c in text if c.isprintable())[:_MAX_REQUEST_ID]
            if text:
                return text
    return uuid.uuid4().hex[:16]


def _code_name(context: grpc.aio.ServicerContext[Any, Any], failed: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    if failed is None:
        return "OK"
    return "CANCELLED" if isinstance(failed, asyncio.CancelledError) else "UNKNOWN"


class CallInterceptor(_Interceptor):
    def __init__(self, access: AccessPolicy | None) -> None:
        self._access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED
            return handler
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        denial: errors.VisionRpcError | None = None
        if self._access is not None:
            try:
                self._access.check(method, metadata or ())
            except errors.VisionRpcError as exc:
                denial = exc
        request_id = _request_id(metadata)
        if handler.unary_unary is not None:
            return handler._replace(  # type: ignore[attr-defined, no-any-return]
                unary_unary=self._unary(method, handler.unary_unary, denial, request_id)
            )
        streaming = "unary_stream" if handler.unary_stream is not None else "stream_stream"
        behaviour = getattr(handler, streaming)
        if behaviour is not None:
            if denial is None and not metrics.ON:
                # Nothing to check or count: every message of a stream would pay for one more generator
                # layer on the event loop (200 subscribers of a 5 fps pipeline: 1,000 a second).
                return handler
            # A bidirectional call's first argument is its request iterator, passed through the same way.
            return handler._replace(  # type: ignore[attr-defined, no-any-return]
                **{streaming: self._unary_stream(method, behaviour, denial, request_id)}
            )
        return handler  # client streaming: none of ours

    @staticmethod
    def _unary(
        method: str, behaviour: Callable[..., Any], denial: errors.VisionRpcError | None, request_id: str
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            REQUEST_ID.set(request_id)
            start = time.perf_counter()
            failed: BaseException | None = None
            try:
                if denial is not None:
                    await abort(context, denial)
                result = behaviour(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                failed = exc
                raise
            finally:
                if metrics.ON:
                    metrics.RPC_CALLS.labels(method, _code_name(context, failed)).inc()
                    metrics.RPC_DURATION.labels(method).observe(time.perf_counter() - start)

        return call

    @staticmethod
    def _unary_stream(
        method: str, behaviour: Callable[..., Any], denial: errors.VisionRpcError | None, request_id: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            REQUEST_ID.set(request_id)
            failed: BaseException | None = None
            try:
                if denial is not None:
                    await abort(context, denial)
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    try:
                        async for message in result:
                            yield message
                    finally:
                        # Now, not whenever the generator is collected: the servicer's own cleanup (a
                        # stream's subscription) must run as the call ends, or a quick resume of the same
                        # stream still finds the old subscriber attached.
                        await result.aclose()
                elif inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                failed = exc
                raise
            finally:
                if metrics.ON:
                    metrics.RPC_CALLS.labels(method, _code_name(context, failed)).inc()

        return call
