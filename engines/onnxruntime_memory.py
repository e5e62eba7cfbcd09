"""Where ONNX Runtime's CPU memory goes, and the settings that keep it near what a batch really needs.

Measured on yolov3-tiny at 416x416 after batches of 1 to 8 (docs/memory.md has the numbers): ONNX Runtime's
defaults hold ~376 MB resident for a 35 MB model. Three things make up the waste, and each has a fix that
costs no time per run (checked with the process's page faults and system CPU time, which stay at ~0 per
image, where returning memory to the system after every run costs ~3,400 page faults and ~7 ms of system
CPU per image):

- The memory pattern (`enable_mem_pattern`) plans one block per input shape; with batches of 1, 2, 4 and 8
  the arena keeps a block for each. Off, tensors come one by one from the arena, which reuses their space.
- The session's own arena grows in powers of two (`kNextPowerOfTwo`): a batch of 8 that needs 150 MB may
  reserve 256. One arena for the process, registered once with `kSameAsRequested` and shared by every
  session (`session.use_env_allocators`), grows by what is asked for. It never shrinks, so nothing is
  allocated and faulted in again per run.
- Loading a model (parsing, graph optimisation) leaves ~70 MB of freed heap that glibc keeps; one
  `malloc_trim(0)` after a load hands it back.

Outside ONNX Runtime, glibc gives each thread that contends for the heap an arena of its own, up to 8 per
core; the server's request, gRPC and intra-op threads each keep their freed buffers (720 KB requests,
letterboxed images, stacked batches) in theirs. `limit_malloc_arenas` caps them at one per core: ~110 MB less
after a warm-up at c=16, and fewer page faults per request, not more (23 against 59 measured).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

import onnxruntime as ort

__all__ = ["limit_malloc_arenas", "release_freed_heap", "shared_cpu_arena"]

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
_ARENA_EXTEND_SAME_AS_REQUESTED = 1  # OrtArenaCfg's arena_extend_strategy: 0 next power of two, 1 as asked
_lock = threading.Lock()
_registered: bool | None = None  # None: not tried yet


def shared_cpu_arena() -> bool:
    """Registers the process's one CPU arena (`kSameAsRequested`) the first time it is called; True when
    sessions can use it (`session.use_env_allocators`), False where this onnxruntime cannot register one
    (they then keep an arena of their own)."""
    global _registered
    with _lock:
        if _registered is None:
            try:
                memory = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                # max_mem 0 (no cap), initial chunk and dead bytes per chunk -1 (ONNX Runtime's defaults).
                config = ort.OrtArenaCfg(0, _ARENA_EXTEND_SAME_AS_REQUESTED, -1, -1)
                ort.create_and_register_allocator(memory, config)
                _registered = True
            except Exception as exc:  # ORT's pybind11 errors are plain Exception subclasses
                logger.warning("could not register a shared CPU arena, sessions keep their own: %s", exc)
                _registered = False
        return _registered


def release_freed_heap() -> None:
    """Returns the C heap's free pages to the system (glibc's `malloc_trim`); a no-op elsewhere. Cheap
    enough once per model load, too costly per run (the next run faults the pages in again)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def limit_malloc_arenas(arenas: int) -> bool:
    """Caps glibc's malloc arenas at `arenas` (call it early, before the threads start), unless
    MALLOC_ARENA_MAX is set, which wins; True when the cap was set. A no-op outside glibc."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ or arenas < 1:
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim  # noqa: B018  # musl has neither malloc_trim nor mallopt's glibc parameters
    except (OSError, AttributeError):
        return None
    return libc
