"""visionrpc.v1.SharedMemoryService: register, unregister and list shared-memory regions.

A region stays registered while its RegisterSharedMemory call is open: the call answers once, then waits.
When the client cancels it or its connection drops, grpc.aio raises CancelledError in the handler and the
region is unregistered there, after a short linger (`--shared-memory-linger-s`); UnregisterSharedMemory and
server shutdown end the call OK instead. Opening
and mapping a file in /dev/shm are a few system calls on tmpfs, so they run on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from visionrpc.v1 import shared_memory_pb2, shared_memory_pb2_grpc

from ..shared_memory import SharedMemoryRegistry, check_name
from .status import map_errors, map_stream_errors

__all__ = ["SharedMemoryServicer"]

Context = grpc.aio.ServicerContext[Any, Any]


class SharedMemoryServicer(shared_memory_pb2_grpc.SharedMemoryServiceServicer):
    def __init__(self, registry: SharedMemoryRegistry) -> None:
        self._registry = registry

    @map_stream_errors
    async def RegisterSharedMemory(  # noqa: N802 - the generated base class fixes the name
        self, request: shared_memory_pb2.RegisterSharedMemoryRequest, context: Context
    ) -> AsyncIterator[shared_memory_pb2.RegisterSharedMemoryResponse]:
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()
        registration = self._registry.register(
            request.region.name,
            request.region.byte_size,
            # Called from the thread that unregisters the region (the loop's, or the one stopping the server).
            on_end=lambda: loop.call_soon_threadsafe(ended.set),
        )
        gone = True
        try:
            yield shared_memory_pb2.RegisterSharedMemoryResponse(
                region=shared_memory_pb2.SharedMemoryRegion(
                    name=registration.name, byte_size=registration.byte_size
                )
            )
            await ended.wait()  # unregistered, replaced or shut down: released already
            gone = False
        finally:
            if gone:
                # The client cancelled or its connection was cut (e.g. by max connection age): the SDKs
                # register again on a new connection at once, and a linger leaves no moment in which their
                # requests would find the region unknown. A registration again replaces this one, and then
                # the release below finds it replaced and does nothing.
                linger = self._registry.limits.linger_s
                if linger > 0:
                    loop.call_later(linger, self._registry.release, registration)
                else:
                    self._registry.release(registration)

    @map_errors
    async def UnregisterSharedMemory(  # noqa: N802
        self, request: shared_memory_pb2.UnregisterSharedMemoryRequest, context: Context
    ) -> shared_memory_pb2.UnregisterSharedMemoryResponse:
        self._registry.check_enabled()
        check_name(request.name, self._registry.limits.prefix, "name")
        self._registry.unregister(request.name)
        return shared_memory_pb2.UnregisterSharedMemoryResponse()

    @map_errors
    async def ListSharedMemory(  # noqa: N802
        self, request: shared_memory_pb2.ListSharedMemoryRequest, context: Context
    ) -> shared_memory_pb2.ListSharedMemoryResponse:
        return shared_memory_pb2.ListSharedMemoryResponse(
            regions=[
                shared_memory_pb2.SharedMemoryRegion(name=name, byte_size=size)
                for name, size in self._registry.regions()
            ]
        )
