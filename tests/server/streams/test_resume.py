"""Resuming a broken subscription (docs/stream-resume.md): the pipeline's replay ring (Pipeline.subscribe with
`resume_after`) and the stream manager's resume by stream id or restart. Real model, real bikes.mp4, real
source readers."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import wait_for
from streaming import drain
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import InferOptions
from visionrpc.server.errors import NotFoundError
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.manager import StreamManager, StreamRequest
from visionrpc.server.streams.pipeline import Pipeline
from visionrpc.server.streams.source_policy import SourcePolicy, resolve_source
from visionrpc.server.streams.subscription import Subscription
from visionrpc.server.streams.types import (
    Delivery,
    FrameResult,
    ResumeGap,
    ResumeOutcome,
    ResumePoint,
    SourceEventKind,
    SourceSpec,
    StreamEnd,
    StreamMessage,
    StreamOptions,
    StreamStatus,
)

MODEL = "yolov3-tiny-coco"
BIKES_FRAMES = 250


def cursor_of(message: StreamMessage) -> int:
    assert not isinstance(message, StreamEnd), "the end has no cursor"
    return message.cursor


def results_of(messages: Sequence[StreamMessage]) -> list[FrameResult]:
    return [m for m in messages if isinstance(m, FrameResult)]


def take(subscription: Subscription, count: int, timeout_s: float = 30.0) -> list[StreamMessage]:
    messages: list[StreamMessage] = []
    for _ in range(count):
        message = subscription.get(timeout_s=timeout_s)
        assert message is not None and not isinstance(message, StreamEnd), (messages, message)
        messages.append(message)
    return messages


def take_until_results(subscription: Subscription, count: int) -> list[StreamMessage]:
    """Messages up to and including the `count`th FrameResult."""
    messages: list[StreamMessage] = []
    while len(results_of(messages)) < count:
        messages.extend(take(subscription, 1))
    return messages


# -- the pipeline's replay ring ----------------------------------------------------------------------------

QUEUE = 4  # the every-frame subscriber's queue: the pipeline stops after QUEUE + 1 results for one that reads
# nothing, so the newest cursor is then STARTED (1) + QUEUE + 1 results = 6.
NEWEST = QUEUE + 2


def waits_in_offer(pipeline: Pipeline) -> bool:
    """The inference thread is inside Subscription.offer (waiting for room: nobody reads). It publishes a
    message (cursor and ring) before offering it, so by then the message it holds back has its cursor."""
    (thread,) = pipeline.threads
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "offer":
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize(
    ("ring", "after", "replayed", "outcome", "lost"),
    [
        pytest.param(8, 0, [1, 2, 3, 4, 5, 6], ResumeOutcome.REPLAYED, 0, id="all of it, STARTED included"),
        pytest.param(8, 3, [4, 5, 6], ResumeOutcome.REPLAYED, 0, id="mid-way"),
        pytest.param(8, NEWEST, [], ResumeOutcome.REPLAYED, 0, id="nothing missed"),
        pytest.param(3, 3, [4, 5, 6], ResumeOutcome.REPLAYED, 0, id="the ring holds just enough"),
        pytest.param(3, 2, [4, 5, 6], ResumeOutcome.PARTIAL, 1, id="the ring lost one"),
        pytest.param(3, 0, [4, 5, 6], ResumeOutcome.PARTIAL, 3, id="the ring lost three"),
    ],
)
def test_a_resumed_subscriber_gets_the_ring_after_its_cursor_and_the_gap_says_what_was_lost(
    models: ModelManager,
    bikes: SourceSpec,
    decode_options: DecodeOptions,
    ring: int,
    after: int,
    replayed: list[int],
    outcome: ResumeOutcome,
    lost: int,
) -> None:
    pipeline = Pipeline(
        [bikes],
        models.lease(ModelId.parse(MODEL)),
        decode_options,
        StreamOptions(),
        subscriber_queue=QUEUE,
        replay_messages=ring,
        linger_s=30.0,
    )
    try:
        broken = pipeline.subscribe(Delivery.EVERY_FRAME)
        # It reads nothing: the pipeline publishes STARTED and QUEUE + 1 results (cursors 1..6), then waits.
        assert wait_for(lambda: pipeline.frames_inferred == QUEUE + 1 and waits_in_offer(pipeline))
        broken.close()  # its call broke; nobody watches, so the pipeline publishes nothing more meanwhile

        resumed = pipeline.subscribe(Delivery.EVERY_FRAME, resume_after=after)
        assert resumed.stream_id == pipeline.stream_id and resumed.model == pipeline.model
        assert resumed.gap == ResumeGap(outcome, pipeline.stream_id, lost)
        messages = take(resumed, len(replayed) + 4)
        # The ring's messages after the cursor, then the live ones: no cursor twice, none skipped after them.
        assert [cursor_of(m) for m in messages] == [*replayed, *range(NEWEST + 1, NEWEST + 5)]
        # The same messages the first subscriber would have had: STARTED is 1, frame n has cursor n + 2.
        for message in messages:
            if isinstance(message, FrameResult):
                assert message.sequence_number == message.cursor - 2 and message.results_dropped == 0
            else:
                assert isinstance(message, StreamStatus) and message.event is SourceEventKind.STARTED
                assert message.cursor == 1
        resumed.close()
    finally:
        pipeline.close()


# -- the stream manager ------------------------------------------------------------------------------------


@pytest.fixture
def config(media_root: Path) -> ServerConfig:
    # A long linger: a resume must find the pipeline however slowly the test machine runs.
    return ServerConfig(media_root=media_root, pipeline_linger_s=10.0, subscriber_queue=8)


def request(sources: Sequence[SourceSpec]) -> StreamRequest:
    return StreamRequest(tuple(sources), ModelId.parse(MODEL), InferOptions(), StreamOptions())


@pytest.mark.parametrize("frames_before_the_break", [0, 100])
def test_an_every_frame_stream_resumed_by_id_loses_and_repeats_nothing(
    streams: StreamManager, bikes: SourceSpec, frames_before_the_break: int
) -> None:
    first = streams.subscribe(request([bikes]), Delivery.EVERY_FRAME)
    (pipeline,) = streams.pipelines()
    before = take_until_results(first, frames_before_the_break) if frames_before_the_break else take(first, 1)
    first.close()  # the call broke after these
    last = before[-1]
    next_sequence = last.sequence_number + 1 if isinstance(last, FrameResult) else 0
    point = ResumePoint(first.stream_id, cursor_of(last), (next_sequence,))

    second = streams.resume(request([bikes]), point, Delivery.EVERY_FRAME)
    assert second.stream_id == first.stream_id and streams.pipelines() == [pipeline]
    assert second.gap == ResumeGap(ResumeOutcome.REPLAYED, first.stream_id, 0)
    after = drain(second)
    assert after[-1] == StreamEnd()
    assert isinstance(after[-2], StreamStatus) and after[-2].event is SourceEventKind.ENDED

    # Every cursor once, in order, across the break; every frame once, in order.
    messages = [*before, *after[:-1]]
    assert [cursor_of(m) for m in messages] == list(range(1, BIKES_FRAMES + 3))
    assert [r.sequence_number for r in results_of(messages)] == list(range(BIKES_FRAMES))
    # Continued, not restarted: the file was decoded and inferred once.
    assert pipeline.frames_decoded == BIKES_FRAMES and pipeline.frames_inferred == BIKES_FRAMES
    second.close()
    assert wait_for(lambda: streams.subscriber_count == 0 and streams.pipelines() == [])


def test_a_stream_that_ended_while_its_subscriber_was_away_is_replayed_to_its_end(
    streams: StreamManager, bikes: SourceSpec
) -> None:
    total = BIKES_FRAMES + 2  # STARTED, the frames, SOURCE_ENDED
    first = streams.subscribe(request([bikes]), Delivery.EVERY_FRAME)
    seen = take(first, total - 6)  # the last six fit in its queue: the pipeline runs to its end
    assert wait_for(lambda: streams.pipelines() == [], timeout_s=60)  # ended and stopped meanwhile
    first.close()  # the call broke with those six still on their way
    last = seen[-1]
    assert isinstance(last, FrameResult)
    point = ResumePoint(first.stream_id, cursor_of(last), (last.sequence_number + 1,))

    second = streams.resume(request([bikes]), point, Delivery.EVERY_FRAME)
    assert second.stream_id == first.stream_id  # not restarted
    assert second.gap == ResumeGap(ResumeOutcome.REPLAYED, first.stream_id, 0)
    after = drain(second)
    assert after[-1] == StreamEnd()
    assert [cursor_of(m) for m in [*seen, *after[:-1]]] == list(range(1, total + 1))
    second.close()
    assert wait_for(lambda: streams.subscriber_count == 0)


@pytest.mark.parametrize("known", [True, False], ids=["known id", "unknown id"])
@pytest.mark.parametrize("with_sources", [True, False], ids=["with sources", "without sources"])
def test_resume_continues_a_known_stream_restarts_an_unknown_one_and_needs_sources_to_restart(
    streams: StreamManager, bikes: SourceSpec, known: bool, with_sources: bool
) -> None:
    broken = streams.subscribe(request([bikes]))
    seen = take_until_results(broken, 1)[-1]
    assert isinstance(seen, FrameResult)
    broken.close()  # within the linger the pipeline waits where it was
    (pipeline,) = streams.pipelines()
    stream_id = broken.stream_id if known else "a-stream-of-another-replica"
    point = ResumePoint(stream_id, seen.cursor, (seen.sequence_number + 1,))
    resume_request = request([bikes] if with_sources else [])

    if not known and not with_sources:
        with pytest.raises(NotFoundError) as missing:
            streams.resume(resume_request, point, Delivery.LOSSY)
        assert missing.value.reason == "STREAM_NOT_FOUND"
        assert streams.pipelines() == [pipeline] and streams.subscriber_count == 0
        return

    resumed = streams.resume(resume_request, point, Delivery.LOSSY)
    first = resumed.get(timeout_s=30)
    if known:  # the same pipeline, from the message after the cursor
        assert resumed.stream_id == broken.stream_id and streams.pipelines() == [pipeline]
        assert resumed.gap == ResumeGap(ResumeOutcome.REPLAYED, broken.stream_id, 0)
        assert isinstance(first, FrameResult)
        assert (first.cursor, first.sequence_number) == (seen.cursor + 1, seen.sequence_number + 1)
    else:  # a new pipeline and stream id; the file continues at the next sequence number
        assert resumed.stream_id not in (stream_id, broken.stream_id)
        assert resumed.gap == ResumeGap(ResumeOutcome.RESTARTED, stream_id, 0)
        assert len(streams.pipelines()) == 2
        assert isinstance(first, StreamStatus) and first.event is SourceEventKind.STARTED
        assert first.cursor == 1  # a new stream counts from 1
        next_result = results_of(take_until_results(resumed, 1))[0]
        assert next_result.sequence_number == seen.sequence_number + 1
    assert streams.subscriber_count == 1
    resumed.close()
    assert streams.subscriber_count == 0


@pytest.mark.parametrize(
    ("second_source", "next_sequence_numbers", "first_frames"),
    [
        pytest.param(False, (240,), {0: 240}, id="one file, near its end"),
        pytest.param(True, (245, 230), {0: 245, 1: 230}, id="two files, each where it was"),
        pytest.param(False, (), {0: 0}, id="no frame received: from the start"),
    ],
)
def test_a_restarted_stream_continues_each_file_at_its_next_sequence_number(
    streams: StreamManager,
    bikes: SourceSpec,
    source_policy: SourcePolicy,
    second_source: bool,
    next_sequence_numbers: tuple[int, ...],
    first_frames: dict[int, int],
) -> None:
    sources = [bikes, resolve_source(1, path="bikes.mp4", policy=source_policy)] if second_source else [bikes]
    point = ResumePoint("a-stream-this-server-never-ran", 57, next_sequence_numbers)
    resumed = streams.resume(request(sources), point, Delivery.EVERY_FRAME)
    assert resumed.gap == ResumeGap(ResumeOutcome.RESTARTED, "a-stream-this-server-never-ran", 0)
    assert resumed.stream_id != point.stream_id
    (pipeline,) = streams.pipelines()
    assert pipeline.stream_id == resumed.stream_id

    if min(first_frames.values()) == 0:  # a whole pass: the first frame tells enough
        messages = take_until_results(resumed, 1)
        started = messages[0]
        assert isinstance(started, StreamStatus) and started.event is SourceEventKind.STARTED
        assert [(r.source_index, r.sequence_number) for r in results_of(messages)] == [(0, 0)]
        resumed.close()
        return

    messages = drain(resumed)
    assert messages[-1] == StreamEnd()
    started = messages[0]
    assert isinstance(started, StreamStatus) and started.event is SourceEventKind.STARTED
    assert started.cursor == 1
    results = results_of(messages)
    for index, first_frame in first_frames.items():
        # Each file from where the broken stream was to its end, once each; numbering (and media time)
        # still counts from the file's first frame.
        mine = [r for r in results if r.source_index == index]
        assert [r.sequence_number for r in mine] == list(range(first_frame, BIKES_FRAMES))
        assert mine[0].timestamp_ms == pytest.approx(first_frame * 40.0, abs=1.0)
    assert [cursor_of(m) for m in messages[:-1]] == list(range(1, len(messages)))
    resumed.close()
