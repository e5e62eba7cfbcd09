"""The on-disk cache of built TensorRT engines ("plans"): shared between processes, never trusted blindly.

A serialized TensorRT engine only runs with the exact TensorRT version and GPU it was built for, and it bakes
in the precision and the optimisation profile. So an entry is keyed by everything that shaped it:

    sha256(ONNX file) + TensorRT version + GPU name + compute capability + precision + profiles
    (+ DLA core, + sha256 of an INT8 calibration cache)

An entry file is `<root>/<key digest>.engine`:

    b"VRPCPLAN"  | uint32 little-endian header length | header (JSON, UTF-8) | plan bytes

The header repeats the key's fields and carries the plan's sha256 and length, so a truncated write, a flipped
bit, or a file copied in from another machine or TensorRT version is detected and rebuilt, never deserialized
(deserializing a bad plan can crash the process rather than raise). Writes go to a temporary file in the same
directory, are fsynced, then atomically renamed into place: a reader sees a whole entry or none, and replicas
sharing a cache volume may race to write the same entry harmlessly.

Nothing here imports TensorRT; `tensorrt_engine` supplies the device identity and the plan bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tensorrt_plan import BuildPlan, InputProfile

__all__ = [
    "CacheEntry",
    "CacheEntryError",
    "DeviceIdentity",
    "EngineCache",
    "EngineCacheKey",
    "atomic_write",
    "file_sha256",
]

logger = logging.getLogger(__name__)

_MAGIC = b"VRPCPLAN"
_LENGTH = struct.Struct("<I")
# Bump when the entry layout or the meaning of a key field changes: every older entry then misses.
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = 1 << 20
_CHUNK = 1 << 20


class CacheEntryError(Exception):
    """A cache entry that must not be used; the message says why (corrupt, truncated, another key)."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a plan is bound to besides the model: the TensorRT version and the GPU it was built on."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin

    def digest(self) -> str:
        text = json.dumps([self.tensorrt_version, self.gpu_name, self.compute_capability])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EngineCacheKey:
    """Everything that shaped a plan. Two builds with equal keys are interchangeable."""

    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: tuple[InputProfile, ...]
    dla_core: int = -1
    calibration_sha256: str = ""

    @classmethod
    def for_build(
        cls, model_sha256: str, device: DeviceIdentity, plan: BuildPlan, *, calibration_sha256: str = ""
    ) -> EngineCacheKey:
        return cls(
            model_sha256=model_sha256,
            tensorrt_version=device.tensorrt_version,
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
            precision=plan.precision.value,
            profiles=plan.profiles,
            dla_core=plan.dla_core,
            calibration_sha256=calibration_sha256,
        )

    def to_dict(self) -> dict[str, Any]:
        """The key as JSON-ready values (lists, not tuples), in a fixed field order."""
        return {
            "model_sha256": self.model_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "profiles": [p.to_list() for p in self.profiles],
            "dla_core": self.dla_core,
            "calibration_sha256": self.calibration_sha256,
        }

    def digest(self) -> str:
        """A stable hex sha256 over the format version and every field (the entry's file name)."""
        canonical = json.dumps(
            {"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: EngineCacheKey
    plan: bytes = field(repr=False)
    path: Path
    # Free-form facts recorded at build time (e.g. the precision actually used, the build's duration).
    metadata: Mapping[str, str] = field(default_factory=dict)


class EngineCache:
    """A directory of plan files. Thread- and process-safe for readers and writers (atomic renames)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def path_for(self, key: EngineCacheKey) -> Path:
        return self._root / f"{key.digest()}.engine"

    def timing_cache_path(self, device: DeviceIdentity) -> Path:
        """Where the builder's timing cache lives: one per TensorRT version and GPU, shared by every model."""
        return self._root / f"timing-{device.digest()[:16]}.cache"

    def read(self, key: EngineCacheKey) -> CacheEntry | None:
        """The entry for `key`, or None when absent or unusable (an unusable file is removed and logged)."""
        path = self.path_for(key)
        try:
            return self.verify(path, key)
        except FileNotFoundError:
            return None
        except (CacheEntryError, OSError) as exc:
            logger.warning("engine cache entry %s is unusable and will be rebuilt: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def verify(self, path: Path, key: EngineCacheKey) -> CacheEntry:
        """Reads and checks one entry file against `key`.

        Raises:
            FileNotFoundError: no such file.
            CacheEntryError: bad magic, unreadable or oversized header, another format version, another key,
                a plan of the wrong length or hash.
        """
        data = path.read_bytes()
        head = len(_MAGIC) + _LENGTH.size
        if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
            raise CacheEntryError("not a visionrpc engine cache entry (bad magic)")
        (header_length,) = _LENGTH.unpack_from(data, len(_MAGIC))
        if header_length > _MAX_HEADER_BYTES or head + header_length > len(data):
            raise CacheEntryError(f"truncated or oversized header ({header_length} bytes)")
        try:
            header = json.loads(data[head : head + header_length].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheEntryError(f"unreadable header: {exc}") from None
        if not isinstance(header, dict):
            raise CacheEntryError("unreadable header: expected a JSON object")
        if header.get("format") != FORMAT_VERSION:
            raise CacheEntryError(f"format {header.get('format')!r}, expected {FORMAT_VERSION}")
        if header.get("key") != key.to_dict() or header.get("digest") != key.digest():
            differing = _differing_fields(header.get("key"), key.to_dict())
            raise CacheEntryError(f"built for another key (differs in {differing or 'digest'})")
        plan = data[head + header_length :]
        if header.get("plan_bytes") != len(plan):
            raise CacheEntryError(f"plan is {len(plan)} bytes, header says {header.get('plan_bytes')}")
        if header.get("plan_sha256") != hashlib.sha256(plan).hexdigest():
            raise CacheEntryError("plan sha256 does not match the header (corrupt)")
        metadata = header.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise CacheEntryError("unreadable header: metadata is not an object")
        return CacheEntry(key, plan, path, {str(k): str(v) for k, v in metadata.items()})

    def write(self, key: EngineCacheKey, plan: bytes, *, metadata: Mapping[str, str] | None = None) -> Path:
        """Stores a plan atomically under `key` (replacing any entry) and returns its path.

        Raises:
            OSError: the directory cannot be created or written.
        """
        header = {
            "format": FORMAT_VERSION,
            "key": key.to_dict(),
            "digest": key.digest(),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan),
            "metadata": dict(metadata or {}),
        }
        encoded = json.dumps(header, sort_keys=True).encode("utf-8")
        path = self.path_for(key)
        atomic_write(path, [_MAGIC, _LENGTH.pack(len(encoded)), encoded, plan])
        logger.info("cached engine %s (%.1f MB)", path, len(plan) / 1e6)
        return path


def atomic_write(path: Path, parts: list[bytes]) -> None:
    """Writes `parts` to `path` so that readers see the old file or the whole new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # Make the rename itself durable (a crash right after must not resurrect the old entry); best effort.
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks (ONNX files can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _differing_fields(found: object, expected: dict[str, Any]) -> list[str]:
    if not isinstance(found, dict):
        return []
    return sorted(name for name in expected if found.get(name) != expected[name])
