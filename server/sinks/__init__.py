"""Sinks of declared pipelines: webhook, MQTT, JSON lines and annotated video (docs/sinks.md).

    config = sink_config_from_mapping(entry, "pipelines.gate.sinks[0]")   # one YAML `sinks:` entry
    sink = open_sink(config, analytics=options.analytics)
    sink.offer("gate", message)       # every StreamMessage, in order; never blocks, never raises
    sink.status()                     # SinkStatus: delivered, failed, dropped, queued, last error
    sink.close(timeout_s=5.0)         # bounded

Each sink owns a bounded queue and one delivery thread (worker.py), so a slow, failing or hanging receiver
loses its own oldest messages and holds nothing else up.
"""

from .base import Sink, SinkStatus
from .config import (
    Content,
    JsonLinesSinkConfig,
    MqttSinkConfig,
    RetryPolicy,
    SinkConfig,
    VideoSinkConfig,
    WebhookSinkConfig,
    sink_config_from_mapping,
)
from .factory import open_sink

__all__ = [
    "Content",
    "JsonLinesSinkConfig",
    "MqttSinkConfig",
    "RetryPolicy",
    "Sink",
    "SinkConfig",
    "SinkStatus",
    "VideoSinkConfig",
    "WebhookSinkConfig",
    "open_sink",
    "sink_config_from_mapping",
]
