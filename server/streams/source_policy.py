"""What a stream request may read: the security boundary of the streaming side.

A request may name a file below the media root, a URL whose scheme and host the operator allowed, or a capture
device when devices are enabled; `resolve_source` turns exactly that into a `SourceSpec` and refuses the rest
before anything reaches a decoder (sources.SourceReader reads only what it returns).

Credentials in URLs (rtsp://user:pass@cam/...) are needed to connect, so SourceSpec keeps them, but every
message that reaches a client or a log shows the URL through `redact_url`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..config import ServerConfig
from ..errors import FieldViolation, InvalidArgumentError, NotFoundError, PermissionDeniedError
from .types import SourceKind, SourceSpec
from .url_policy import UrlPolicy, effective_port, is_public, normalise_host, redact_query

__all__ = ["SourcePolicy", "redact_url", "resolve_source", "shown_path"]


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """What requests may read. allowed_url_hosts: exact names, "*.example.com" suffixes, or "*" (any)."""

    media_root: Path
    allowed_url_schemes: tuple[str, ...]
    allowed_url_hosts: tuple[str, ...]
    enable_devices: bool
    allow_private_urls: bool = False

    @classmethod
    def from_config(cls, config: ServerConfig) -> SourcePolicy:
        return cls(
            media_root=config.media_root,
            allowed_url_schemes=tuple(s.lower() for s in config.allowed_url_schemes),
            allowed_url_hosts=tuple(h.lower() for h in config.allowed_url_hosts),
            enable_devices=config.enable_devices,
            allow_private_urls=config.allow_private_urls,
        )

    @property
    def urls(self) -> UrlPolicy:
        """The URL allow-list, also checked on every hop a source makes (url_preflight)."""
        return UrlPolicy.parse(self.allowed_url_schemes, self.allowed_url_hosts, self.allow_private_urls)


def redact_url(url: str) -> str:
    """Masks the user info and secret query values of a URL for logs and messages:
    rtsp://user:pw@cam/x?token=t -> rtsp://***@cam/x?token=***."""
    url = redact_query(url)
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


# Bounds of a requested path, far below the OS's (PATH_MAX 4096, NAME_MAX 255 bytes): a path is checked,
# walked and quoted in time and space linear in these, and never reaches the OS beyond them.
MAX_PATH_CHARS = 1024
MAX_PATH_PARTS = 64
MAX_NAME_BYTES = 255
# Symbolic links followed while resolving one path (the kernel's own limit is 40): loops end here.
MAX_SYMLINKS = 40
# How much of a refused path a message quotes.
SHOWN_PATH_CHARS = 48


def shown_path(path: str) -> str:
    """A path as messages quote it: its first characters, controls escaped, the rest elided."""
    head = path[:SHOWN_PATH_CHARS].encode("ascii", "backslashreplace").decode("ascii")
    return repr(head + ("\u2026" if len(path) > SHOWN_PATH_CHARS else ""))


def _invalid_path(field: str, message: str, reason: str = "INVALID_PATH") -> InvalidArgumentError:
    return InvalidArgumentError.for_field(field, message, reason=reason)


def _resolve_path(field: str, index: int, path: str, policy: SourcePolicy) -> SourceSpec:
    shown = shown_path(path)
    if len(path) > MAX_PATH_CHARS:
        raise _invalid_path(
            field, f"expected a path of at most {MAX_PATH_CHARS} characters, got {len(path)}", "PATH_TOO_LONG"
        )
    if not path or "\x00" in path:
        raise _invalid_path(field, "expected a non-empty path relative to the media root")
    # Judge the path both ways so "C:\\x" or "\\\\host\\share" are refused on POSIX hosts too.
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or path.startswith(("/", "\\")):
        raise _invalid_path(field, f"expected a path relative to the media root, got {shown}")
    if ".." in posix.parts or ".." in windows.parts:
        raise _invalid_path(field, f"expected a path without '..', got {shown}")
    if len(posix.parts) > MAX_PATH_PARTS:
        raise _invalid_path(
            field,
            f"expected at most {MAX_PATH_PARTS} path components, got {len(posix.parts)}",
            "PATH_TOO_LONG",
        )
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in posix.parts):
        raise _invalid_path(
            field, f"expected path components of at most {MAX_NAME_BYTES} bytes in {shown}", "PATH_TOO_LONG"
        )
    root = policy.media_root.resolve()
    try:
        real, mode = _walk_inside(root, posix.parts)
    except _OutsideRootError:
        raise _denied(
            field, f"source {shown} resolves outside the media root", "SOURCE_OUTSIDE_MEDIA_ROOT"
        ) from None
    except _SymlinkLoopError:
        raise _invalid_path(field, f"too many symbolic links resolving {shown}", "SYMLINK_LOOP") from None
    except (FileNotFoundError, NotADirectoryError):
        message = f"no file {shown} below the media root"
        raise NotFoundError(
            message, reason="SOURCE_NOT_FOUND", violations=(FieldViolation(field, message),)
        ) from None
    except OSError as exc:  # permissions, I/O errors, names the file system refuses: never INTERNAL
        message = f"cannot read {shown} below the media root: {os.strerror(exc.errno or errno.EIO)}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _denied(field, message, "SOURCE_NOT_READABLE") from None
        reason = "PATH_TOO_LONG" if exc.errno == errno.ENAMETOOLONG else "SOURCE_NOT_READABLE"
        raise _invalid_path(field, message, reason) from None
    if not stat.S_ISREG(mode):
        raise _invalid_path(field, f"expected a file, got a directory or device: {shown}", "NOT_A_FILE")
    return SourceSpec(index=index, kind=SourceKind.FILE, location=real)


class _OutsideRootError(Exception):
    """The resolution left the media root."""


class _SymlinkLoopError(Exception):
    """More than MAX_SYMLINKS links on the way."""


def _walk_inside(root: Path, parts: tuple[str, ...]) -> tuple[str, int]:
    """Resolves `parts` below `root` one component at a time, following links only while they stay inside.

    Unlike os.path.realpath, nothing outside the root is ever looked at (a link leading out is refused from
    its text), and the work is linear: one lstat per component, plus the components of at most MAX_SYMLINKS
    link targets. Raises _OutsideRootError, _SymlinkLoopError or the OSError of the component that failed.
    """
    pending = deque(parts)
    resolved: list[str] = []
    links = 0
    mode = os.stat(root).st_mode
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":  # only from a link's target: the request's own path has none
            if not resolved:
                raise _OutsideRootError
            resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        mode = os.lstat(candidate).st_mode
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise _SymlinkLoopError
        target = PurePosixPath(os.readlink(candidate))
        if target.is_absolute():
            if not target.is_relative_to(root):
                raise _OutsideRootError
            resolved = []
            target = target.relative_to(root)
        pending.extendleft(reversed(target.parts))
    if not resolved:
        mode = os.stat(root).st_mode  # a link back to the root itself
    return os.path.join(root, *resolved), mode


def _resolve_url(field: str, index: int, url: str, policy: SourcePolicy) -> SourceSpec:
    shown = repr(bounded_url(redact_url(url)))  # messages reach clients and logs: never with credentials
    if not url or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise InvalidArgumentError.for_field(field, f"expected a URL without spaces or controls: {shown}")
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgumentError.for_field(
            field,
            f"expected a URL of at most {MAX_URL_CHARS} characters, got {len(url)}",
            reason="URL_TOO_LONG",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = effective_port(parts)  # raises ValueError for a port that is not a number in range
    except ValueError:  # its text may quote part of a password that holds a "/"
        raise InvalidArgumentError.for_field(field, f"malformed host or port in {shown}") from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise InvalidArgumentError.for_field(field, f"expected scheme://host/..., got {shown}")
    if scheme not in policy.allowed_url_schemes:
        allowed = ", ".join(policy.allowed_url_schemes) or "none"
        message = f"URL scheme {scheme[:16]!r} is not allowed (allowed: {allowed})"
        raise _denied(field, message, "URL_SCHEME_NOT_ALLOWED", scheme=scheme[:16])
    if not host:
        raise InvalidArgumentError.for_field(field, f"expected a host in the URL, got {shown}")
    host = normalise_host(host)
    urls = policy.urls
    rule = urls.rule_for(host, port)
    if rule is None:
        raise _denied(
            field,
            f"URL host {host[:64]!r} port {port} is not allowed on this server",
            "URL_HOST_NOT_ALLOWED",
            host=host[:64],
            port=str(port),
        )
    if urls.needs_public_address(rule) and _is_ip(host) and not is_public(host):
        raise _denied(
            field,
            f"URL host {host!r} is a private, loopback or reserved address; only hosts named exactly in the "
            "allow-list may be",
            "URL_HOST_NOT_PUBLIC",
            host=host,
        )
    return SourceSpec(index=index, kind=SourceKind.URL, location=url, urls=urls)


MAX_URL_CHARS = 2048


def bounded_url(url: str) -> str:
    return url if len(url) <= 96 else url[:96] + "\u2026"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
