"""What a declared pipeline's sinks are told to do: one frozen dataclass per kind, and the parser of one entry
of a pipelines file's `sinks:` list (docs/sinks.md lists every setting).

    entry = {"type": "webhook", "url": "https://example.com/hook", "secret_env": "HOOK_SECRET"}
    sink_config_from_mapping(entry, "pipelines.gate.sinks[0]")

Errors name the bad field by its path in the file: `pipelines.gate.sinks[0].url: expected an http or https
URL, got 'ftp://x'`. Secrets named by environment variable (`secret_env`, `password_env`) are read here, once,
so a missing one stops the server at start rather than failing every delivery later.
"""

from __future__ import annotations

import enum
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "Content",
    "JsonLinesSinkConfig",
    "MqttSinkConfig",
    "RetryPolicy",
    "SinkConfig",
    "VideoSinkConfig",
    "WebhookSinkConfig",
    "sink_config_from_mapping",
]


class Content(enum.Enum):
    """Which frames a text sink sends (status messages aside)."""

    EVENTS = "events"  # frames that caused analytics events, with the events and the zone and line states
    FRAMES = "frames"  # every frame, with its detections as well


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff between the attempts at one message: backoff_s, backoff_s*2, ... capped."""

    max_attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected >= 1, got {self.max_attempts}")
        if not self.backoff_s >= 0:
            raise ValueError(f"backoff_s: expected >= 0, got {self.backoff_s}")
        if not self.max_backoff_s >= self.backoff_s:
            raise ValueError(
                f"max_backoff_s: expected >= backoff_s ({self.backoff_s}), got {self.max_backoff_s}"
            )

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** max(0, attempt - 1)))


def _check_common(name: str, queue_size: int) -> None:
    if not name:
        raise ValueError("name: expected a non-empty name")
    if queue_size < 1:
        raise ValueError(f"queue_size: expected >= 1, got {queue_size}")


def _check_positive(field_name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{field_name}: expected > 0, got {value}")


def _check_template(field_name: str, template: str, fields: frozenset[str]) -> None:
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{field_name}: expected a path template, got {template!r} ({exc})") from None
    unknown = used - fields
    if unknown:
        raise ValueError(
            f"{field_name}: expected placeholders among {sorted(fields)}, got {{{sorted(unknown)[0]}}}"
        )


@dataclass(frozen=True, slots=True)
class WebhookSinkConfig:
    name: str
    url: str
    secret: str = field(default="", repr=False)  # HMAC-SHA256 key; empty: unsigned
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 5.0
    retry: RetryPolicy = RetryPolicy()
    content: Content = Content.EVENTS
    include_status: bool = True
    queue_size: int = 1000

    def __post_init__(self) -> None:
        _check_common(self.name, self.queue_size)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected an http or https URL with a host, got {self.url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url: expected no user:password in the URL (send credentials in headers)")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ValueError(f"url: expected a port in 1..65535, got {self.url!r}") from None
        _check_positive("timeout_s", self.timeout_s)
        for header, value in self.headers:
            if not header or any(c in header + value for c in "\r\n") or ":" in header:
                raise ValueError(f"headers: expected header names and values on one line, got {header!r}")


@dataclass(frozen=True, slots=True)
class MqttSinkConfig:
    name: str
    host: str
    port: int = 1883
    topic: str = "visionrpc/{pipeline}/events"
    status_topic: str = "visionrpc/{pipeline}/status"  # empty: status messages are not published
    qos: int = 1
    client_id: str = ""  # empty: the client library picks a random one
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    ca_file: Path | None = None  # TLS: the broker's CA; None: the system's
    keepalive_s: int = 60
    timeout_s: float = 5.0  # to connect, and for a publish to be acknowledged
    retry: RetryPolicy = RetryPolicy()
    content: Content = Content.EVENTS
    queue_size: int = 1000

    def __post_init__(self) -> None:
        _check_common(self.name, self.queue_size)
        if not self.host:
            raise ValueError("host: expected a broker host name or address")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1..65535, got {self.port}")
        for field_name, topic in (("topic", self.topic), ("status_topic", self.status_topic)):
            _check_template(field_name, topic, frozenset({"pipeline"}))
            if any(c in topic for c in "+#"):
                raise ValueError(f"{field_name}: expected a topic without wildcards (+, #), got {topic!r}")
        if not self.topic:
            raise ValueError("topic: expected a topic")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos: expected 0, 1 or 2, got {self.qos}")
        if self.password and not self.username:
            raise ValueError("password_env: expected a username with the password")
        if self.ca_file is not None and not self.tls:
            raise ValueError("ca_file: expected tls: true with a CA file")
        if self.keepalive_s < 1:
            raise ValueError(f"keepalive_s: expected >= 1, got {self.keepalive_s}")
        _check_positive("timeout_s", self.timeout_s)

    def topic_for(self, pipeline: str, *, status: bool = False) -> str:
        return (self.status_topic if status else self.topic).format(pipeline=pipeline)


@dataclass(frozen=True, slots=True)
class JsonLinesSinkConfig:
    name: str
    path: str  # template: {pipeline}
    content: Content = Content.EVENTS
    include_status: bool = True
    max_bytes: int = 0  # rotate when a file would grow past it; 0: never
    backups: int = 5  # rotated files kept: path.1 (newest) .. path.N
    queue_size: int = 1000

    def __post_init__(self) -> None:
        _check_common(self.name, self.queue_size)
        if not self.path:
            raise ValueError("path: expected a file path")
        _check_template("path", self.path, frozenset({"pipeline"}))
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes: expected >= 0, got {self.max_bytes}")
        if self.backups < 0:
            raise ValueError(f"backups: expected >= 0, got {self.backups}")

    def path_for(self, pipeline: str) -> Path:
        return Path(self.path.format(pipeline=pipeline))


@dataclass(frozen=True, slots=True)
class VideoSinkConfig:
    name: str
    path: str  # template: {pipeline}, {start} (the run's start, UTC, 20261206T221000Z)
    fps: float | None = None  # None: the source's
    source_index: int = 0  # the source recorded (a pipeline may read several)
    codec: str = "mp4v"  # FourCC
    # Raw frames are large (a 1080p frame is 6 MB): a short queue bounds the memory a stalled disk can take.
    queue_size: int = 64

    def __post_init__(self) -> None:
        _check_common(self.name, self.queue_size)
        if not self.path:
            raise ValueError("path: expected a file path")
        _check_template("path", self.path, frozenset({"pipeline", "start"}))
        if self.fps is not None:
            _check_positive("fps", self.fps)
        if self.source_index < 0:
            raise ValueError(f"source_index: expected >= 0, got {self.source_index}")
        if len(self.codec) != 4:
            raise ValueError(f"codec: expected a FourCC of 4 characters, got {self.codec!r}")

    def path_for(self, pipeline: str, start: str) -> Path:
        return Path(self.path.format(pipeline=pipeline, start=start))


SinkConfig = WebhookSinkConfig | MqttSinkConfig | JsonLinesSinkConfig | VideoSinkConfig


def sink_config_from_mapping(mapping: Mapping[str, object], where: str) -> SinkConfig:
    """Parses one entry of a pipelines file's `sinks:` list.

    Args:
        mapping: the entry as loaded from YAML: `type` (webhook, mqtt, jsonl, video), an optional `name`
            (default: the type) and the kind's settings.
        where: the entry's path in the file, prefixed to error messages (`pipelines.gate.sinks[0]`).

    Raises:
        ValueError: an unknown type or setting, a missing or malformed one, or an unset environment variable;
            the message starts with the path of the bad field.
    """
    reader = _Reader(mapping, where)
    kind = reader.text_or_empty("type", "")
    parse = _PARSERS.get(kind)
    if parse is None:
        raise ValueError(f"{where}.type: expected one of {sorted(_PARSERS)}, got {mapping.get('type')!r}")
    name = reader.text("name", kind)
    try:
        config = parse(reader, name)
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        # A dataclass's own check names its field; the reader names the entry.
        raise ValueError(f"{where}.{exc}") from None
    reader.refuse_unread()
    return config


class _Reader:
    """Typed reads of one mapping that remember what was read, so unknown (misspelt) keys are refused."""

    def __init__(self, mapping: Mapping[str, object], where: str) -> None:
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: expected a mapping of settings, got {type(mapping).__name__}")
        self._mapping = mapping
        self._where = where
        self._read: set[str] = set()

    def _get(self, key: str) -> object:
        self._read.add(key)
        return self._mapping.get(key)

    def _fail(self, key: str, expected: str, value: object) -> ValueError:
        return ValueError(f"{self._where}.{key}: expected {expected}, got {value!r}")

    def text(self, key: str, default: str | None) -> str:
        value = self._get(key)
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string", value)
        return value

    def text_or_empty(self, key: str, default: str) -> str:
        """A string where "" is a deliberate value (e.g. "no status topic")."""
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def integer(self, key: str, default: int) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        return value

    def number(self, key: str, default: float | None) -> float | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number", value)
        return float(value)

    def seconds(self, key: str, default: float) -> float:
        value = self.number(key, default)
        assert value is not None  # a default was given
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def content(self) -> Content:
        value = self.text("content", Content.EVENTS.value)
        try:
            return Content(value)
        except ValueError:
            raise self._fail("content", f"one of {[c.value for c in Content]}", value) from None

    def headers(self) -> tuple[tuple[str, str], ...]:
        value = self._get("headers")
        if value is None:
            return ()
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self._fail("headers", "a mapping of header names to strings", value)
        return tuple((str(k), str(v)) for k, v in value.items())

    def env(self, key: str) -> str:
        """The value of the environment variable named by `key`; "" when the key is absent."""
        variable = self._get(key)
        if variable is None:
            return ""
        if not isinstance(variable, str) or not variable:
            raise self._fail(key, "the name of an environment variable", variable)
        value = os.environ.get(variable, "")
        if not value:
            raise ValueError(f"{self._where}.{key}: expected environment variable {variable} to be set")
        return value

    def retry(self) -> RetryPolicy:
        default = RetryPolicy()
        return RetryPolicy(
            max_attempts=self.integer("max_attempts", default.max_attempts),
            backoff_s=self.seconds("backoff_s", default.backoff_s),
            max_backoff_s=self.seconds("max_backoff_s", default.max_backoff_s),
        )

    def refuse_unread(self) -> None:
        unknown = sorted(str(key) for key in self._mapping if key not in self._read)
        if unknown:
            raise ValueError(
                f"{self._where}.{unknown[0]}: unknown setting; expected one of {sorted(self._read)}"
            )


def _webhook(reader: _Reader, name: str) -> WebhookSinkConfig:
    inline = reader.text("secret", "")
    from_env = reader.env("secret_env")
    if inline and from_env:
        raise ValueError("secret_env: expected either secret or secret_env, not both")
    return WebhookSinkConfig(
        name=name,
        url=reader.text("url", None),
        secret=inline or from_env,
        headers=reader.headers(),
        timeout_s=reader.seconds("timeout_s", 5.0),
        retry=reader.retry(),
        content=reader.content(),
        include_status=reader.flag("include_status", True),
        queue_size=reader.integer("queue_size", 1000),
    )


def _mqtt(reader: _Reader, name: str) -> MqttSinkConfig:
    tls = reader.flag("tls", False)
    ca_file = reader.text("ca_file", "")
    return MqttSinkConfig(
        name=name,
        host=reader.text("host", None),
        port=reader.integer("port", 8883 if tls else 1883),
        topic=reader.text("topic", "visionrpc/{pipeline}/events"),
        status_topic=reader.text_or_empty("status_topic", "visionrpc/{pipeline}/status"),
        qos=reader.integer("qos", 1),
        client_id=reader.text("client_id", ""),
        username=reader.text("username", ""),
        password=reader.env("password_env"),
        tls=tls,
        ca_file=Path(ca_file) if ca_file else None,
        keepalive_s=reader.integer("keepalive_s", 60),
        timeout_s=reader.seconds("timeout_s", 5.0),
        retry=reader.retry(),
        content=reader.content(),
        queue_size=reader.integer("queue_size", 1000),
    )


def _jsonl(reader: _Reader, name: str) -> JsonLinesSinkConfig:
    return JsonLinesSinkConfig(
        name=name,
        path=reader.text("path", None),
        content=reader.content(),
        include_status=reader.flag("include_status", True),
        max_bytes=reader.integer("max_bytes", 0),
        backups=reader.integer("backups", 5),
        queue_size=reader.integer("queue_size", 1000),
    )


def _video(reader: _Reader, name: str) -> VideoSinkConfig:
    return VideoSinkConfig(
        name=name,
        path=reader.text("path", None),
        fps=reader.number("fps", None),
        source_index=reader.integer("source_index", 0),
        codec=reader.text("codec", "mp4v"),
        queue_size=reader.integer("queue_size", 64),
    )


_PARSERS: dict[str, Callable[[_Reader, str], SinkConfig]] = {
    "webhook": _webhook,
    "mqtt": _mqtt,
    "jsonl": _jsonl,
    "video": _video,
}
