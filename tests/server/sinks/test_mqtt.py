"""The MQTT sink against a real mosquitto broker on a free loopback port, with a real paho subscriber."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from paho.mqtt.enums import CallbackAPIVersion
from streaming import free_port
from visionrpc.server.analytics.types import AnalyticsEvent
from visionrpc.server.sinks import MqttSinkConfig, RetryPolicy, Sink, open_sink
from visionrpc.server.streams.types import FrameResult, StreamMessage

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class Broker:
    """mosquitto as a subprocess: `listener <port> 127.0.0.1`, anonymous, no persistence."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert Path(MOSQUITTO).exists(), "mosquitto is missing: run scripts/install-test-deps"
        conf = self.directory / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_for(self._accepts) or self.process.poll() is not None:
            self.stop()
            pytest.fail(
                f"mosquitto did not listen on {self.port}: {(self.directory / 'mosquitto.log').read_text()}"
            )

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True  # it exited: start() says so
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@contextlib.contextmanager
def running_broker(directory: Path, port: int | None = None) -> Iterator[Broker]:
    broker = Broker(port or free_port(), directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Subscriber:
    """A real paho client subscribed to visionrpc/#, recording (topic, JSON) in arrival order."""

    port: int
    received: list[tuple[str, Any]] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self) -> list[tuple[str, Any]]:
        with self.lock:
            return list(self.received)


@contextlib.contextmanager
def subscribed(port: int) -> Iterator[Subscriber]:
    subscriber = Subscriber(port)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber")

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        client.subscribe("visionrpc/#", qos=1)

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
        subscriber.subscribed.set()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with subscriber.lock:
            subscriber.received.append((message.topic, json.loads(message.payload)))

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscriber.subscribed.wait(10), "the test subscriber is subscribed"
        yield subscriber
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def opened(config: MqttSinkConfig) -> Iterator[Sink]:
    sink = open_sink(config)
    try:
        yield sink
    finally:
        sink.close(timeout_s=5.0)


def events_of(frame: FrameResult) -> tuple[AnalyticsEvent, ...]:
    return frame.analytics.events if frame.analytics else ()


def with_events(messages: tuple[StreamMessage, ...]) -> list[FrameResult]:
    return [m for m in messages if isinstance(m, FrameResult) and m.analytics and m.analytics.events]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_events_and_statuses_are_published_in_order(
    messages: tuple[StreamMessage, ...], tmp_path: Path, qos: int
) -> None:
    frames = with_events(messages)
    with running_broker(tmp_path) as broker, subscribed(broker.port) as subscriber:
        config = MqttSinkConfig("bus", "127.0.0.1", port=broker.port, qos=qos, client_id="visionrpc-test")
        with opened(config) as sink:
            for message in messages:
                sink.offer("gate", message)
            expected = len(frames) + 3  # started, ended, the end
            assert wait_for(lambda: len(subscriber.messages()) == expected), sink.status()
            assert wait_for(lambda: sink.status().delivered == expected), sink.status()
            status = sink.status()
    assert (status.failed, status.dropped) == (0, 0)
    received = subscriber.messages()
    topics = [topic for topic, _ in received]
    status_topic, events_topic = "visionrpc/gate/status", "visionrpc/gate/events"
    assert topics == [status_topic] + [events_topic] * len(frames) + [status_topic] * 2
    got = [(p["sequence_number"], e["kind"], e["track_id"]) for _, p in received[1:-2] for e in p["events"]]
    assert got == [(f.sequence_number, e.kind.value, e.track_id) for f in frames for e in events_of(f)]


def test_a_broker_that_comes_up_later_gets_the_messages(
    messages: tuple[StreamMessage, ...], tmp_path: Path
) -> None:
    port = free_port()
    frames = with_events(messages)[:3]
    # Nothing listens yet: the sink retries in the background while offer() returns at once.
    config = MqttSinkConfig(
        "bus", "127.0.0.1", port=port, timeout_s=1.0, status_topic="", retry=RetryPolicy(100, 0.2, 1.0)
    )
    with opened(config) as sink:
        for frame in frames:
            sink.offer("gate", frame)
        assert wait_for(lambda: sink.status().failed >= 1)
        assert "not connected to MQTT broker 127.0.0.1:" in sink.status().last_error
        with running_broker(tmp_path, port) as broker, subscribed(broker.port) as subscriber:
            assert wait_for(lambda: len(subscriber.messages()) == len(frames), timeout_s=30.0), sink.status()
            assert [p["sequence_number"] for _, p in subscriber.messages()] == [
                f.sequence_number for f in frames
            ]
            assert sink.status().delivered == len(frames)


def test_close_is_bounded_without_a_broker(messages: tuple[StreamMessage, ...]) -> None:
    config = MqttSinkConfig(
        "bus", "127.0.0.1", port=free_port(), timeout_s=0.5, retry=RetryPolicy(50, 0.1, 0.5)
    )
    sink = open_sink(config)
    for message in messages:
        sink.offer("gate", message)
    closer = threading.Thread(target=sink.close, kwargs={"timeout_s": 1.0}, daemon=True)
    closer.start()
    closer.join(15.0)  # a generous bound on close(timeout_s=1.0), not a timing
    assert not closer.is_alive()
    assert wait_for(lambda: sink.status().queued == 0)
    status = sink.status()
    assert status.delivered == 0 and status.dropped == len(with_events(messages)) + 3
