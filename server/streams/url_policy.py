"""Which network locations a stream may reach: the allow-list over scheme, host and port, and what counts as
the same host.

Hosts are compared after normalisation: lower case, no trailing dot, and IP literals in their canonical form,
so `127.1`, `0x7f.0.0.1`, `2130706433` and `[::ffff:127.0.0.1]` are all `127.0.0.1` (FFmpeg connects to what
the C library's resolver makes of them, which accepts every one of those spellings).

Entries of `--allowed-url-hosts`: `host` or `host:port` (`[v6]:port`), `*.suffix` for any name under a
domain, or `*` for any host. A wildcard match never reaches a private, loopback, link-local or otherwise
non-public address (checked on IP literals here, and on every address a name resolves to before each
connection, `url_preflight.py`) unless `--allow-private-urls`; an exact entry is trusted as the operator named
it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "HostRule", "UrlPolicy", "normalise_host", "redact_query"]

DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}
# Query parameters whose values are secrets wherever they appear (redacted in logs and messages).
_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:token|access_token|auth|authorization|key|api_key|apikey|sig|signature|secret|password|"
    r"passwd|pwd|session|sessionid|credential|x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&#;]*"
)
_IPV4_LEGACY = re.compile(r"[0-9a-fx.]+")


def normalise_host(host: str) -> str:
    """The canonical spelling of a host: IP literals in standard form, names lower case, no final dot."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if _IPV4_LEGACY.fullmatch(host):
            try:  # inet_aton reads what resolvers read: 127.1, 0x7f.1, 017700000001, 2130706433
                return str(ipaddress.IPv4Address(socket.inet_aton(host)))
            except OSError:
                return host
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def is_public(address: str) -> bool:
    """Whether an IP address is a public unicast one (not private, loopback, link-local, multicast, ...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def redact_query(url: str) -> str:
    """The URL with the values of secret-looking query parameters (token=, sig=, ...) replaced by ***."""
    return _SECRET_PARAMS.sub(r"\1***", url)


@dataclass(frozen=True, slots=True)
class HostRule:
    """One allow-list entry: an exact host, a `*.suffix`, or `*`; with a port or any port (None)."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> HostRule:
        entry = entry.strip().lower()
        port: int | None = None
        if entry.startswith("["):  # [v6] or [v6]:port
            end = entry.find("]")
            host, rest = entry[1:end], entry[end + 1 :]
            if rest.startswith(":"):
                port = int(rest[1:])
        elif entry.count(":") == 1:
            host, _, port_text = entry.partition(":")
            port = int(port_text)
        else:
            host = entry
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"expected a port in [1, 65535] in allowed host {entry!r}")
        return cls(host if host.startswith("*") else normalise_host(host), port)

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*")

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return self.host == host


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Schemes and host rules a stream may reach, for the request's URL and every hop after it."""

    schemes: tuple[str, ...]
    rules: tuple[HostRule, ...]
    allow_private: bool = False

    @classmethod
    def parse(
        cls, schemes: tuple[str, ...], hosts: tuple[str, ...], allow_private: bool = False
    ) -> UrlPolicy:
        return cls(tuple(s.lower() for s in schemes), tuple(HostRule.parse(h) for h in hosts), allow_private)

    def rule_for(self, host: str, port: int) -> HostRule | None:
        """The first rule admitting (normalised host, port), exact rules before wildcards; None: refused."""
        matching = [rule for rule in self.rules if rule.matches(host, port)]
        matching.sort(key=lambda rule: rule.wildcard)
        return matching[0] if matching else None

    def needs_public_address(self, rule: HostRule) -> bool:
        """Whether addresses reached through `rule` must be public (wildcards, unless private is allowed)."""
        return rule.wildcard and not self.allow_private


def effective_port(parts: urllib.parse.SplitResult) -> int:
    """The port a URL connects to: its own, or its scheme's default (0 when the scheme has none)."""
    return parts.port if parts.port is not None else DEFAULT_PORTS.get(parts.scheme.lower(), 0)
