"""The one exception family of the server's domain, free of gRPC.

    VisionRpcError
    ├── InvalidArgumentError       bad image, bad option, malformed model id         -> INVALID_ARGUMENT
    ├── NotFoundError              unknown model, unknown stream                      -> NOT_FOUND
    ├── FailedPreconditionError    model failed to load                               -> FAILED_PRECONDITION
    ├── ResourceExhaustedError     queue or limit full; carries retry_after           -> RESOURCE_EXHAUSTED
    ├── PermissionDeniedError      source outside the media root or the allow-list,   -> PERMISSION_DENIED
    │                              or a key not allowed to call the method
    ├── UnauthenticatedError       no API key, or one the server does not know        -> UNAUTHENTICATED
    ├── UnavailableError           warming up or draining; the only retryable one      -> UNAVAILABLE
    ├── DeadlineExceededError      the request's deadline passed before compute       -> DEADLINE_EXCEEDED
    └── EngineFailedError          the engine failed on a batch (runtime, driver, OOM) -> INTERNAL

Each error carries a machine-readable `reason` (google.rpc.ErrorInfo.reason, UPPER_SNAKE), optional metadata
and optional field violations (google.rpc.BadRequest). `visionrpc.server.servicers.status` maps the family to
gRPC statuses in exactly one place; anything else escaping a servicer is a bug and becomes INTERNAL.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DeadlineExceededError",
    "EngineFailedError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "VisionRpcError",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, named by its path in the request message (e.g. "images[2].raw.width")."""

    field: str
    description: str


class VisionRpcError(Exception):
    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.violations = violations

    def with_field_prefix(self, prefix: str) -> VisionRpcError:
        """Returns a copy whose field violations are nested under `prefix` (e.g. "images[3]")."""
        clone = copy.copy(self)
        clone.violations = tuple(
            FieldViolation(f"{prefix}.{v.field}" if v.field else prefix, v.description)
            for v in self.violations
        )
        return clone


class InvalidArgumentError(VisionRpcError):
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgumentError:
        return cls(description, reason=reason, violations=(FieldViolation(field, description),))


class NotFoundError(VisionRpcError):
    default_reason = "NOT_FOUND"


class FailedPreconditionError(VisionRpcError):
    default_reason = "FAILED_PRECONDITION"


class ResourceExhaustedError(VisionRpcError):
    """A limit was hit. `retry_after_s` > 0 becomes google.rpc.RetryInfo (the same call may fit later); 0 says
    retrying cannot help (a message over the size limit) and sends no RetryInfo."""

    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_s = retry_after_s


class PermissionDeniedError(VisionRpcError):
    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(VisionRpcError):
    default_reason = "UNAUTHENTICATED"


class UnavailableError(VisionRpcError):
    default_reason = "UNAVAILABLE"


class DeadlineExceededError(VisionRpcError):
    default_reason = "DEADLINE_EXCEEDED"


class EngineFailedError(VisionRpcError):
    """The engine raised while running a batch: not the request's fault, and not a bug in the server's code
    either (a driver error, out of device memory, a model the runtime cannot execute). INTERNAL, with the
    engine's own message, instead of the anonymous INTERNAL that unexpected exceptions get."""

    default_reason = "ENGINE_FAILED"
