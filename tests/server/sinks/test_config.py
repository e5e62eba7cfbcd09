"""sink_config_from_mapping: one YAML `sinks:` entry in, a validated config out; errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from visionrpc.server.sinks import (
    Content,
    JsonLinesSinkConfig,
    MqttSinkConfig,
    RetryPolicy,
    SinkConfig,
    VideoSinkConfig,
    WebhookSinkConfig,
    sink_config_from_mapping,
)

WHERE = "pipelines.gate.sinks[0]"

# name: (entry, expected config)
VALID: dict[str, tuple[dict[str, object], SinkConfig]] = {
    "webhook-defaults": (
        {"type": "webhook", "url": "https://example.com/hook"},
        WebhookSinkConfig("webhook", "https://example.com/hook"),
    ),
    "webhook-everything": (
        {
            "type": "webhook",
            "name": "alerts",
            "url": "http://10.0.0.5:8080/in?k=v",
            "secret_env": "SINK_TEST_SECRET",
            "headers": {"Authorization": "Bearer t"},
            "timeout_s": 2,
            "max_attempts": 3,
            "backoff_s": 0.1,
            "max_backoff_s": 1.5,
            "content": "frames",
            "include_status": False,
            "queue_size": 10,
        },
        WebhookSinkConfig(
            "alerts",
            "http://10.0.0.5:8080/in?k=v",
            secret="s3cret",
            headers=(("Authorization", "Bearer t"),),
            timeout_s=2.0,
            retry=RetryPolicy(3, 0.1, 1.5),
            content=Content.FRAMES,
            include_status=False,
            queue_size=10,
        ),
    ),
    "mqtt-defaults": ({"type": "mqtt", "host": "broker"}, MqttSinkConfig("mqtt", "broker")),
    "mqtt-tls-default-port-and-password": (
        {
            "type": "mqtt",
            "host": "broker",
            "tls": True,
            "ca_file": "/etc/ca.pem",
            "username": "cam",
            "password_env": "SINK_TEST_SECRET",
            "qos": 2,
            "topic": "site/{pipeline}",
            "status_topic": "",
        },
        MqttSinkConfig(
            "mqtt",
            "broker",
            port=8883,
            tls=True,
            ca_file=Path("/etc/ca.pem"),
            username="cam",
            password="s3cret",
            qos=2,
            topic="site/{pipeline}",
            status_topic="",
        ),
    ),
    "jsonl": (
        {"type": "jsonl", "path": "logs/{pipeline}.jsonl", "max_bytes": 1000, "backups": 2},
        JsonLinesSinkConfig("jsonl", "logs/{pipeline}.jsonl", max_bytes=1000, backups=2),
    ),
    "video": (
        {"type": "video", "name": "rec", "path": "rec/{pipeline}-{start}.mp4", "fps": 10},
        VideoSinkConfig("rec", "rec/{pipeline}-{start}.mp4", fps=10.0),
    ),
}


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINK_TEST_SECRET", "s3cret")
    monkeypatch.delenv("SINK_TEST_UNSET", raising=False)


@pytest.mark.parametrize(("entry", "expected"), VALID.values(), ids=VALID.keys())
def test_valid_entries_parse(entry: dict[str, object], expected: SinkConfig) -> None:
    assert sink_config_from_mapping(entry, WHERE) == expected


def test_secrets_stay_out_of_repr() -> None:
    config = sink_config_from_mapping(VALID["webhook-everything"][0], WHERE)
    assert "s3cret" not in repr(config)
    config = sink_config_from_mapping(VALID["mqtt-tls-default-port-and-password"][0], WHERE)
    assert "s3cret" not in repr(config)


HOOK = {"type": "webhook", "url": "https://example.com/hook"}
# name: (entry, the start of the error message)
INVALID: dict[str, tuple[object, str]] = {
    "not-a-mapping": (["webhook"], f"{WHERE}: expected a mapping"),
    "no-type": ({"url": "https://x"}, f"{WHERE}.type: expected one of ['jsonl', 'mqtt', 'video', 'webhook']"),
    "unknown-type": ({"type": "kafka"}, f"{WHERE}.type: expected one of"),
    "misspelt-setting": ({**HOOK, "retires": 3}, f"{WHERE}.retires: unknown setting"),
    "ftp-url": ({"type": "webhook", "url": "ftp://x/y"}, f"{WHERE}.url: expected an http or https URL"),
    "no-url": ({"type": "webhook"}, f"{WHERE}.url: expected a non-empty string, got None"),
    "credentials-in-url": ({"type": "webhook", "url": "https://u:p@x/"}, f"{WHERE}.url: expected no user"),
    "bad-port": ({"type": "webhook", "url": "http://x:99999/"}, f"{WHERE}.url: expected a port"),
    "unset-env": ({**HOOK, "secret_env": "SINK_TEST_UNSET"}, f"{WHERE}.secret_env: expected environment"),
    "two-secrets": (
        {**HOOK, "secret": "a", "secret_env": "SINK_TEST_SECRET"},
        f"{WHERE}.secret_env: expected",
    ),
    "timeout-text": ({**HOOK, "timeout_s": "5s"}, f"{WHERE}.timeout_s: expected a number, got '5s'"),
    "timeout-zero": ({**HOOK, "timeout_s": 0}, f"{WHERE}.timeout_s: expected > 0, got 0.0"),
    "attempts-zero": ({**HOOK, "max_attempts": 0}, f"{WHERE}.max_attempts: expected >= 1, got 0"),
    "attempts-bool": ({**HOOK, "max_attempts": True}, f"{WHERE}.max_attempts: expected an integer"),
    "content": ({**HOOK, "content": "all"}, f"{WHERE}.content: expected one of ['events', 'frames']"),
    "header-newline": ({**HOOK, "headers": {"X-A": "1\r\nX-B: 2"}}, f"{WHERE}.headers: expected"),
    "queue-zero": ({**HOOK, "queue_size": 0}, f"{WHERE}.queue_size: expected >= 1, got 0"),
    "mqtt-qos": ({"type": "mqtt", "host": "b", "qos": 3}, f"{WHERE}.qos: expected 0, 1 or 2, got 3"),
    "mqtt-wildcard": (
        {"type": "mqtt", "host": "b", "topic": "a/#"},
        f"{WHERE}.topic: expected a topic without",
    ),
    "mqtt-placeholder": (
        {"type": "mqtt", "host": "b", "topic": "{site}/x"},
        f"{WHERE}.topic: expected placeholders",
    ),
    "mqtt-ca-without-tls": (
        {"type": "mqtt", "host": "b", "ca_file": "/ca"},
        f"{WHERE}.ca_file: expected tls",
    ),
    "mqtt-password-alone": (
        {"type": "mqtt", "host": "b", "password_env": "SINK_TEST_SECRET"},
        f"{WHERE}.password_env: expected a username",
    ),
    "jsonl-no-path": ({"type": "jsonl"}, f"{WHERE}.path: expected a non-empty string"),
    "jsonl-start-placeholder": (
        {"type": "jsonl", "path": "{start}.jsonl"},
        f"{WHERE}.path: expected placeholders",
    ),
    "video-codec": (
        {"type": "video", "path": "a.mp4", "codec": "h264x"},
        f"{WHERE}.codec: expected a FourCC",
    ),
    "video-fps": ({"type": "video", "path": "a.mp4", "fps": -1}, f"{WHERE}.fps: expected > 0, got -1.0"),
    "empty-name": ({**HOOK, "name": ""}, f"{WHERE}.name: expected a non-empty string"),
}


@pytest.mark.parametrize(("entry", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_entries_name_the_field(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        sink_config_from_mapping(entry, WHERE)
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (20, 30.0)]
)
def test_backoff_doubles_up_to_its_cap(attempt: int, delay: float) -> None:
    assert RetryPolicy(max_attempts=20, backoff_s=0.5, max_backoff_s=30.0).delay(attempt) == delay
