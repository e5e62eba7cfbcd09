"""Opens the sink a configuration describes."""

from __future__ import annotations

from ..analytics.types import StreamAnalytics
from .base import Sink
from .config import JsonLinesSinkConfig, MqttSinkConfig, SinkConfig, VideoSinkConfig, WebhookSinkConfig
from .jsonl import JsonLinesSink
from .video import VideoSink
from .webhook import WebhookSink

__all__ = ["open_sink"]


def open_sink(config: SinkConfig, *, analytics: StreamAnalytics | None = None) -> Sink:
    """Starts a sink: its worker thread (and for MQTT, its background connection) begin now.

    Args:
        config: one parsed entry of a pipeline's `sinks:` list.
        analytics: the pipeline's zones and lines, which the video sink draws.

    Never raises for an unreachable receiver or broker (deliveries fail and are counted instead).
    """
    if isinstance(config, WebhookSinkConfig):
        return WebhookSink(config)
    if isinstance(config, MqttSinkConfig):
        from .mqtt import MqttSink  # paho-mqtt is imported only by servers that publish to MQTT

        return MqttSink(config)
    if isinstance(config, JsonLinesSinkConfig):
        return JsonLinesSink(config)
    if isinstance(config, VideoSinkConfig):
        return VideoSink(config, analytics)
    raise TypeError(f"expected a sink configuration, got {type(config).__name__}")
