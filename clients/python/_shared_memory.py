"""Shared-memory inputs: pixels written once into POSIX shared memory, sent to a server on the same host
by reference instead of through the connection.

    with Client("127.0.0.1:50051") as client, client.create_shared_memory(1 << 24) as region:
        image = region.write(frame)              # HxWx3 uint8 (BGR) copied into the region at offset 0
        result = client.infer(image)             # sends (region, offset, width, height, order) only

The region is a file in /dev/shm (Linux), created with mode 0600; the server must run as the same user and
have shared memory enabled (`--shared-memory`). It stays registered while a background thread holds the
server's RegisterSharedMemory call open; when that call breaks (server restart, connection recycled), the
thread registers it again with backoff. `close()` unregisters the region, unlinks it and unmaps it.

Several images may live in one region at different offsets; do not rewrite an image's bytes while a
request that names them is in flight (the server reads them in place, during the request).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import grpc
import numpy as np
import numpy.typing as npt
from visionrpc.v1 import shared_memory_pb2, shared_memory_pb2_grpc

from ._exceptions import from_rpc_error
from ._types import ChannelOrder

__all__ = ["DEFAULT_SHARED_MEMORY_PREFIX", "SharedMemoryImage", "SharedMemoryRegion"]

logger = logging.getLogger(__name__)

DEFAULT_SHARED_MEMORY_PREFIX: Final = "/visionrpc-"
SHM_DIR: Final = Path("/dev/shm")
_CHANNELS: Final = {
    ChannelOrder.GRAY: 1,
    ChannelOrder.RGB: 3,
    ChannelOrder.BGR: 3,
    ChannelOrder.RGBA: 4,
    ChannelOrder.BGRA: 4,
}
_BACKOFF_MIN_S: Final = 0.05
_BACKOFF_MAX_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class SharedMemoryImage:
    """A reference to pixels in a registered region (rows top to bottom, channels interleaved, no padding);
    pass it to `Client.infer` wherever an image is accepted. `region.write(...)` makes one."""

    region: str
    offset: int
    width: int
    height: int
    channel_order: ChannelOrder = ChannelOrder.BGR

    def __post_init__(self) -> None:
        if self.channel_order not in _CHANNELS:
            choices = [o.value for o in _CHANNELS]
            raise ValueError(f"expected a channel order of {choices}, got {self.channel_order}")
        if self.offset < 0 or self.width < 1 or self.height < 1:
            raise ValueError(
                f"expected offset >= 0, width and height >= 1, got {self.offset}, {self.width}, {self.height}"
            )

    @property
    def byte_size(self) -> int:
        return self.width * self.height * _CHANNELS[self.channel_order]


class SharedMemoryRegion:
    """A POSIX shared-memory region this process created and keeps registered with one server.

    Made by `Client.create_shared_memory`; use it as a context manager or call `close()`. Thread-safe:
    `write` and `array` may be used from several threads on different offsets.

    Attributes:
        name: the region's POSIX name ("/visionrpc-<pid>-<random>").
        byte_size: its size in bytes.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        byte_size: int,
        *,
        prefix: str = DEFAULT_SHARED_MEMORY_PREFIX,
        timeout_s: float | None = 30.0,
    ) -> None:
        """Creates the region and registers it; raises as the registration failed (the region is removed).

        Raises:
            PermissionDeniedError: the server has shared memory off, or another prefix.
            InvalidArgumentError: the server cannot use the region (e.g. it runs as another user, in another
                /dev/shm, or byte_size is over its limit).
            OSError: the region cannot be created (/dev/shm full or missing: not Linux).
        """
        if byte_size < 1:
            raise ValueError(f"expected byte_size >= 1, got {byte_size}")
        self.name = f"{prefix}{os.getpid()}-{secrets.token_hex(6)}"
        self.byte_size = byte_size
        self._path = SHM_DIR / self.name.lstrip("/")
        self._stub = shared_memory_pb2_grpc.SharedMemoryServiceStub(channel)
        self._memory: mmap.mmap | None = _create(self._path, byte_size)
        # A process that exits without close() still removes the file (at interpreter exit).
        self._unlink = weakref.finalize(self, _unlink, self._path)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._registered = threading.Event()
        self._answered = threading.Event()  # the first registration succeeded or failed
        self._failure: Exception | None = None  # why the first registration failed
        self._call: Any = None
        self._holder = threading.Thread(target=self._hold, name=f"visionrpc-shm-{self.name}", daemon=True)
        self._holder.start()
        self._answered.wait(timeout_s)
        failure = self._failure
        if failure is None and not self._registered.is_set():
            failure = TimeoutError(f"registering {self.name} took more than {timeout_s} s")
        if failure is not None:
            self.close()
            raise failure

    # ---------------------------------------------------------------------------------------- pixels

    def write(
        self,
        array: npt.NDArray[np.uint8],
        offset: int = 0,
        channel_order: Literal["bgr", "rgb"] = "bgr",
    ) -> SharedMemoryImage:
        """Copies a uint8 image (HxW, HxWx1, HxWx3 or HxWx4) into the region at `offset`; its reference.

        `channel_order` is that of 3- and 4-channel arrays ("bgr": OpenCV, "rgb": PIL); 4 channels are
        "bgra"/"rgba", 2-D arrays gray.
        """
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got dtype {array.dtype}")
        channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else 0
        if channels not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(
                f"expected an image array of shape HxW, HxWx1, HxWx3 or HxWx4, got {array.shape}"
            )
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f'expected channel_order "bgr" or "rgb", got {channel_order!r}')
        order = ChannelOrder({1: "gray", 3: channel_order, 4: channel_order + "a"}[channels])
        image = SharedMemoryImage(self.name, offset, array.shape[1], array.shape[0], order)
        view = self.array(image)
        view[...] = array.reshape(view.shape)  # any strides; one copy
        return image

    def image(
        self, width: int, height: int, channel_order: str | ChannelOrder = "bgr", offset: int = 0
    ) -> SharedMemoryImage:
        """A reference to pixels already in the region (written through `array` or another process)."""
        image = SharedMemoryImage(self.name, offset, width, height, ChannelOrder(channel_order))
        self._check_bounds(image)
        return image

    def array(self, image: SharedMemoryImage) -> npt.NDArray[np.uint8]:
        """A writable HxWxC view of `image`'s bytes in the region, to decode or draw into without a copy.
        Drop such views before `close()`: the region stays mapped while one lives."""
        memory = self._mapped()
        self._check_bounds(image)
        channels = _CHANNELS[image.channel_order]
        flat = np.frombuffer(memory, np.uint8, count=image.byte_size, offset=image.offset)
        return flat.reshape(image.height, image.width, channels)

    def _check_bounds(self, image: SharedMemoryImage) -> None:
        if image.region != self.name:
            raise ValueError(f"expected an image of region {self.name}, got one of {image.region}")
        if image.offset + image.byte_size > self.byte_size:
            raise ValueError(
                f"expected the image's {image.byte_size} bytes at offset {image.offset} to fit the region's "
                f"{self.byte_size}"
            )

    def _mapped(self) -> mmap.mmap:
        memory = self._memory
        if memory is None:
            raise RuntimeError(f"shared-memory region {self.name} is closed")
        return memory

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def registered(self) -> bool:
        """Whether the server holds the region now (False while it is being registered again)."""
        return self._registered.is_set()

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unregisters the region, unlinks it and unmaps it. Idempotent."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
            call = self._call
        if self._registered.is_set():
            try:  # at once, rather than when the server notices the cancelled call
                self._stub.UnregisterSharedMemory(
                    shared_memory_pb2.UnregisterSharedMemoryRequest(name=self.name),
                    timeout=5.0,
                )
            except (grpc.RpcError, ValueError) as exc:  # ValueError: the client's channel is closed
                logger.debug("unregistering %s: %s", self.name, exc)
        if call is not None:
            call.cancel()
        if self._holder is not threading.current_thread():
            self._holder.join()
        self._unlink()
        memory, self._memory = self._memory, None
        if memory is not None:
            try:
                memory.close()
            except BufferError:  # views from `array` still live: the pages go when the last one does
                logger.debug("%s stays mapped until its views are released", self.name)

    def __repr__(self) -> str:
        state = "closed" if self._closing.is_set() else "registered" if self.registered else "registering"
        return f"SharedMemoryRegion(name={self.name!r}, byte_size={self.byte_size}, {state})"

    def _hold(self) -> None:
        """Background thread: keeps the registering call open, and opens it again when it ends or breaks."""
        request = shared_memory_pb2.RegisterSharedMemoryRequest(
            region=shared_memory_pb2.SharedMemoryRegion(name=self.name, byte_size=self.byte_size)
        )
        backoff = _BACKOFF_MIN_S
        ever_registered = False
        while True:
            with self._lock:
                if self._closing.is_set():
                    return
                try:
                    self._call = self._stub.RegisterSharedMemory(request)
                except ValueError:  # the client was closed: nothing left to register with
                    self._failure = RuntimeError("the client is closed")
                    self._answered.set()
                    return
                call = self._call
            try:
                for _ in call:  # one answer, then nothing until the registration ends
                    ever_registered = True
                    self._registered.set()
                    self._answered.set()
                    backoff = _BACKOFF_MIN_S
            except grpc.RpcError as exc:
                if not ever_registered:
                    self._failure = from_rpc_error(exc)
                    self._answered.set()  # wakes the constructor, which raises it
                    return
                if not self._closing.is_set():
                    logger.info("shared-memory region %s: registration broke (%s); registering again",
                                self.name, exc.code() if isinstance(exc, grpc.Call) else exc)  # fmt: skip
            self._registered.clear()
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX_S)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _create(path: Path, byte_size: int) -> mmap.mmap:
    """Creates the region's file (0600, never an existing one) with its pages reserved, and maps it."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        # Reserve the pages now: a full /dev/shm is an OSError here rather than SIGBUS at the first write.
        os.posix_fallocate(fd, 0, byte_size)
        return mmap.mmap(fd, byte_size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
