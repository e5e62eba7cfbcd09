"""Subscription on its own: the queue a pipeline offers to (from its thread) and a consumer takes from, with
`await next()` on an event loop or `get()` from a thread. No pipeline, no model: messages are made here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest
from visionrpc.server.domain import ImageSize, Prediction
from visionrpc.server.models.repository import ModelId
from visionrpc.server.streams.subscription import Subscription
from visionrpc.server.streams.types import (
    Delivery,
    FrameResult,
    ResumeGap,
    ResumeOutcome,
    SourceEventKind,
    StreamEnd,
    StreamMessage,
    StreamStatus,
)

MODEL = ModelId("yolov3-tiny-coco", "1")
STARTED = StreamStatus(SourceEventKind.STARTED, 0, cursor=1)
ENDED = StreamStatus(SourceEventKind.ENDED, 0, cursor=9)


def result(sequence: int, *, results_dropped: int = 0) -> FrameResult:
    return FrameResult(
        source_index=0,
        sequence_number=sequence,
        timestamp_ms=sequence * 40.0,
        capture_time=0.0,
        prediction=Prediction(ImageSize(640, 272)),
        frames_skipped=0,
        results_dropped=results_dropped,
        cursor=sequence + 2,
    )


def never_stopping() -> bool:
    return False


def subscription(delivery: Delivery = Delivery.LOSSY, capacity: int = 4) -> Subscription:
    return Subscription("stream-a", MODEL, delivery, capacity)


def take_with_next(sub: Subscription, count: int) -> list[StreamMessage]:
    async def take() -> list[StreamMessage]:
        return [await asyncio.wait_for(sub.next(), timeout=5) for _ in range(count)]

    return asyncio.run(take())


def take_with_get(sub: Subscription, count: int) -> list[StreamMessage]:
    messages = [sub.get(timeout_s=0) for _ in range(count)]
    assert None not in messages, messages
    return [m for m in messages if m is not None]


TAKERS = {"await next()": take_with_next, "get()": take_with_get}


def test_a_subscription_names_its_stream_and_model_and_has_no_gap_unless_resumed() -> None:
    plain = subscription()
    assert (plain.stream_id, plain.model, plain.delivery, plain.gap) == (
        "stream-a",
        MODEL,
        Delivery.LOSSY,
        None,
    )
    gap = ResumeGap(ResumeOutcome.PARTIAL, "stream-a", messages_lost=3)
    resumed = Subscription("stream-a", MODEL, Delivery.EVERY_FRAME, 4, gap=gap)
    assert resumed.gap == gap and resumed.delivery is Delivery.EVERY_FRAME


@pytest.mark.parametrize("taker", TAKERS.values(), ids=TAKERS.keys())
@pytest.mark.parametrize(
    ("capacity", "offered", "expected"),
    [
        pytest.param(
            4,
            [STARTED, result(0), result(1), ENDED, StreamEnd()],
            # The end, once taken, is what every later take returns.
            [STARTED, result(0), result(1), ENDED, StreamEnd(), StreamEnd(), StreamEnd()],
            id="in order, then the end forever",
        ),
        pytest.param(
            2,
            [STARTED, result(0), result(1), result(2), result(3), ENDED],
            # The two oldest results dropped to make room; statuses never; the count stamped as taken.
            [STARTED, result(2, results_dropped=2), result(3, results_dropped=2), ENDED],
            id="lossy: oldest results dropped and counted",
        ),
        pytest.param(
            4,
            [StreamEnd(error="source 0: broken")],
            [StreamEnd(error="source 0: broken"), StreamEnd(error="source 0: broken")],
            id="an error end repeats too",
        ),
    ],
)
def test_queued_messages_are_taken_in_order_by_next_and_by_get(
    taker: Callable[[Subscription, int], list[StreamMessage]],
    capacity: int,
    offered: Sequence[StreamMessage],
    expected: Sequence[StreamMessage],
) -> None:
    sub = subscription(capacity=capacity)
    for message in offered:
        sub.offer(message, never_stopping)
    assert taker(sub, len(expected)) == list(expected)


@pytest.mark.parametrize("taker", TAKERS.values(), ids=TAKERS.keys())
def test_a_closed_subscription_answers_with_the_end_at_once_and_takes_no_more(
    taker: Callable[[Subscription, int], list[StreamMessage]],
) -> None:
    sub = subscription()
    sub.offer(result(0), never_stopping)
    sub.close()
    sub.offer(result(1), never_stopping)  # the pipeline may still offer: ignored
    assert sub.closed
    assert taker(sub, 2) == [StreamEnd(), StreamEnd()]


def test_replayed_messages_come_first_whatever_the_capacity() -> None:
    sub = subscription(Delivery.EVERY_FRAME, capacity=1)
    backlog = [result(3), result(4), result(5)]
    sub.replay(backlog)
    assert take_with_next(sub, 3) == backlog


def offer_started(sub: Subscription) -> None:
    sub.offer(STARTED, never_stopping)


def offer_a_result(sub: Subscription) -> None:
    sub.offer(result(7), never_stopping)


def replay_two(sub: Subscription) -> None:
    sub.replay([result(3), result(4)])


WAKERS: dict[str, tuple[Callable[[Subscription], None], StreamMessage]] = {
    "a status offered": (offer_started, STARTED),
    "a result offered": (offer_a_result, result(7)),
    "messages replayed": (replay_two, result(3)),
    "the subscription closed": (Subscription.close, StreamEnd()),
}


@pytest.mark.parametrize(("wake", "expected"), WAKERS.values(), ids=WAKERS.keys())
def test_next_waits_without_a_thread_and_wakes_when_another_thread_delivers(
    wake: Callable[[Subscription], None], expected: StreamMessage
) -> None:
    sub = subscription()

    async def scenario() -> StreamMessage:
        waiting = asyncio.create_task(sub.next())
        await asyncio.sleep(0)  # one loop turn: the task runs up to its wait on the empty queue
        assert not waiting.done()
        # The pipeline's side runs on a thread of its own, as it does in the server.
        producer = threading.Thread(target=wake, args=(sub,), daemon=True)
        producer.start()
        try:
            return await asyncio.wait_for(waiting, timeout=5)
        finally:
            producer.join(5)

    assert asyncio.run(scenario()) == expected


def test_a_cancelled_next_leaves_the_subscription_usable() -> None:
    sub = subscription()

    async def scenario() -> StreamMessage:
        abandoned = asyncio.create_task(sub.next())
        await asyncio.sleep(0)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        waiting = asyncio.create_task(sub.next())
        await asyncio.sleep(0)
        producer = threading.Thread(target=offer_started, args=(sub,), daemon=True)
        producer.start()
        try:
            return await asyncio.wait_for(waiting, timeout=5)
        finally:
            producer.join(5)

    assert asyncio.run(scenario()) == STARTED


def test_an_every_frame_offer_waits_for_room_that_next_makes() -> None:
    sub = subscription(Delivery.EVERY_FRAME, capacity=1)
    sub.offer(result(0), never_stopping)
    offered = threading.Event()

    def produce() -> None:
        sub.offer(result(1), never_stopping)  # the queue is full: waits for the consumer
        offered.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()

    async def consume() -> list[StreamMessage]:
        return [await asyncio.wait_for(sub.next(), timeout=5) for _ in range(2)]

    assert asyncio.run(consume()) == [result(0), result(1)]
    producer.join(5)
    assert offered.is_set() and sub.results_dropped == 0
