"""The stream manager with real pipelines: sharing by request, joining by id, private every-frame pipelines,
limits, linger and shutdown. Real model (yolov3-tiny-coco), real bikes.mp4, real source readers."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_for
from streaming import drain
from visionrpc.engines.onnxruntime_engine import OnnxRuntimeEngine
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId
from visionrpc.server.predictor import InputImage
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.manager import StreamManager, StreamRequest
from visionrpc.server.streams.pipeline import SHUTDOWN_REASON
from visionrpc.server.streams.subscription import Subscription
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


def request(
    sources: Sequence[SourceSpec],
    model: str = MODEL,
    options: InferOptions | None = None,
    stream_options: StreamOptions | None = None,
) -> StreamRequest:
    return StreamRequest(
        tuple(sources), ModelId.parse(model), options or InferOptions(), stream_options or StreamOptions()
    )


def nothing_holds_the_model(models: ModelManager) -> bool:
    """Unloads MODEL and says whether that closed it at once, which it does only when no lease is left."""
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        engine = predictor.engine
    assert isinstance(engine, OnnxRuntimeEngine)
    models.unload(ModelId.parse(MODEL))
    return engine.closed


def start_the_models_threads(models: ModelManager, decode_options: DecodeOptions) -> None:
    """Loads MODEL and runs one image through it: its batch scheduler starts its thread on first use."""
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        predictor.infer([InputImage(np.zeros((64, 64, 3), np.uint8), ChannelOrder.BGR)], decode_options)


def first_result(subscription: Subscription, timeout_s: float = 30.0) -> FrameResult:
    while True:
        message = subscription.get(timeout_s=timeout_s)
        assert message is not None and not isinstance(message, StreamEnd), message
        if isinstance(message, FrameResult):
            return message


def test_identical_requests_share_one_pipeline_that_decodes_and_infers_each_frame_once(
    models: ModelManager, streams: StreamManager, bikes: SourceSpec
) -> None:
    first = streams.subscribe(request([bikes]))
    # "name" and "name/version" are the same model version, hence the same pipeline.
    second = streams.subscribe(request([bikes], f"{MODEL}/1"))
    third = streams.join(first.stream_id)
    assert first.stream_id == second.stream_id == third.stream_id
    assert first.model == second.model == third.model == ModelId(MODEL, "1")
    (pipeline,) = streams.pipelines()
    assert pipeline.model == ModelId(MODEL, "1")
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
    # One lease per request: the pipeline kept the first one and released it when it stopped; the request
    # that joined it released its own at once (a leaked lease would keep the model open after unloading).
    assert nothing_holds_the_model(models)


def test_different_requests_get_different_pipelines_and_unknown_ids_are_not_found(
    streams: StreamManager, bikes: SourceSpec
) -> None:
    a = streams.subscribe(request([bikes]))
    b = streams.subscribe(request([bikes], options=InferOptions(confidence_threshold=0.6)))
    c = streams.subscribe(request([bikes], stream_options=StreamOptions(jpeg_quality=50)))
    assert len({a.stream_id, b.stream_id, c.stream_id}) == 3
    assert len(streams.pipelines()) == 3
    assert len(a.stream_id) >= 20  # unguessable: 128 random bits
    with pytest.raises(NotFoundError) as missing:
        streams.join("no-such-stream")
    assert missing.value.reason == "STREAM_NOT_FOUND"
    joined = streams.join(b.stream_id)
    # Both start with the same STARTED status, the joiner with its original cursor.
    started = b.get(timeout_s=10)
    assert isinstance(started, StreamStatus) and started.event is SourceEventKind.STARTED
    assert started.cursor == 1 and joined.get(timeout_s=10) == started
    for subscription in (a, b, c, joined):
        subscription.close()


def test_a_rejoin_within_the_linger_reuses_the_pipeline_and_after_it_starts_a_new_one(
    streams: StreamManager, bikes: SourceSpec
) -> None:
    first = streams.subscribe(request([bikes]))
    seen = first_result(first)
    first.close()
    again = streams.subscribe(request([bikes]))
    assert again.stream_id == first.stream_id
    assert first_result(again).sequence_number > seen.sequence_number
    (pipeline,) = streams.pipelines()
    again.close()
    assert pipeline.join(5) and streams.pipelines() == []
    fresh = streams.subscribe(request([bikes]))
    assert fresh.stream_id != first.stream_id
    assert first_result(fresh).sequence_number == 0
    fresh.close()


def test_every_frame_subscribers_get_private_pipelines_that_nobody_else_joins(
    streams: StreamManager, bikes: SourceSpec
) -> None:
    shared = streams.subscribe(request([bikes]))
    private = streams.subscribe(request([bikes]), Delivery.EVERY_FRAME)
    other = streams.subscribe(request([bikes]), Delivery.EVERY_FRAME)
    assert len({shared.stream_id, private.stream_id, other.stream_id}) == 3
    # An identical lossy request joins the shared pipeline, never a private one.
    assert streams.subscribe(request([bikes])).stream_id == shared.stream_id
    refusals = [(private.stream_id, Delivery.LOSSY), (shared.stream_id, Delivery.EVERY_FRAME)]
    for stream_id, delivery in refusals:
        with pytest.raises(InvalidArgumentError) as refused:
            streams.join(stream_id, delivery)
        assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    camera = SourceSpec(0, SourceKind.URL, "rtsp://127.0.0.1:9/camera")
    with pytest.raises(InvalidArgumentError) as refused:
        streams.subscribe(request([camera]), Delivery.EVERY_FRAME)
    assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    assert len(streams.pipelines()) == 3 and streams.subscriber_count == 4  # refusals hold nothing
    assert first_result(private).sequence_number == 0


def test_limits_give_resource_exhausted_with_a_retry_hint(
    models: ModelManager, config: ServerConfig, bikes: SourceSpec
) -> None:
    streams = StreamManager(models, dataclasses.replace(config, max_pipelines=1, max_subscribers=2))
    try:
        first = streams.subscribe(request([bikes]))
        with pytest.raises(ResourceExhaustedError) as exhausted:
            streams.subscribe(request([bikes], stream_options=StreamOptions(jpeg_quality=10)))
        assert exhausted.value.reason == "TOO_MANY_PIPELINES" and exhausted.value.retry_after_s >= 0.5
        second = streams.subscribe(request([bikes]))  # shares: no new pipeline
        attempts: list[Callable[[], Subscription]] = [
            lambda: streams.subscribe(request([bikes])),
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
        streams.subscribe(request([bikes], stream_options=StreamOptions(jpeg_quality=10))).close()
        assert wait_for(lambda: streams.pipelines() == [])
        # The refused requests released the leases they had taken, like the ones that joined.
        assert nothing_holds_the_model(models)
    finally:
        streams.close()


def test_close_ends_every_stream_with_an_error_and_releases_every_thread(
    models: ModelManager, config: ServerConfig, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    start_the_models_threads(models, decode_options)  # the model's, not the streams': they stay
    before = set(threading.enumerate())
    streams = StreamManager(models, config)
    lossy = streams.subscribe(request([bikes]))
    blocked = streams.subscribe(request([bikes]), Delivery.EVERY_FRAME)
    first_result(lossy)
    # The every-frame pipeline now waits on its subscriber, who reads nothing: a full queue, one held back.
    (waiting,) = [p for p in streams.pipelines() if p.stream_id == blocked.stream_id]
    assert wait_for(lambda: waiting.frames_inferred == config.subscriber_queue + 1)
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
        streams.subscribe(request([bikes]))
    # Stopping released the pipelines' leases.
    assert nothing_holds_the_model(models)


def test_an_unknown_model_is_refused_before_anything_starts(
    streams: StreamManager, bikes: SourceSpec
) -> None:
    with pytest.raises(NotFoundError):
        streams.subscribe(request([bikes], "no-such-model"))
    with pytest.raises(InvalidArgumentError):
        streams.subscribe(request([]))
    assert streams.pipelines() == [] and streams.subscriber_count == 0
