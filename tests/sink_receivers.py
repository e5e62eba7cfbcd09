"""Real receivers of sink deliveries on loopback, for suites that run declared pipelines end to end: an HTTP
server that answers or hangs, a real mosquitto broker, and an MQTT subscriber.

    with running_receiver() as hook:            # hook.url; hook.bodies(): the JSON bodies received, in order
    with running_receiver(500, 200) as hook:    # answers each POST in turn (the last answer repeats)
    with running_receiver(hang=True) as hook:   # reads each request and never answers (until the test ends)
    with running_broker(tmp_path) as broker, MqttSubscriber(broker.port, "visionrpc/#") as mqtt:
        mqtt.payloads()                         # the JSON payloads received, in order
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from paho.mqtt.enums import CallbackAPIVersion
from streaming import free_port

__all__ = [
    "MOSQUITTO",
    "Broker",
    "MqttSubscriber",
    "Received",
    "Receiver",
    "running_broker",
    "running_receiver",
]

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on loopback. `answers`: the status of each POST in turn (the last one repeats);
    "hang" reads the request and never answers (until the test ends)."""

    answers: tuple[int | str, ...] = (200,)
    received: list[Received] = field(default_factory=list)  # answered 2xx
    attempts: int = 0
    port: int = 0
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/visionrpc?token=abc"

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies answered 2xx, in order."""
        with self.lock:
            return [json.loads(r.body) for r in self.received]

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        with self.lock:
            answer = self.answers[min(self.attempts, len(self.answers) - 1)]
            self.attempts += 1
            if answer == 200:
                self.received.append(Received(handler.path, dict(handler.headers.items()), body))
        if answer == "hang":
            self.released.wait()
            return
        handler.send_response(int(answer))
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@contextlib.contextmanager
def running_receiver(*answers: int | str, hang: bool = False) -> Iterator[Receiver]:
    receiver = Receiver(("hang",) if hang else (answers or (200,)))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="test-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Broker:
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_broker(directory: Path) -> Iterator[Broker]:
    """A real mosquitto on a free loopback port (scripts/install-test-deps installs it)."""
    assert Path(MOSQUITTO).exists(), "mosquitto is missing: run scripts/install-test-deps"
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log_path = directory / "mosquitto.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)

    def accepts() -> bool:
        if process.poll() is not None:
            return True
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        if not wait_for(accepts, 10.0) or process.poll() is not None:
            pytest.fail(f"mosquitto did not listen on {port}: {log_path.read_text()}")
        yield Broker(port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class MqttSubscriber:
    """A paho client subscribed to `topic` on the loopback broker, recording payloads in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self._lock = threading.Lock()
        self._payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_connect = self._on_connect
        self._topic = topic
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._port = port

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._payloads.append(bytes(message.payload))

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(payload) for payload in self._payloads]

    def __enter__(self) -> MqttSubscriber:
        self._client.connect("127.0.0.1", self._port)
        self._client.loop_start()
        assert self._subscribed.wait(10.0), "subscribed to the broker"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()
