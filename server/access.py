"""Who may call what: API keys for every call, a separate set of admin keys for model control.

    --api-keys-file    any call needs one of these keys (or an admin key)
    --admin-keys-file  LoadModel and UnloadModel, StartPipeline and StopPipeline need one of these

A key travels as `authorization: Bearer <key>` (what gRPC's access-token call credentials send) or as
`x-api-key: <key>`. With no key file configured, calls are not checked (a mesh doing mTLS may authenticate
for us); once any key file is configured, model control needs an admin key, so an inference key can never
change what is loaded (point both flags at one file to give every key both rights). Health and reflection
are exempt by default (probes carry no keys; `ServerConfig.auth_exempt_services`).

Keys are compared in constant time (SHA-256 digests through `hmac.compare_digest`, every key compared),
never logged, and read from files — Kubernetes secrets mounted as volumes — which are re-read when they
change, so a rotated secret takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import FailedPreconditionError, PermissionDeniedError, UnauthenticatedError

__all__ = ["MODEL_CONTROL_METHODS", "AccessPolicy", "KeyFile", "presented_key"]

logger = logging.getLogger(__name__)

MODEL_CONTROL_METHODS = frozenset(
    {
        "/visionrpc.v1.ModelService/LoadModel",
        "/visionrpc.v1.ModelService/UnloadModel",
        # Declared pipelines: stopping one silences its sinks, so it is control, not inference.
        "/visionrpc.v1.PipelineService/StartPipeline",
        "/visionrpc.v1.PipelineService/StopPipeline",
    }
)
_RECHECK_S = 1.0  # a key file is stat'ed at most this often
_MAX_KEY_BYTES = 4096


def presented_key(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The key a call carries: `authorization: Bearer <key>` first, else `x-api-key`."""
    api_key = None
    for name, value in metadata:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if name == "authorization":
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and text.strip():
            api_key = text.strip()
    return api_key


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class KeyFile:
    """A set of keys read from a file (one per line; blank lines and `#` comments ignored), re-read when the
    file changes. A file that disappears or empties keeps the last keys it had, and says so in the log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._digests: tuple[bytes, ...] = ()
        self._next_check = 0.0
        self._load(initial=True)

    def _load(self, *, initial: bool = False) -> None:
        try:
            stat = os.stat(self.path)
            signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if signature == self._signature:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if initial:
                raise FailedPreconditionError(
                    f"cannot read the key file {self.path}: {exc}", reason="KEY_FILE_UNREADABLE"
                ) from exc
            logger.warning("cannot re-read the key file %s (%s); keeping its previous keys", self.path, exc)
            return
        keys = [line.strip() for line in text.splitlines()]
        keys = [key for key in keys if key and not key.startswith("#")]
        if any(len(key.encode()) > _MAX_KEY_BYTES for key in keys):
            raise FailedPreconditionError(
                f"the key file {self.path} has a key over {_MAX_KEY_BYTES} bytes", reason="KEY_FILE_INVALID"
            )
        if not keys:
            if initial:
                raise FailedPreconditionError(
                    f"the key file {self.path} holds no key", reason="KEY_FILE_INVALID"
                )
            logger.warning("the key file %s holds no key now; keeping its previous keys", self.path)
            return
        self._digests = tuple(_digest(key) for key in keys)
        self._signature = signature
        logger.info("%s %d key(s) from %s", "read" if initial else "re-read", len(keys), self.path)

    def matches(self, key: str) -> bool:
        """Whether `key` is one of the file's keys, in time independent of which one (or none) it is."""
        now = time.monotonic()
        with self._lock:
            if now >= self._next_check:
                self._next_check = now + _RECHECK_S
                self._load()
            digests = self._digests
        presented = _digest(key)
        found = False
        for digest in digests:  # no early exit: the time taken does not tell which key matched
            found |= hmac.compare_digest(presented, digest)
        return found


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The server's rule for one call: raises UnauthenticatedError / PermissionDeniedError, or returns."""

    api_keys: KeyFile | None
    admin_keys: KeyFile | None
    exempt_services: tuple[str, ...]  # the config's auth_exempt_services

    @classmethod
    def from_files(
        cls, api_keys_file: str, admin_keys_file: str, exempt_services: Sequence[str]
    ) -> AccessPolicy | None:
        """The policy of these settings; None when no key file is configured (nothing to check)."""
        if not api_keys_file and not admin_keys_file:
            return None
        return cls(
            KeyFile(Path(api_keys_file)) if api_keys_file else None,
            KeyFile(Path(admin_keys_file)) if admin_keys_file else None,
            tuple(exempt_services),
        )

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        service = method.lstrip("/").split("/", 1)[0]
        if service in self.exempt_services:
            return
        key = presented_key(metadata)
        is_admin = key is not None and self.admin_keys is not None and self.admin_keys.matches(key)
        if method in MODEL_CONTROL_METHODS:
            if is_admin:
                return
            if key is None:
                raise UnauthenticatedError(
                    "this method needs an admin key: send `authorization: Bearer <key>`",
                    reason="MISSING_API_KEY",
                    metadata={"method": method},
                )
            if self.api_keys is not None and self.api_keys.matches(key):
                raise PermissionDeniedError(
                    "this key may not control models or pipelines: that needs an admin key",
                    reason="ADMIN_KEY_REQUIRED",
                    metadata={"method": method},
                )
            raise UnauthenticatedError(
                "the key is not valid on this server", reason="UNKNOWN_API_KEY", metadata={"method": method}
            )
        if self.api_keys is None or is_admin:
            return
        if key is None:
            raise UnauthenticatedError(
                "this server needs an API key: send `authorization: Bearer <key>` (or `x-api-key`)",
                reason="MISSING_API_KEY",
                metadata={"method": method},
            )
        if not self.api_keys.matches(key):
            raise UnauthenticatedError(
                "the API key is not valid on this server",
                reason="UNKNOWN_API_KEY",
                metadata={"method": method},
            )
