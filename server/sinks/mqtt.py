"""The MQTT sink: publishes the text sinks' JSON (encoding.py) to a broker with paho-mqtt 2.

Frames go to `topic`, status messages and the end to `status_topic` (both `visionrpc/{pipeline}/...` by
default). paho's own network thread connects and reconnects in the background (backoff from 1 s up to
the retry policy's cap); the sink's worker waits up to `timeout_s` for a connection, publishes, and for QoS 1
and 2 waits up to `timeout_s` for the broker's acknowledgement. A message not acknowledged in time is retried,
so delivery is at least once: a message the broker had taken may arrive twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..streams.types import FrameResult, StreamMessage
from .base import SinkStatus
from .config import MqttSinkConfig
from .encoding import encode_message
from .worker import DeliveryError, SinkWorker

__all__ = ["MqttSink"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Publication:
    topic: str
    payload: bytes


class MqttSink:
    kind = "mqtt"
    needs_pixels = False

    def __init__(self, config: MqttSinkConfig) -> None:
        self.name = config.name
        self._config = config
        self._broker = f"{config.host}:{config.port}"
        self._connected = threading.Event()
        self._client = self._make_client()
        self._worker: SinkWorker[_Publication] = SinkWorker(
            self.name,
            self.kind,
            deliver=self._publish,
            queue_size=config.queue_size,
            retry=config.retry,
            finish=self._disconnect,
        )
        # Asynchronous: paho's thread connects (and reconnects); an absent broker delays nothing here.
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self._client.loop_start()

    def offer(self, pipeline: str, message: StreamMessage) -> None:
        status = not isinstance(message, FrameResult)
        if status and not self._config.status_topic:
            return
        try:
            payload = encode_message(pipeline, message, content=self._config.content)
            topic = self._config.topic_for(pipeline, status=status)
        except Exception as exc:  # never raise into the pipeline
            logger.exception("MQTT sink %s cannot encode a message", self.name)
            self._worker.drop(f"cannot encode: {exc!r}")
            return
        if payload is not None:
            self._worker.put(_Publication(topic, payload))

    def status(self) -> SinkStatus:
        return self._worker.status()

    def close(self, timeout_s: float = 5.0) -> None:
        self._worker.close(timeout_s)

    def _make_client(self) -> mqtt.Client:
        config = self._config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.client_id)
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        if config.tls:
            client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None)
        client.connect_timeout = config.timeout_s
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, round(config.retry.max_backoff_s)))
        # paho keeps unacknowledged messages to resend after a reconnect; bound them as our own queue is.
        client.max_queued_messages_set(config.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            logger.warning(
                "MQTT sink %s: broker %s refused the connection: %s", self.name, self._broker, reason
            )
            return
        logger.info("MQTT sink %s connected to %s", self.name, self._broker)
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        self._connected.clear()
        if reason.is_failure:
            logger.warning("MQTT sink %s lost broker %s (%s); reconnecting", self.name, self._broker, reason)

    def _publish(self, publication: _Publication) -> None:
        timeout_s = self._config.timeout_s
        if not self._connected.wait(timeout_s):
            raise DeliveryError(f"not connected to MQTT broker {self._broker}")
        info = self._client.publish(publication.topic, publication.payload, qos=self._config.qos)
        try:
            info.wait_for_publish(timeout_s)
        except (ValueError, RuntimeError) as exc:  # paho: queue full, or no connection any more
            raise DeliveryError(f"publish to {self._broker}: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not info.is_published():
            raise DeliveryError(f"publish to {self._broker}: not acknowledged within {timeout_s:g} s")

    def _disconnect(self) -> None:
        # On the worker thread, after the queue is drained: loop_stop joins paho's thread, which may be in the
        # middle of a connection attempt (bounded by connect_timeout).
        self._client.disconnect()
        self._client.loop_stop()
