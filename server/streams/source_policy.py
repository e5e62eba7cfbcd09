"""What a stream request may read: the security boundary of the streaming side.

A request may name a file below the media root, a URL whose scheme and host the operator allowed, or a capture
device when devices are enabled; `resolve_source` turns exactly that into a `SourceSpec` and refuses the rest
before anything reaches a decoder (sources.SourceReader reads only what it returns).

Credentials in URLs (rtsp://user:pass@cam/...) are needed to connect, so SourceSpec keeps them, but every
message that reaches a client or a log shows the URL through `redact_url`.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..config import ServerConfig
from ..errors import FieldViolation, InvalidArgumentError, NotFoundError, PermissionDeniedError
from .types import SourceKind, SourceSpec

__all__ = ["SourcePolicy", "redact_url", "resolve_source"]


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What requests may read. allowed_url_hosts: exact names, "*.example.com" suffixes, or "*" (any)."""

    media_root: Path
    allowed_url_schemes: tuple[str, ...]
    allowed_url_hosts: tuple[str, ...]
    enable_devices: bool

    @classmethod
    def from_config(cls, config: ServerConfig) -> SourcePolicy:
        return cls(
            media_root=config.media_root,
            allowed_url_schemes=tuple(s.lower() for s in config.allowed_url_schemes),
            allowed_url_hosts=tuple(h.lower() for h in config.allowed_url_hosts),
            enable_devices=config.enable_devices,
        )

    def allows_host(self, host: str) -> bool:
        host = host.lower()
        for allowed in self.allowed_url_hosts:
            allowed = allowed.lower()
            if allowed == "*" or allowed == host:
                return True
            if allowed.startswith("*.") and host.endswith(allowed[1:]):
                return True
        return False


def redact_url(url: str) -> str:
    """Masks the user info of a URL for logs and messages: rtsp://user:pw@cam/x -> rtsp://***@cam/x."""
    scheme, sep, rest = url.partition("://")
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    authority = before_query.split("/", 1)[0]
    # A password may hold an unescaped "/" (u:pa/ss@cam): then the last "@" after a ":" still ends it.
    if "@" in authority or (":" in before_query.split("@", 1)[0] and "@" in before_query):
        cut = authority.rfind("@") if "@" in authority else before_query.rfind("@")
        return f"{scheme}{sep}***{rest[cut:]}"
    return url


def resolve_source(
    index: int,
    *,
    path: str | None = None,
    url: str | None = None,
    device: int | None = None,
    policy: SourcePolicy,
) -> SourceSpec:
    """Validates one requested source against the policy; exactly one of path, url and device is given.

    Raises:
        InvalidArgumentError: malformed (field "sources[i].path" / ".url" / ".device", or "sources[i]").
        PermissionDeniedError: reasons SOURCE_OUTSIDE_MEDIA_ROOT, URL_SCHEME_NOT_ALLOWED, URL_HOST_NOT_ALLOWED
            (metadata "host"), DEVICES_DISABLED; with a field violation naming the source.
        NotFoundError: reason SOURCE_NOT_FOUND, a file below the media root that does not exist.

    Example: `resolve_source(0, path="clips/bikes.mp4", policy=policy)`.
    """
    given = [name for name, value in (("path", path), ("url", url), ("device", device)) if value is not None]
    if len(given) != 1:
        raise InvalidArgumentError.for_field(
            f"sources[{index}]", f"expected one of path, url or device, got {' and '.join(given) or 'none'}"
        )
    if path is not None:
        return _resolve_path(f"sources[{index}].path", index, path, policy)
    if url is not None:
        return _resolve_url(f"sources[{index}].url", index, url, policy)
    assert device is not None
    field = f"sources[{index}].device"
    if isinstance(device, bool) or device < 0:
        raise InvalidArgumentError.for_field(field, f"expected a device index >= 0, got {device!r}")
    if not policy.enable_devices:
        raise _denied(field, "capture devices are disabled on this server", "DEVICES_DISABLED")
    return SourceSpec(index=index, kind=SourceKind.DEVICE, location=str(device))


def _denied(field: str, message: str, reason: str, **metadata: str) -> PermissionDeniedError:
    # The field violation too, so the servicer can point at the offending source like for INVALID_ARGUMENT.
    return PermissionDeniedError(
        message, reason=reason, metadata=metadata, violations=(FieldViolation(field, message),)
    )


def _resolve_path(field: str, index: int, path: str, policy: SourcePolicy) -> SourceSpec:
    if not path or "\x00" in path:
        raise InvalidArgumentError.for_field(field, "expected a non-empty path relative to the media root")
    # Judge the path both ways so "C:\\x" or "\\\\host\\share" are refused on POSIX hosts too.
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or path.startswith(("/", "\\")):
        raise InvalidArgumentError.for_field(field, f"expected a path relative to the media root: {path!r}")
    if ".." in posix.parts or ".." in windows.parts:
        raise InvalidArgumentError.for_field(field, f"expected a path without '..', got {path!r}")
    root = policy.media_root.resolve()
    # realpath follows every symlink; a link anywhere in the path that leads outside the root is refused
    # whether or not its target exists, so the answer never reveals what exists outside.
    real = Path(os.path.realpath(root / posix))
    if not real.is_relative_to(root):
        raise _denied(field, f"source {path!r} resolves outside the media root", "SOURCE_OUTSIDE_MEDIA_ROOT")
    if not real.exists():
        message = f"no file {path!r} below the media root"
        raise NotFoundError(message, reason="SOURCE_NOT_FOUND", violations=(FieldViolation(field, message),))
    if not real.is_file():
        raise InvalidArgumentError.for_field(field, f"expected a file, got a directory or device: {path!r}")
    return SourceSpec(index=index, kind=SourceKind.FILE, location=str(real))


def _resolve_url(field: str, index: int, url: str, policy: SourcePolicy) -> SourceSpec:
    shown = redact_url(url)  # messages reach clients and logs: never with credentials
    if not url or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidArgumentError.for_field(field, f"expected a URL without spaces or controls: {shown!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:  # its text may quote part of a password that holds a "/"
        raise InvalidArgumentError.for_field(field, f"malformed host or port in {shown!r}") from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise InvalidArgumentError.for_field(field, f"expected scheme://host/..., got {shown!r}")
    if scheme not in policy.allowed_url_schemes:
        allowed = ", ".join(policy.allowed_url_schemes) or "none"
        message = f"URL scheme {scheme!r} is not allowed (allowed: {allowed})"
        raise _denied(field, message, "URL_SCHEME_NOT_ALLOWED", scheme=scheme)
    if not host:
        raise InvalidArgumentError.for_field(field, f"expected a host in the URL, got {shown!r}")
    if not policy.allows_host(host):
        raise _denied(
            field, f"URL host {host!r} is not allowed on this server", "URL_HOST_NOT_ALLOWED", host=host
        )
    return SourceSpec(index=index, kind=SourceKind.URL, location=url)
