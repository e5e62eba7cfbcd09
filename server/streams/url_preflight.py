"""Checking every hop of a URL source against the allow-list before FFmpeg connects (SSRF).

Only the requested URL passes `resolve_source`; FFmpeg then follows HTTP redirects and HLS playlist entries
to any host, and resolves names itself. OpenCV gives no per-open FFmpeg options or I/O callback, and FFmpeg
has no option that limits the hosts of redirects or segments (`protocol_whitelist` limits protocols only), so
before each connection (every reconnect included) the reader calls `check_hops`, which:

- resolves the host and refuses private, loopback and link-local addresses for wildcard-allowed hosts;
- for http(s), requests the URL itself without following redirects: a redirect is followed here (at most
  `MAX_REDIRECTS`) only to hosts the allow-list admits, and FFmpeg is given the final URL;
- reads the first `MAX_PLAYLIST_BYTES` of the body and, for an HLS playlist (`#EXTM3U`), checks every URI
  in it (variant playlists too, `MAX_PLAYLISTS` in all): each must be http(s) on an allowed host.

What this cannot hold (docs/security.md): a server that answers this check differently from FFmpeg's own
request a moment later, and a live HLS playlist that starts listing other hosts after the check.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import urllib.parse
from dataclasses import dataclass

from ..errors import PermissionDeniedError
from .url_policy import UrlPolicy, effective_port, is_public, normalise_host

__all__ = ["HopRefusedError", "check_hops"]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_PLAYLISTS = 8
MAX_PLAYLIST_BYTES = 256 * 1024


class HopRefusedError(PermissionDeniedError):
    """A hop of the source (a redirect, a playlist entry, an address) is not allowed."""


@dataclass(frozen=True, slots=True)
class _Hop:
    url: str
    parts: urllib.parse.SplitResult
    host: str
    port: int


def check_hops(url: str, policy: UrlPolicy, *, timeout_s: float) -> str:
    """Checks `url` and where it leads; returns the URL FFmpeg should open (after allowed redirects).

    Raises:
        HopRefusedError: URL_REDIRECT_NOT_ALLOWED, URL_PLAYLIST_HOST_NOT_ALLOWED or URL_HOST_NOT_PUBLIC.
        OSError: the check could not connect (treated like a failed open by the reader).
    """
    hop = _check(url, policy, "URL_HOST_NOT_ALLOWED")
    if hop.parts.scheme.lower() not in ("http", "https"):
        return url
    final, body = _follow(hop, policy, timeout_s)
    if body.lstrip().startswith(b"#EXTM3U"):
        _check_playlist(final, body, policy, timeout_s)
    return final


def _check(url: str, policy: UrlPolicy, reason: str) -> _Hop:
    parts = urllib.parse.urlsplit(url)
    host = normalise_host(parts.hostname or "")
    try:
        port = effective_port(parts)
    except ValueError:
        raise HopRefusedError(f"malformed port in a hop of the source ({reason})", reason=reason) from None
    rule = policy.rule_for(host, port) if parts.scheme.lower() in policy.schemes else None
    if rule is None:
        raise HopRefusedError(
            f"the source leads to host {host[:64]!r} port {port}, which is not allowed on this server",
            reason=reason,
            metadata={"host": host[:64], "port": str(port)},
        )
    if policy.needs_public_address(rule):
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        private = sorted(a for a in addresses if not is_public(str(a)))
        if private:
            raise HopRefusedError(
                f"host {host[:64]!r} resolves to a private, loopback or reserved address ({private[0]}); "
                "only hosts named exactly in the allow-list may",
                reason="URL_HOST_NOT_PUBLIC",
                metadata={"host": host[:64]},
            )
    return _Hop(url, parts, host, port)


def _follow(hop: _Hop, policy: UrlPolicy, timeout_s: float) -> tuple[str, bytes]:
    for _ in range(MAX_REDIRECTS + 1):
        status, location, body = _get(hop, timeout_s)
        if status not in (301, 302, 303, 307, 308) or not location:
            return hop.url, body
        target = urllib.parse.urljoin(hop.url, location)
        hop = _check(target, policy, "URL_REDIRECT_NOT_ALLOWED")
    raise HopRefusedError(f"more than {MAX_REDIRECTS} redirects", reason="URL_REDIRECT_NOT_ALLOWED")


def _check_playlist(url: str, body: bytes, policy: UrlPolicy, timeout_s: float) -> None:
    pending, seen = [(url, body)], 0
    while pending:
        playlist_url, text = pending.pop()
        seen += 1
        for line in text.decode("utf-8", "replace").splitlines():
            entries = [line.strip()] if line.strip() and not line.startswith("#") else _tag_uris(line)
            for entry in entries:
                target = urllib.parse.urljoin(playlist_url, entry)
                if urllib.parse.urlsplit(target).scheme.lower() not in ("http", "https"):
                    raise HopRefusedError(
                        "the playlist lists a source that is not http(s)",
                        reason="URL_PLAYLIST_HOST_NOT_ALLOWED",
                    )
                hop = _check(target, policy, "URL_PLAYLIST_HOST_NOT_ALLOWED")
                if target.split("?", 1)[0].lower().endswith(".m3u8") and seen + len(pending) < MAX_PLAYLISTS:
                    final, nested = _follow(hop, policy, timeout_s)
                    if nested.lstrip().startswith(b"#EXTM3U"):
                        pending.append((final, nested))


def _tag_uris(line: str) -> list[str]:
    # URI="..." attributes of #EXT-X-MEDIA, #EXT-X-KEY, #EXT-X-MAP, #EXT-X-I-FRAME-STREAM-INF, ...
    found, rest = [], line
    while 'URI="' in rest:
        rest = rest.split('URI="', 1)[1]
        value, _, rest = rest.partition('"')
        found.append(value)
    return found


def _get(hop: _Hop, timeout_s: float) -> tuple[int, str, bytes]:
    connection: http.client.HTTPConnection
    if hop.parts.scheme.lower() == "https":
        connection = http.client.HTTPSConnection(
            hop.parts.hostname or "", hop.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(hop.parts.hostname or "", hop.port, timeout=timeout_s)
    try:
        target = urllib.parse.urlunsplit(("", "", hop.parts.path or "/", hop.parts.query, ""))
        connection.request("GET", target, headers={"Range": f"bytes=0-{MAX_PLAYLIST_BYTES - 1}"})
        response = connection.getresponse()
        body = response.read(MAX_PLAYLIST_BYTES)
        return response.status, response.getheader("Location") or "", body
    finally:
        connection.close()
