"""The webhook sink against real HTTP receivers on loopback: one that answers, one that fails first, one that
refuses the message, one that is not there, one that never answers."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator

import pytest
from conftest import wait_for
from sink_receivers import running_receiver
from streaming import free_port
from visionrpc.server.sinks import RetryPolicy, Sink, WebhookSinkConfig, open_sink
from visionrpc.server.sinks.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from visionrpc.server.streams.types import FrameResult, StreamMessage

SECRET = "correct horse battery staple"
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_s=0.01, max_backoff_s=0.05)


@contextlib.contextmanager
def opened(config: WebhookSinkConfig) -> Iterator[Sink]:
    sink = open_sink(config)
    try:
        yield sink
    finally:
        sink.close(timeout_s=2.0)


def offer_all(sink: Sink, messages: tuple[StreamMessage, ...]) -> None:
    for message in messages:
        sink.offer("gate", message)


def test_every_event_arrives_once_in_order_signed(messages: tuple[StreamMessage, ...]) -> None:
    expected_frames = [
        m for m in messages if isinstance(m, FrameResult) and m.analytics and m.analytics.events
    ]
    expected = 2 + len(expected_frames) + 1  # started, the frames with events, source ended, the end
    with running_receiver() as receiver:
        config = WebhookSinkConfig("hook", receiver.url, secret=SECRET)
        with opened(config) as sink:
            offer_all(sink, messages)
            assert wait_for(lambda: sink.status().delivered == expected), sink.status()
            status = sink.status()
        assert (status.failed, status.dropped, status.queued, status.last_error) == (0, 0, 0, "")
        assert receiver.attempts == expected
        bodies = [json.loads(r.body) for r in receiver.received]
    assert [b["type"] for b in bodies] == ["status"] + ["frame"] * len(expected_frames) + ["status", "end"]
    assert [b["event"] for b in bodies if b["type"] == "status"] == ["started", "ended"]
    got = [
        (b["sequence_number"], e["kind"], e["name"], e["track_id"]) for b in bodies[1:-2] for e in b["events"]
    ]
    assert got == [
        (f.sequence_number, e.kind.value, e.name, e.track_id)
        for f in expected_frames
        for e in (f.analytics.events if f.analytics else ())
    ]
    assert {r.path for r in receiver.received} == {"/hooks/visionrpc?token=abc"}
    assert len({r.headers[DELIVERY_HEADER] for r in receiver.received}) == expected
    for r in receiver.received:
        # What a receiver does (docs/sinks.md): recompute the HMAC over "<timestamp>.<body>".
        timestamp = r.headers[TIMESTAMP_HEADER]
        digest = hmac.new(SECRET.encode(), timestamp.encode() + b"." + r.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r.headers[SIGNATURE_HEADER], f"sha256={digest}")
        assert r.headers["Content-Type"] == "application/json"


def test_unsigned_without_a_secret(messages: tuple[StreamMessage, ...]) -> None:
    with running_receiver() as receiver, opened(WebhookSinkConfig("hook", receiver.url)) as sink:
        sink.offer("gate", messages[0])
        assert wait_for(lambda: sink.status().delivered == 1)
        headers = receiver.received[0].headers
    assert SIGNATURE_HEADER not in headers and TIMESTAMP_HEADER not in headers


# name: (the receiver's answers in turn, delivered, failed, dropped, attempts the receiver saw)
ANSWERS: dict[str, tuple[tuple[int | str, ...], int, int, int, int]] = {
    "500-then-200-is-retried": ((500, 503, 200), 1, 2, 0, 3),
    "429-is-retried": ((429, 200), 1, 1, 0, 2),
    "retries-run-out": ((500,), 0, 3, 1, 3),
    "400-is-not-retried": ((400,), 0, 1, 1, 1),
    "a-redirect-is-not-followed": ((302,), 0, 1, 1, 1),
}


@pytest.mark.parametrize(
    ("answers", "delivered", "failed", "dropped", "attempts"), ANSWERS.values(), ids=ANSWERS.keys()
)
def test_failed_posts_are_retried_with_backoff_or_dropped(
    messages: tuple[StreamMessage, ...],
    answers: tuple[int | str, ...],
    delivered: int,
    failed: int,
    dropped: int,
    attempts: int,
) -> None:
    with running_receiver(*answers) as receiver:
        config = WebhookSinkConfig("hook", receiver.url, secret=SECRET, retry=FAST_RETRY)
        with opened(config) as sink:
            sink.offer("gate", messages[0])
            assert wait_for(lambda: sink.status().delivered + sink.status().dropped == 1), sink.status()
            status = sink.status()
        assert (status.delivered, status.failed, status.dropped, receiver.attempts) == (
            delivered,
            failed,
            dropped,
            attempts,
        )
        if failed:
            assert status.last_error.startswith("POST http://127.0.0.1:")
            assert "token" not in status.last_error, "the query string (a token, perhaps) stays out of errors"
            assert status.last_error_time is not None
        # The retries were the same message: one delivery id.
        assert len({r.headers[DELIVERY_HEADER] for r in receiver.received}) == delivered


def run_bounded(action: object, bound_s: float) -> bool:
    """Runs `action` on a thread; True when it returned within `bound_s` (a generous bound, not a timing)."""
    assert callable(action)
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(bound_s)
    return not thread.is_alive()


@pytest.mark.parametrize("receiver_state", ["refusing", "hanging"])
def test_a_dead_or_hanging_receiver_holds_nothing_up(
    messages: tuple[StreamMessage, ...], receiver_state: str
) -> None:
    with contextlib.ExitStack() as stack:
        if receiver_state == "hanging":
            url = stack.enter_context(running_receiver("hang")).url
        else:
            url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
        config = WebhookSinkConfig(
            "hook", url, timeout_s=0.3, retry=RetryPolicy(2, 0.01, 0.01), queue_size=3, include_status=False
        )
        sink = open_sink(config)
        offered = [m for m in messages if isinstance(m, FrameResult)] * 3
        # Every offer returns while the receiver is stuck (a hang here would fail the bound).
        assert run_bounded(lambda: offer_all(sink, tuple(offered)), bound_s=20.0)
        status = sink.status()
        assert status.queued <= 3
        assert status.dropped >= len([m for m in offered if m.analytics and m.analytics.events]) - 3 - 1
        assert wait_for(lambda: sink.status().failed >= 2, timeout_s=20.0), sink.status()
        assert sink.status().last_error
        # close() gives up on the queue after its timeout, though an attempt may still be under way.
        assert run_bounded(lambda: sink.close(timeout_s=0.5), bound_s=10.0)
        # Once the attempt under way ends, what was still queued is dropped and the counts stop moving.
        assert wait_for(lambda: sink.status().queued == 0, timeout_s=10.0)
        after = sink.status()
        payloads = len([m for m in offered if m.analytics and m.analytics.events])
        assert (after.delivered, after.dropped) == (0, payloads), "each message dropped once, however it went"
        with_events = next(m for m in offered if m.analytics and m.analytics.events)
        sink.offer("gate", with_events)  # after close: counted, never raised
        assert sink.status().dropped == after.dropped + 1
