"""The stream manager with real pipelines: sharing by request, joining by id, private every-frame pipelines,
limits, linger and shutdown. Real model (yolov3-tiny-coco), real bikes.mp4, real source readers."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from streaming import drain
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.manager import StreamManager
from visionrpc.server.streams.pipeline import SHUTDOWN_REASON, Subscription
from visionrpc.server.streams.types import (
    Delivery,
    FrameResult,
    SourceEventKind,
    SourceKind,
    SourceSpec,
    StreamEnd,
    StreamMessage,
    StreamOptions,
    StreamStatus,
)

MODEL = "yolov3-tiny-coco"
BIKES_FRAMES = 250


@pytest.fixture
def config(media_root: Path) -> ServerConfig:
    return ServerConfig(media_root=media_root, pipeline_linger_s=0.5, subscriber_queue=8)


@pytest.fixture
def streams(models: ModelManager, config: ServerConfig) -> Iterator[StreamManager]:
    manager = StreamManager(models, config)
    yield manager
    manager.close()


def first_result(subscription: Subscription, timeout_s: float = 30.0) -> FrameResult:
    while True:
        message = subscription.get(timeout_s=timeout_s)
        assert message is not None and not isinstance(message, StreamEnd), message
        if isinstance(message, FrameResult):
            return message


def test_identical_requests_share_one_pipeline_that_decodes_and_infers_each_frame_once(
    streams: StreamManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    options = StreamOptions()
    first = streams.subscribe([bikes], MODEL, decode_options, options)
    # "name" and "name/version" are the same model version, hence the same pipeline.
    second = streams.subscribe([bikes], f"{MODEL}/1", decode_options, options)
    third = streams.join(first.stream_id)
    assert first.stream_id == second.stream_id == third.stream_id
    assert first.model_id == f"{MODEL}/1"
    (pipeline,) = streams.pipelines()
    assert pipeline.subscriber_count == 3 and streams.subscriber_count == 3

    outputs: list[list[StreamMessage]] = []

    def consume(subscription: Subscription) -> None:
        outputs.append(drain(subscription))

    threads = [threading.Thread(target=consume, args=(s,), daemon=True) for s in (first, second, third)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for messages in outputs:
        assert isinstance(messages[0], StreamStatus) and messages[0].event is SourceEventKind.STARTED
        results = [m for m in messages if isinstance(m, FrameResult)]
        assert [r.sequence_number for r in results] == list(range(BIKES_FRAMES))
        assert messages[-1] == StreamEnd()
    assert len(outputs) == 3
    assert pipeline.frames_decoded == BIKES_FRAMES and pipeline.frames_inferred == BIKES_FRAMES
    # A finished pipeline leaves the manager by itself; its subscribers count until they close.
    assert wait_for(lambda: streams.pipelines() == [])
    with pytest.raises(NotFoundError) as missing:
        streams.join(first.stream_id)
    assert missing.value.reason == "STREAM_NOT_FOUND"
    for subscription in (first, second, third):
        subscription.close()
    assert streams.subscriber_count == 0


def test_different_requests_get_different_pipelines_and_unknown_ids_are_not_found(
    streams: StreamManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    stricter = dataclasses.replace(decode_options, confidence=0.6)
    a = streams.subscribe([bikes], MODEL, decode_options, StreamOptions())
    b = streams.subscribe([bikes], MODEL, stricter, StreamOptions())
    c = streams.subscribe([bikes], MODEL, decode_options, StreamOptions(jpeg_quality=50))
    assert len({a.stream_id, b.stream_id, c.stream_id}) == 3
    assert len(streams.pipelines()) == 3
    assert len(a.stream_id) >= 20  # unguessable: 128 random bits
    with pytest.raises(NotFoundError) as missing:
        streams.join("no-such-stream")
    assert missing.value.reason == "STREAM_NOT_FOUND"
    joined = streams.join(b.stream_id)
    assert joined.get(timeout_s=10) == b.get(timeout_s=10)  # both start with the same STARTED status
    for subscription in (a, b, c, joined):
        subscription.close()


def test_a_rejoin_within_the_linger_reuses_the_pipeline_and_after_it_starts_a_new_one(
    streams: StreamManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    first = streams.subscribe([bikes], MODEL, decode_options, StreamOptions())
    seen = first_result(first)
    first.close()
    again = streams.subscribe([bikes], MODEL, decode_options, StreamOptions())
    assert again.stream_id == first.stream_id
    assert first_result(again).sequence_number > seen.sequence_number
    (pipeline,) = streams.pipelines()
    again.close()
    assert pipeline.join(5) and streams.pipelines() == []
    fresh = streams.subscribe([bikes], MODEL, decode_options, StreamOptions())
    assert fresh.stream_id != first.stream_id
    assert first_result(fresh).sequence_number == 0
    fresh.close()


def test_every_frame_subscribers_get_private_pipelines_that_nobody_else_joins(
    streams: StreamManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    options = StreamOptions()
    shared = streams.subscribe([bikes], MODEL, decode_options, options)
    private = streams.subscribe([bikes], MODEL, decode_options, options, Delivery.EVERY_FRAME)
    other = streams.subscribe([bikes], MODEL, decode_options, options, Delivery.EVERY_FRAME)
    assert len({shared.stream_id, private.stream_id, other.stream_id}) == 3
    # An identical lossy request joins the shared pipeline, never a private one.
    assert streams.subscribe([bikes], MODEL, decode_options, options).stream_id == shared.stream_id
    refusals = [(private.stream_id, Delivery.LOSSY), (shared.stream_id, Delivery.EVERY_FRAME)]
    for stream_id, delivery in refusals:
        with pytest.raises(InvalidArgumentError) as refused:
            streams.join(stream_id, delivery)
        assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    camera = SourceSpec(0, SourceKind.URL, "rtsp://127.0.0.1:9/camera")
    with pytest.raises(InvalidArgumentError) as refused:
        streams.subscribe([camera], MODEL, decode_options, options, Delivery.EVERY_FRAME)
    assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    assert len(streams.pipelines()) == 3 and streams.subscriber_count == 4  # refusals hold nothing
    assert first_result(private).sequence_number == 0


def test_limits_give_resource_exhausted_with_a_retry_hint(
    models: ModelManager, config: ServerConfig, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    streams = StreamManager(models, dataclasses.replace(config, max_pipelines=1, max_subscribers=2))
    try:
        options = StreamOptions()
        first = streams.subscribe([bikes], MODEL, decode_options, options)
        with pytest.raises(ResourceExhaustedError) as exhausted:
            streams.subscribe([bikes], MODEL, decode_options, StreamOptions(jpeg_quality=10))
        assert exhausted.value.reason == "TOO_MANY_PIPELINES" and exhausted.value.retry_after_s >= 0.5
        second = streams.subscribe([bikes], MODEL, decode_options, options)  # shares: no new pipeline
        attempts: list[Callable[[], Subscription]] = [
            lambda: streams.subscribe([bikes], MODEL, decode_options, options),
            lambda: streams.join(first.stream_id),
        ]
        for attempt in attempts:
            with pytest.raises(ResourceExhaustedError) as exhausted:
                attempt()
            assert exhausted.value.reason == "TOO_MANY_SUBSCRIBERS" and exhausted.value.retry_after_s > 0
        second.close()
        third = streams.join(first.stream_id)  # a slot came free
        first.close()
        third.close()
        # Once the lingering pipeline is gone, a different one may start.
        assert wait_for(lambda: streams.pipelines() == [])
        streams.subscribe([bikes], MODEL, decode_options, StreamOptions(jpeg_quality=10)).close()
    finally:
        streams.close()


def test_close_ends_every_stream_with_an_error_and_releases_every_thread(
    models: ModelManager, config: ServerConfig, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    before = set(threading.enumerate())
    streams = StreamManager(models, config)
    lossy = streams.subscribe([bikes], MODEL, decode_options, StreamOptions())
    blocked = streams.subscribe([bikes], MODEL, decode_options, StreamOptions(), Delivery.EVERY_FRAME)
    first_result(lossy)
    time.sleep(0.5)  # the every-frame pipeline now waits on its subscriber, who reads nothing
    pipelines = streams.pipelines()
    started = time.monotonic()
    streams.close()
    assert time.monotonic() - started < 5.0
    assert streams.pipelines() == [] and not any(p.running for p in pipelines)
    for subscription in (lossy, blocked):
        assert drain(subscription, timeout_s=5)[-1] == StreamEnd(error=SHUTDOWN_REASON)
        subscription.close()
    assert wait_for(lambda: set(threading.enumerate()) <= before), set(threading.enumerate()) - before
    with pytest.raises(UnavailableError):
        streams.subscribe([bikes], MODEL, decode_options, StreamOptions())


def test_an_unknown_model_is_refused_before_anything_starts(
    streams: StreamManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    with pytest.raises(NotFoundError):
        streams.subscribe([bikes], "no-such-model", decode_options, StreamOptions())
    with pytest.raises(InvalidArgumentError):
        streams.subscribe([], MODEL, decode_options, StreamOptions())
    assert streams.pipelines() == [] and streams.subscriber_count == 0
