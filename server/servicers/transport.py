"""The error contract at the transport level: what grpc.aio does before and around our servicer methods.

grpc.aio answers a request it cannot deserialize (malformed protobuf, or just bad UTF-8 in a string field)
with UNKNOWN "Unexpected <DecodeError>" and logs a traceback per request, and its own
`maximum_concurrent_rpcs` limit answers RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" with no details:
neither can be customised through grpc's API. So every method handler of our services (and health's) is
wrapped as it is registered (`add_services`):

- the request deserializer never raises: bytes it cannot parse become a `_Malformed` marker, which the
  wrapped behaviour answers INVALID_ARGUMENT, reason MALFORMED_REQUEST, logged once per interval with a count;
- a message over `max_message_bytes` (grpc core's own limit is set above it, see `core_receive_limit`) is
  RESOURCE_EXHAUSTED, reason MESSAGE_TOO_LARGE, with its size and the limit;
- the concurrent-call limit is counted here, RESOURCE_EXHAUSTED, reason TOO_MANY_CALLS, with RetryInfo.
  Health checks are exempt (a probe must see an overloaded server as alive); grpc's own limit stays set,
  above ours, as a backstop for what is not wrapped (reflection).

What grpcio does not allow: a message over the core limit (2x max_message_bytes) is refused by grpc core
before any Python runs, as RESOURCE_EXHAUSTED "Received message larger than max" without details; so is a
call over grpc's own concurrency backstop. Reflection is registered by grpc_reflection on the server object
itself and is not wrapped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from .. import errors
from .status import abort

__all__ = ["TransportGuard", "add_services", "core_receive_limit"]

logger = logging.getLogger(__name__)

# Services whose calls do not count against the concurrent-call limit.
_EXEMPT_SERVICES = ("grpc.health.v1.Health",)
# A busy server frees a call slot within a call's typical duration.
_RETRY_AFTER_S = 0.2
_LOG_INTERVAL_S = 60.0


def core_receive_limit(max_message_bytes: int) -> int:
    """grpc core's receive limit: above ours, so ours answers with details; twice it, at most 2 GiB - 1."""
    return min(2 * max_message_bytes, 2**31 - 1)


@dataclass(frozen=True, slots=True)
class _Malformed:
    """What the wrapped deserializer returns for bytes it could not parse (never raised through grpc)."""

    size: int
    problem: str  # "malformed" or "too_large"
    detail: str


class _RateLimitedWarning:
    """Logs a warning at most once per interval, saying how many were suppressed meanwhile."""

    def __init__(self, interval_s: float = _LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._next = self._suppressed, 0, now + self._interval_s
        if suppressed:
            logger.warning(message + " (and %d more like it, not logged)", *args, suppressed)
        else:
            logger.warning(message, *args)


class TransportGuard:
    """Counts concurrent calls and turns transport-level failures into the error contract."""

    def __init__(self, *, max_message_bytes: int, max_concurrent_rpcs: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._active = 0  # only touched on the event loop
        self._malformed_log = _RateLimitedWarning()
        self._busy_log = _RateLimitedWarning()

    @property
    def active_calls(self) -> int:
        return self._active

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        if parse is None:
            return None
        limit = self.max_message_bytes

        def deserialize(raw: bytes) -> Any:
            if len(raw) > limit:
                return _Malformed(len(raw), "too_large", "")
            try:
                return parse(raw)
            except Exception as exc:  # DecodeError and anything else a parser raises on hostile bytes
                return _Malformed(len(raw), "malformed", str(exc)[:200])

        return deserialize

    def _admission_error(self, request: object, method: str, counted: bool) -> errors.VisionRpcError | None:
        if isinstance(request, _Malformed):
            if request.problem == "too_large":
                return errors.ResourceExhaustedError(
                    f"the request message is {request.size} bytes, over this server's limit of "
                    f"{self.max_message_bytes} bytes; send fewer or smaller images per call",
                    reason="MESSAGE_TOO_LARGE",
                    retry_after_s=0.0,  # no RetryInfo: the same message will never fit
                    metadata={"size": str(request.size), "max_message_bytes": str(self.max_message_bytes)},
                )
            self._malformed_log.warn("malformed request to %s: %s", method, request.detail)
            return errors.InvalidArgumentError(
                f"the request is not a valid {method.rsplit('/', 1)[-1]} message: {request.detail}",
                reason="MALFORMED_REQUEST",
                metadata={"method": method},
            )
        if counted and self._active > self.max_concurrent_rpcs:
            self._busy_log.warn("over %d concurrent calls: refusing %s", self.max_concurrent_rpcs, method)
            return errors.ResourceExhaustedError(
                f"the server is handling {self.max_concurrent_rpcs} calls, its limit: retry shortly",
                reason="TOO_MANY_CALLS",
                retry_after_s=_RETRY_AFTER_S,
                metadata={"max_concurrent_rpcs": str(self.max_concurrent_rpcs)},
            )
        return None

    def wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler with a deserializer that never raises and a behaviour that checks admission first."""
        counted = not method.lstrip("/").startswith(_EXEMPT_SERVICES)
        changes: dict[str, Any] = {"request_deserializer": self.deserializer(handler.request_deserializer)}
        if handler.unary_unary is not None:
            changes["unary_unary"] = self._unary(method, handler.unary_unary, counted)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = self._unary_stream(method, handler.unary_stream, counted)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = self._stream_stream(method, handler.stream_stream, counted)
        else:  # client-streaming methods: none of ours; only the deserializer is made safe
            return handler._replace(**changes)  # type: ignore[attr-defined, no-any-return]
        return handler._replace(**changes)  # type: ignore[attr-defined, no-any-return]

    def _unary(self, method: str, behaviour: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        @functools.wraps(behaviour)
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._active += counted
            try:
                error = self._admission_error(request, method, counted)
                if error is not None:
                    await abort(context, error)
                return await behaviour(request, context)
            finally:
                self._active -= counted

        return guarded

    def _unary_stream(self, method: str, behaviour: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        @functools.wraps(behaviour)
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            self._active += counted
            try:
                error = self._admission_error(request, method, counted)
                if error is not None:
                    await abort(context, error)
                stream = behaviour(request, context)
                try:
                    async for message in stream:
                        yield message
                finally:
                    await stream.aclose()  # the servicer's cleanup runs as the call ends, not at collection
            finally:
                self._active -= counted

        return guarded

    def _stream_stream(self, method: str, behaviour: Callable[..., Any], counted: bool) -> Callable[..., Any]:
        """Bidirectional: the call is counted like a server stream; each message is checked as it is read,
        and a bad one raises its error from the servicer's read (which ends the call with it)."""

        def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return behaviour(self._checked_messages(method, requests), context)

        return self._unary_stream(method, checked, counted)

    async def _checked_messages(self, method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            error = self._admission_error(request, method, counted=False)
            if error is not None:
                raise error
            yield request


class _GuardedRegistrar:
    """Stands in for the server while a generated `add_*_to_server` registers its handlers."""

    def __init__(self, server: grpc.aio.Server, guard: TransportGuard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._server.add_generic_rpc_handlers([_GuardedGenericHandler(h, self._guard) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        wrapped = {name: self._guard.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)  # type: ignore[attr-defined]


class _GuardedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], guard: TransportGuard) -> None:
        self._inner = inner
        self._guard = guard

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._guard.wrap(handler_call_details.method, handler)


def add_services(
    server: grpc.aio.Server, guard: TransportGuard, *registrations: tuple[Callable[[Any, Any], None], object]
) -> None:
    """Registers each (generated add_*_to_server function, servicer) with every method handler guarded."""
    registrar = _GuardedRegistrar(server, guard)
    for add, servicer in registrations:
        add(servicer, registrar)
