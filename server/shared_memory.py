"""Shared-memory inputs: POSIX shared-memory regions that clients on this host register, read in place.

A client creates a region (`shm_open`, i.e. a file in /dev/shm), writes pixels into it and registers it; its
requests then name (region, offset, width, height, channel order) instead of carrying bytes. The registry
maps each region once, read-only, and hands out read-only numpy views on the mapping: no copy of the pixels
is made until preprocessing resizes them into the model's input tensor.

What a hostile or careless local client can do, and what this module does about it (docs/shared-memory.md):

- Names: a region must be named `<prefix>...` with no "/" after the first character and at most 255 bytes,
  so only files directly in /dev/shm under the server's prefix can ever be opened.
- Symlinks, FIFOs, devices: the file is opened with O_NOFOLLOW | O_NONBLOCK and must be a regular file.
- Other users' files: the region must belong to the server's own user and be writable by nobody else. Only
  the region's writers can shrink it, and a process of the server's user could kill the server anyway.
- Shrinking a region after registration (ftruncate): touching a mapped page past the file's end raises
  SIGBUS, which kills the process. Each read checks the file's size (fstat) and that the name still names
  the registered file before it makes a view; a region shrunk or replaced since is refused. A shrink between
  that check and preprocessing (microseconds) is not defended: only the region's owners can do it (above).
- Unmapping: unregistering drops the registry's mapping; views still held by requests in flight keep the
  pages mapped (CPython refuses to close an mmap with exported buffers and unmaps when the last view goes).

Example:
    >>> registry = SharedMemoryRegistry(SharedMemoryLimits(enabled=True))
    >>> registration = registry.register("/visionrpc-42-0", 0, on_end=lambda: None)
    >>> image = registry.image("/visionrpc-42-0", 0, 640, 480, ChannelOrder.BGR, max_pixels=40_000_000)
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .domain import ChannelOrder, ImageSize
from .errors import (
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from .imaging import DecodedImage, check_pixel_layout

__all__ = [
    "DEFAULT_PREFIX",
    "SHM_DIR",
    "Registration",
    "SharedMemoryLimits",
    "SharedMemoryRegistry",
    "check_name",
]

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")  # where glibc's shm_open keeps POSIX shared memory on Linux
DEFAULT_PREFIX = "/visionrpc-"
_NAME_MAX = 255  # bytes of one file name (NAME_MAX), the leading "/" included

# Fields, relative to the message that carries them (the servicers add "images[i]." or nothing).
_NAME = "region.name"
_BYTE_SIZE = "region.byte_size"
_IMAGE_REGION = "shared_memory.region"
_IMAGE_OFFSET = "shared_memory.offset"


@dataclass(frozen=True, slots=True)
class SharedMemoryLimits:
    """What the server allows (ServerConfig's shared_memory* settings)."""

    enabled: bool = False
    prefix: str = DEFAULT_PREFIX
    max_region_bytes: int = 1024 * 1024 * 1024
    max_regions: int = 64
    linger_s: float = 2.0  # how long the servicer keeps the region of a client that went away

    def __post_init__(self) -> None:
        if len(self.prefix) < 2 or not self.prefix.startswith("/") or "/" in self.prefix[1:]:
            raise ValueError(f'expected a shared-memory prefix like "/visionrpc-", got {self.prefix!r}')
        if self.max_region_bytes < 1 or self.max_regions < 1:
            raise ValueError(
                f"expected max_region_bytes and max_regions >= 1, got {self.max_region_bytes} and "
                f"{self.max_regions}"
            )


@dataclass(eq=False, slots=True)
class Registration:
    """One registered region: its mapping and who to tell when it is unregistered."""

    name: str
    byte_size: int
    identity: tuple[int, int]  # (st_dev, st_ino): the file the name named when it was registered
    on_end: Callable[[], object] = field(repr=False)
    _mapping: mmap.mmap | None = field(repr=False, default=None)

    def view(self) -> mmap.mmap:
        if self._mapping is None:
            raise NotFoundError(f"shared-memory region {self.name!r} was unregistered")
        return self._mapping

    def close(self) -> None:
        mapping, self._mapping = self._mapping, None
        if mapping is None:
            return
        try:
            mapping.close()
        except BufferError:
            # Requests in flight still hold views on it: CPython unmaps it when the last of them goes.
            logger.debug("region %s stays mapped until its views are released", self.name)


def check_name(name: str, prefix: str, field_name: str = _NAME) -> None:
    """Raises unless `name` is a well-formed region name under `prefix`.

    Raises:
        InvalidArgumentError: INVALID_SHARED_MEMORY_NAME (malformed).
        PermissionDeniedError: SHARED_MEMORY_NAME_NOT_ALLOWED (outside the prefix).
    """
    problem = None
    if not name.startswith("/") or len(name) < 2:
        problem = f'expected a name starting with "/", got {name!r}'
    elif "/" in name[1:] or "\0" in name or name[1:] in (".", ".."):
        problem = f'expected no "/" (or NUL) after the first character, got {name!r}'
    elif len(name.encode()) > _NAME_MAX:
        problem = f"expected at most {_NAME_MAX} bytes, got {len(name.encode())}"
    if problem is not None:
        raise InvalidArgumentError.for_field(field_name, problem, reason="INVALID_SHARED_MEMORY_NAME")
    if not name.startswith(prefix):
        raise PermissionDeniedError(
            f"shared-memory region {name!r} is outside this server's prefix {prefix!r}",
            reason="SHARED_MEMORY_NAME_NOT_ALLOWED",
            metadata={"prefix": prefix},
            violations=(FieldViolation(field_name, f"expected a name starting with {prefix!r}"),),
        )


class SharedMemoryRegistry:
    """The regions registered now, by name. Thread-safe: reads come from worker threads."""

    def __init__(self, limits: SharedMemoryLimits, shm_dir: Path = SHM_DIR) -> None:
        self.limits = limits
        self._dir = shm_dir
        self._lock = threading.Lock()
        self._regions: dict[str, Registration] = {}
        self._closed = False

    def check_enabled(self) -> None:
        if not self.limits.enabled:
            raise PermissionDeniedError(
                "shared-memory inputs are off on this server (start it with --shared-memory)",
                reason="SHARED_MEMORY_DISABLED",
            )

    def register(self, name: str, byte_size: int, *, on_end: Callable[[], object]) -> Registration:
        """Maps `byte_size` bytes (0: the whole file) of region `name`, read-only.

        A name registered already is replaced: the earlier registration ends (its `on_end` is called), as
        when a client re-registers before the server noticed its previous call was gone. `on_end` is called
        once, from whichever thread unregisters the region.

        Raises:
            PermissionDeniedError: off, outside the prefix, or a file another user owns or may write.
            InvalidArgumentError: malformed name, missing or non-regular file, size out of bounds.
            ResourceExhaustedError: max_regions are registered already.
        """
        self.check_enabled()
        check_name(name, self.limits.prefix)
        mapping, size, identity = self._map(name, byte_size)
        registration = Registration(name, size, identity, on_end, mapping)
        with self._lock:
            previous = self._regions.get(name)
            if self._closed or (previous is None and len(self._regions) >= self.limits.max_regions):
                registration.close()
                if self._closed:
                    raise PermissionDeniedError("the server is stopping", reason="SHARED_MEMORY_DISABLED")
                raise ResourceExhaustedError(
                    f"{self.limits.max_regions} shared-memory regions are registered already",
                    reason="TOO_MANY_SHARED_MEMORY_REGIONS",
                    metadata={"max_regions": str(self.limits.max_regions)},
                )
            self._regions[name] = registration
        if previous is not None:
            self._end(previous)
        logger.info("registered shared-memory region %s (%d bytes)", name, size)
        return registration

    def unregister(self, name: str) -> None:
        """Unregisters `name` now, if registered (idempotent)."""
        self.check_enabled()
        with self._lock:
            registration = self._regions.pop(name, None)
        if registration is not None:
            self._end(registration)

    def release(self, registration: Registration) -> None:
        """Unregisters `registration` if it is still the one registered under its name (its call ended)."""
        with self._lock:
            current = self._regions.get(registration.name) is registration
            if current:
                del self._regions[registration.name]
        if current:  # else it was replaced or unregistered already, and ended then
            self._end(registration)

    def regions(self) -> list[tuple[str, int]]:
        """(name, byte_size) of each registered region, by name."""
        self.check_enabled()
        with self._lock:
            return sorted((r.name, r.byte_size) for r in self._regions.values())

    def close(self) -> None:
        """Unregisters every region and refuses new ones (server shutdown). Idempotent."""
        with self._lock:
            self._closed = True
            ended, self._regions = list(self._regions.values()), {}
        for registration in ended:
            self._end(registration)

    def image(
        self,
        name: str,
        offset: int,
        width: int,
        height: int,
        order: ChannelOrder | None,
        *,
        max_pixels: int,
    ) -> DecodedImage:
        """A read-only HxWxC view of a registered region's pixels at `offset` (rows top to bottom, channels
        interleaved, no padding). Fields in errors are relative to the Image message ("shared_memory.*").

        Raises:
            PermissionDeniedError: SHARED_MEMORY_DISABLED.
            NotFoundError: SHARED_MEMORY_REGION_NOT_FOUND (not registered).
            InvalidArgumentError: INVALID_CHANNEL_ORDER, INVALID_DIMENSIONS, IMAGE_TOO_LARGE,
                SHARED_MEMORY_OUT_OF_BOUNDS, SHARED_MEMORY_REGION_TRUNCATED, SHARED_MEMORY_REGION_GONE.
        """
        started = time.perf_counter()
        self.check_enabled()
        check_pixel_layout("shared_memory", "shared-memory", width, height, order, max_pixels=max_pixels)
        assert order is not None  # check_pixel_layout refused None
        length = width * height * order.channels
        with self._lock:  # held while the view is made, so the mapping cannot be closed under it
            registration = self._regions.get(name)
            if registration is None:
                raise NotFoundError(
                    f"no shared-memory region {name!r} is registered",
                    reason="SHARED_MEMORY_REGION_NOT_FOUND",
                    violations=(FieldViolation(_IMAGE_REGION, "expected a registered region"),),
                )
            if offset + length > registration.byte_size:
                raise InvalidArgumentError.for_field(
                    _IMAGE_OFFSET,
                    f"expected the image's {length} bytes at offset {offset} to lie inside the region's "
                    f"{registration.byte_size} bytes",
                    reason="SHARED_MEMORY_OUT_OF_BOUNDS",
                )
            self._check_still_whole(registration, offset + length)
            mapping = registration.view()
            pixels = np.frombuffer(mapping, np.uint8, count=length, offset=offset)
        pixels = pixels.reshape(height, width, order.channels)
        decode_ms = (time.perf_counter() - started) * 1000.0
        return DecodedImage(pixels, order, ImageSize(width, height), decode_ms)

    # ------------------------------------------------------------------------------------------ private

    def _map(self, name: str, byte_size: int) -> tuple[mmap.mmap, int, tuple[int, int]]:
        path = self._dir / name[1:]
        try:
            # O_NOFOLLOW: a symlink planted in /dev/shm is refused; O_NONBLOCK: a FIFO would block the open.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise InvalidArgumentError.for_field(
                _NAME, f"no shared-memory region {name!r} exists", reason="SHARED_MEMORY_REGION_MISSING"
            ) from None
        except OSError as exc:  # ELOOP: a symlink
            raise InvalidArgumentError.for_field(
                _NAME, f"cannot open {name!r}: {exc.strerror}", reason="SHARED_MEMORY_NOT_A_REGION"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgumentError.for_field(
                    _NAME, f"{name!r} is not a regular file", reason="SHARED_MEMORY_NOT_A_REGION"
                )
            if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise PermissionDeniedError(
                    f"shared-memory region {name!r} must belong to the server's user (uid {os.geteuid()}) "
                    f"and be writable by no one else (uid {info.st_uid}, mode "
                    f"{stat.S_IMODE(info.st_mode):o})",
                    reason="SHARED_MEMORY_OWNER_NOT_ALLOWED",
                )
            size = byte_size or info.st_size
            if size == 0 or size > info.st_size:
                raise InvalidArgumentError.for_field(
                    _BYTE_SIZE,
                    f"expected 1 to {info.st_size} bytes (the region's size), got {size}",
                    reason="SHARED_MEMORY_OUT_OF_BOUNDS",
                )
            if size > self.limits.max_region_bytes:
                raise InvalidArgumentError.for_field(
                    _BYTE_SIZE,
                    f"expected at most {self.limits.max_region_bytes} bytes, got {size}",
                    reason="SHARED_MEMORY_REGION_TOO_LARGE",
                )
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)  # it keeps a descriptor of its own
            return mapping, size, (info.st_dev, info.st_ino)
        finally:
            os.close(fd)

    def _check_still_whole(self, registration: Registration, end: int) -> None:
        """Refuses a read that would fault: the file shrank below `end`, or the name now names another
        file (unlinked, or replaced by a new region whose pixels the mapping would not show)."""
        try:
            info = os.stat(self._dir / registration.name[1:], follow_symlinks=False)
            same = (info.st_dev, info.st_ino) == registration.identity
        except OSError:
            same = False
        if not same:
            raise InvalidArgumentError.for_field(
                _IMAGE_REGION,
                f"shared-memory region {registration.name!r} was unlinked or replaced since it was "
                "registered; register it again",
                reason="SHARED_MEMORY_REGION_GONE",
            )
        size = registration.view().size()  # fstat on the mapping's own descriptor
        if size < end:
            raise InvalidArgumentError.for_field(
                _IMAGE_REGION,
                f"shared-memory region {registration.name!r} shrank to {size} bytes since it was "
                f"registered ({registration.byte_size}); the image needs {end}",
                reason="SHARED_MEMORY_REGION_TRUNCATED",
            )

    def _end(self, registration: Registration) -> None:
        registration.close()
        logger.info("unregistered shared-memory region %s", registration.name)
        try:
            registration.on_end()
        except Exception:  # a caller's callback must not keep other regions from ending
            logger.exception("on_end of shared-memory region %s failed", registration.name)
