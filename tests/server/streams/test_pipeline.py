"""Stream pipelines in-process but real: the real SourceReader on bikes.mp4, the real yolov3-tiny engine.

A full pass over bikes.mp4 (250 frames) takes ~8 s on 2 CPU cores, so each full pass checks several things;
tests about starting and stopping read a few results and leave.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import pytest
from conftest import wait_for
from media import media
from streaming import RtspServer, drain, free_port, running_rtsp_server
from visionrpc.engines.onnxruntime_engine import OnnxRuntimeEngine
from visionrpc.server.domain import ChannelOrder
from visionrpc.server.errors import InvalidArgumentError
from visionrpc.server.models.manager import ModelManager
from visionrpc.server.models.repository import ModelId
from visionrpc.server.predictor import InputImage
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.pipeline import FRAME_BUFFER, SHUTDOWN_REASON, Pipeline
from visionrpc.server.streams.source_policy import SourcePolicy, resolve_source
from visionrpc.server.streams.subscription import Subscription
from visionrpc.server.streams.types import (
    Delivery,
    FrameImage,
    FramePolicy,
    FrameResult,
    ReconnectPolicy,
    SourceEventKind,
    SourceInfo,
    SourceKind,
    SourceSpec,
    StreamEnd,
    StreamMessage,
    StreamOptions,
    StreamStatus,
)

MODEL = "yolov3-tiny-coco"
BIKES_FRAMES = 250
BIKES_INFO = SourceInfo(index=0, width=640, height=272, fps=25.0, frame_count=BIKES_FRAMES)


def start_the_models_threads(models: ModelManager, decode_options: DecodeOptions) -> None:
    """Loads MODEL and runs one image through it: its batch scheduler starts its thread on first use."""
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        predictor.infer([InputImage(np.zeros((64, 64, 3), np.uint8), ChannelOrder.BGR)], decode_options)


def take_results(subscription: Subscription, count: int, timeout_s: float = 30.0) -> list[FrameResult]:
    results: list[FrameResult] = []
    while len(results) < count:
        message = subscription.get(timeout_s=timeout_s)
        assert message is not None and not isinstance(message, StreamEnd), message
        if isinstance(message, FrameResult):
            results.append(message)
    return results


def is_status(message: StreamMessage, event: SourceEventKind, source_index: int | None = None) -> bool:
    return (
        isinstance(message, StreamStatus)
        and message.event is event
        and source_index in (None, message.source_index)
    )


def results_of(messages: Sequence[StreamMessage]) -> list[FrameResult]:
    return [m for m in messages if isinstance(m, FrameResult)]


def cursor_of(message: StreamMessage) -> int:
    assert not isinstance(message, StreamEnd), "the end has no cursor"
    return message.cursor


def drain_in_background(subscription: Subscription) -> Callable[[], list[StreamMessage]]:
    """Drains on a thread of its own; the returned function joins it and gives the messages."""
    box: list[list[StreamMessage]] = []
    thread = threading.Thread(target=lambda: box.append(drain(subscription)), daemon=True)
    thread.start()

    def result() -> list[StreamMessage]:
        thread.join(120)
        assert box, "the consumer thread failed"
        return box[0]

    return result


def new_pipeline(
    models: ModelManager,
    sources: Sequence[SourceSpec],
    decode_options: DecodeOptions,
    options: StreamOptions | None = None,
    *,
    subscriber_queue: int = 32,
    replay_messages: int = 64,
    linger_s: float = 2.0,
    reconnect: ReconnectPolicy | None = None,
) -> Pipeline:
    """A pipeline owning a fresh lease on MODEL (released when it stops)."""
    return Pipeline(
        sources,
        models.lease(ModelId.parse(MODEL)),
        decode_options,
        options or StreamOptions(),
        subscriber_queue=subscriber_queue,
        replay_messages=replay_messages,
        linger_s=linger_s,
        reconnect=reconnect,
    )


def test_a_file_pipeline_serves_every_frame_once_to_fast_subscribers_while_a_slow_one_drops(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    pipeline = new_pipeline(models, [bikes], decode_options, subscriber_queue=8, linger_s=0.2)
    fast = [pipeline.subscribe() for _ in range(3)]
    slow = pipeline.subscribe()
    fast_results = [drain_in_background(subscription) for subscription in fast]
    slow_messages = drain(slow, pause_s=0.1)
    fast_messages = [result() for result in fast_results]

    for messages in fast_messages:
        first, *_, ended, end = messages
        assert first == StreamStatus(SourceEventKind.STARTED, 0, sources=(BIKES_INFO,), cursor=1)
        assert is_status(ended, SourceEventKind.ENDED) and end == StreamEnd()
        # Every published message has the next cursor, 1, 2, 3, ...: STARTED, 250 results, ENDED.
        assert [cursor_of(m) for m in messages[:-1]] == list(range(1, BIKES_FRAMES + 3))
        results = results_of(messages)
        assert [r.sequence_number for r in results] == list(range(BIKES_FRAMES))
        assert all(r.results_dropped == 0 and r.frames_skipped == 0 and r.frame_jpeg == b"" for r in results)
        stamps = [r.timestamp_ms for r in results]
        assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(249 * 40.0, abs=1.0)
        found = {d.class_name for r in results for d in r.prediction.detections}
        assert {"person", "car"} <= found
        assert all(r.prediction.image_size.width == 640 for r in results)
    # Decoded once and inferred once for all four subscribers.
    assert pipeline.frames_decoded == BIKES_FRAMES
    assert pipeline.frames_inferred == BIKES_FRAMES

    # The slow subscriber lost its own oldest results, was told so cumulatively, and still got the ends.
    slow_results = results_of(slow_messages)
    drops = [r.results_dropped for r in slow_results]
    assert drops == sorted(drops) and drops[-1] > drops[0]
    assert len(slow_results) + slow.results_dropped == BIKES_FRAMES
    assert is_status(slow_messages[0], SourceEventKind.STARTED)
    assert slow_messages[-1] == StreamEnd() and is_status(slow_messages[-2], SourceEventKind.ENDED)
    sequences = [r.sequence_number for r in slow_results]
    assert sequences == sorted(sequences) and sequences[-1] == BIKES_FRAMES - 1
    # The slow one sees the same cursors, with jumps where its results were dropped: a result's cursor is
    # its frame's (STARTED is 1, frame n is n + 2), whoever receives it.
    slow_cursors = [cursor_of(m) for m in slow_messages[:-1]]
    assert slow_cursors[0] == 1 and slow_cursors[-1] == BIKES_FRAMES + 2
    assert all(a < b for a, b in itertools.pairwise(slow_cursors))
    assert all(r.cursor == r.sequence_number + 2 for r in slow_results)

    # A finished pipeline releases its threads by itself; its subscriptions keep answering with the end.
    assert pipeline.join(10) and not pipeline.running
    assert all(not reader.alive for reader in pipeline.readers)
    assert fast[0].get(timeout_s=0) == StreamEnd()
    for subscription in (*fast, slow):
        subscription.close()


def test_every_frame_delivery_waits_for_its_slow_subscriber(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    queue = 4
    pipeline = new_pipeline(models, [bikes], decode_options, subscriber_queue=queue, linger_s=0.2)
    subscription = pipeline.subscribe(Delivery.EVERY_FRAME)
    # The pipeline waits: its queue full, one result held back, the file read no further than its buffer.
    assert wait_for(lambda: pipeline.frames_inferred == queue + 1)
    time.sleep(2.0)  # an observation window: a lossy subscriber would have lost ~50 results by now
    assert pipeline.frames_inferred <= queue + 1
    assert pipeline.frames_decoded <= pipeline.frames_inferred + FRAME_BUFFER + 1
    with pytest.raises(InvalidArgumentError) as refused:
        pipeline.subscribe()
    assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"

    messages = drain(subscription)
    results = results_of(messages)
    assert [r.sequence_number for r in results] == list(range(BIKES_FRAMES))
    assert subscription.results_dropped == 0 and all(r.results_dropped == 0 for r in results)
    assert messages[-1] == StreamEnd()
    assert [cursor_of(m) for m in messages[:-1]] == list(range(1, len(messages)))
    subscription.close()
    assert pipeline.join(10)


def test_every_frame_delivery_is_refused_beside_another_subscriber_and_for_live_sources(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    pipeline = new_pipeline(models, [bikes], decode_options, linger_s=0.0)
    lossy = pipeline.subscribe()
    with pytest.raises(InvalidArgumentError) as refused:
        pipeline.subscribe(Delivery.EVERY_FRAME)
    assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    lossy.close()
    assert pipeline.join(10)

    camera = SourceSpec(0, SourceKind.URL, "rtsp://127.0.0.1:9/camera")
    live = new_pipeline(models, [camera], decode_options)
    with pytest.raises(InvalidArgumentError) as refused:
        live.subscribe(Delivery.EVERY_FRAME)
    assert refused.value.reason == "EVERY_FRAME_DELIVERY_UNAVAILABLE"
    assert not live.running and live.threads == ()  # refused before anything started
    live.close()


def test_the_last_subscriber_leaving_stops_it_after_the_linger_and_a_rejoin_within_it_resumes(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    before = set(threading.enumerate())
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        engine = predictor.engine
    assert isinstance(engine, OnnxRuntimeEngine)
    pipeline = new_pipeline(models, [bikes], decode_options, linger_s=1.0)
    first = pipeline.subscribe()
    seen = take_results(first, 5)
    first.close()
    first.close()  # idempotent
    assert first.get(timeout_s=0) == StreamEnd()  # a closed subscription never blocks its reader
    time.sleep(0.3)  # a frame in flight when it left may still finish
    assert pipeline.running and pipeline.subscriber_count == 0
    # Nobody watches: inference idles (the file waits) instead of running ahead for nobody.
    idle_inferred = pipeline.frames_inferred
    time.sleep(0.2)  # an observation window
    assert pipeline.frames_inferred == idle_inferred

    again = pipeline.subscribe()  # within the linger: the same pipeline, where it was
    # A joiner gets the STARTED status first, with its original cursor.
    assert again.get(timeout_s=5) == StreamStatus(SourceEventKind.STARTED, 0, sources=(BIKES_INFO,), cursor=1)
    resumed = take_results(again, 3)
    assert resumed[0].sequence_number > seen[-1].sequence_number
    assert resumed[0].cursor > seen[-1].cursor
    assert [r.cursor for r in resumed] == [r.sequence_number + 2 for r in resumed]
    # Resumed, neither restarted nor run ahead: at most a queue and a buffer beyond what the first one took.
    assert resumed[0].sequence_number <= seen[-1].sequence_number + 32 + FRAME_BUFFER + 2

    # While it runs it holds a lease on the model: unloading detaches it but cannot close it.
    models.unload(ModelId.parse(MODEL))
    assert not engine.closed
    again.close()
    time.sleep(0.5)
    assert pipeline.running  # still lingering
    assert pipeline.join(5) and not pipeline.running
    assert engine.closed  # the pipeline's lease was the last one
    assert all(not reader.alive for reader in pipeline.readers)
    assert wait_for(lambda: set(threading.enumerate()) <= before), set(threading.enumerate()) - before


@pytest.mark.parametrize(
    "stop", ["the last subscriber leaves", "the stream ends", "the server closes it", "closed before it ran"]
)
def test_the_pipeline_holds_its_model_lease_until_it_stops_however_it_stops(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions, stop: str
) -> None:
    with models.acquire(ModelId.parse(MODEL)) as predictor:
        engine = predictor.engine
    assert isinstance(engine, OnnxRuntimeEngine)
    # The stream that ends starts near the end of the file, so it ends in a few frames.
    source = dataclasses.replace(bikes, start_frame=BIKES_FRAMES - 5) if stop == "the stream ends" else bikes
    pipeline = new_pipeline(models, [source], decode_options, linger_s=0.2)
    # Unloading detaches the model; it closes when its last lease goes, and the pipeline holds one from
    # the start (it was handed the lease when it was made).
    models.unload(ModelId.parse(MODEL))
    assert not engine.closed
    subscription: Subscription | None = None
    if stop != "closed before it ran":
        subscription = pipeline.subscribe()
        take_results(subscription, 1)
        assert not engine.closed

    if stop == "the last subscriber leaves":
        assert subscription is not None
        subscription.close()
    elif stop == "the stream ends":
        assert subscription is not None
        assert drain(subscription)[-1] == StreamEnd()
    else:
        pipeline.close()

    assert pipeline.join(10) and pipeline.finished
    assert engine.closed  # released by the time the pipeline has stopped
    if subscription is not None:
        subscription.close()


def test_frame_images_are_jpegs_of_the_frame_raw_or_annotated(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    capture = cv2.VideoCapture(bikes.location)
    originals = [capture.read()[1] for _ in range(30)]
    capture.release()
    images: dict[FrameImage, list[FrameResult]] = {}
    for mode in (FrameImage.RAW, FrameImage.ANNOTATED):
        options = StreamOptions(frame_image=mode, jpeg_quality=95)
        pipeline = new_pipeline(models, [bikes], decode_options, options, linger_s=0.0)
        subscription = pipeline.subscribe()
        images[mode] = take_results(subscription, 30)
        subscription.close()
        assert pipeline.join(10)
    for raw, annotated in zip(images[FrameImage.RAW], images[FrameImage.ANNOTATED], strict=True):
        assert raw.sequence_number == annotated.sequence_number
        raw_pixels = cv2.imdecode(np.frombuffer(raw.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        drawn_pixels = cv2.imdecode(np.frombuffer(annotated.frame_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert raw_pixels is not None and drawn_pixels is not None
        assert raw_pixels.shape == drawn_pixels.shape == (272, 640, 3)
        original = originals[raw.sequence_number].astype(np.float32)
        assert np.abs(raw_pixels.astype(np.float32) - original).mean() < 3.0  # the frame itself, lossy
        if annotated.prediction.detections:  # boxes drawn where the detections are
            box = annotated.prediction.detections[0].box
            x, y = int(box.x_min), int(box.y_min)
            patch = (slice(max(0, y - 2), y + 3), slice(max(0, x - 2), x + 3))
            assert np.abs(drawn_pixels[patch].astype(np.float32) - raw_pixels[patch]).max() > 40
    assert any(r.prediction.detections for r in images[FrameImage.ANNOTATED])


def test_sources_are_batched_round_robin_and_close_ends_the_stream_with_an_error(
    models: ModelManager, bikes: SourceSpec, source_policy: SourcePolicy, decode_options: DecodeOptions
) -> None:
    start_the_models_threads(models, decode_options)  # the model's, not the streams': they stay
    before = set(threading.enumerate())
    second = resolve_source(1, path="bikes.mp4", policy=source_policy)
    pipeline = new_pipeline(models, [bikes, second], decode_options)
    subscription = pipeline.subscribe()
    first = subscription.get(timeout_s=10)
    assert first == StreamStatus(
        SourceEventKind.STARTED,
        0,
        sources=(BIKES_INFO, SourceInfo(1, 640, 272, 25.0, BIKES_FRAMES)),
        cursor=1,
    )
    results = take_results(subscription, 40)
    for index in (0, 1):  # each source in order from its first frame, neither starved
        sequences = [r.sequence_number for r in results if r.source_index == index]
        assert sequences == list(range(len(sequences))) and len(sequences) >= 15
    # Frames of both sources ready at once go through one predict call: they share its inference time.
    batched = sum(
        a.source_index != b.source_index
        and a.prediction.timings.inference_ms == b.prediction.timings.inference_ms
        for a, b in itertools.pairwise(results)
    )
    assert batched >= 15
    pipeline.close()  # server shutdown: at once, whoever watches
    rest = drain(subscription, timeout_s=5)
    assert rest[-1] == StreamEnd(error=SHUTDOWN_REASON)
    assert not pipeline.running and pipeline.threads == ()
    assert wait_for(lambda: set(threading.enumerate()) <= before), set(threading.enumerate()) - before
    subscription.close()


def test_an_unreadable_source_ends_the_whole_pipeline_with_an_error(
    models: ModelManager, bikes: SourceSpec, source_policy: SourcePolicy, decode_options: DecodeOptions
) -> None:
    broken = resolve_source(1, path="broken.mp4", policy=source_policy)
    pipeline = new_pipeline(models, [bikes, broken], decode_options)
    subscription = pipeline.subscribe()
    messages = drain(subscription, timeout_s=20)
    error, end = messages[-2:]
    assert (
        isinstance(error, StreamStatus) and error.event is SourceEventKind.ERROR and error.source_index == 1
    )
    assert isinstance(end, StreamEnd) and "source 1" in end.error
    assert results_of(messages) == []  # STARTED never came, so no frame was inferred
    assert pipeline.join(10)
    subscription.close()


def test_newest_frame_policy_skips_stale_frames_and_counts_them(
    models: ModelManager, bikes: SourceSpec, decode_options: DecodeOptions
) -> None:
    options = StreamOptions(frame_policy=FramePolicy.NEWEST_FRAME)
    pipeline = new_pipeline(models, [bikes], decode_options, options, linger_s=0.0)
    subscription = pipeline.subscribe()
    results = results_of(drain(subscription))
    # The file decodes far faster than inference: most frames are replaced before being inferred.
    assert 0 < len(results) < BIKES_FRAMES / 2
    skipped = [r.frames_skipped for r in results]
    assert skipped == sorted(skipped) and skipped[-1] > 0
    assert results[-1].sequence_number == BIKES_FRAMES - 1  # the newest frame is never the one dropped
    assert len(results) + results[-1].frames_skipped == BIKES_FRAMES
    assert pipeline.frames_decoded == BIKES_FRAMES and pipeline.frames_inferred == len(results)
    subscription.close()
    assert pipeline.join(10)


def test_live_sources_skip_to_stay_current_and_a_late_camera_joins_without_holding_up_the_other(
    models: ModelManager, decode_options: DecodeOptions
) -> None:
    late_port = free_port()
    late = RtspServer(media("bikes.mp4"), mount="/late")
    reconnect = ReconnectPolicy(initial_backoff_s=0.2, max_backoff_s=0.5, open_timeout_s=2, read_timeout_s=2)
    with running_rtsp_server(media("bikes.mp4")) as camera:
        sources = [
            SourceSpec(0, SourceKind.URL, camera.url),
            SourceSpec(1, SourceKind.URL, f"rtsp://127.0.0.1:{late_port}/late"),  # nothing there yet
        ]
        options = StreamOptions(max_fps=5.0)
        pipeline = new_pipeline(models, sources, decode_options, options, reconnect=reconnect, linger_s=0.0)
        subscription = pipeline.subscribe()
        try:
            *attempts, started = collect(subscription, lambda m: is_status(m[-1], SourceEventKind.STARTED))
            # The dead camera is not waited for: STARTED lists the camera that answered; only the dead
            # one's reconnection attempts may come before it.
            assert all(is_status(m, SourceEventKind.RECONNECTING, 1) for m in attempts)
            assert isinstance(started, StreamStatus)
            assert [(i.index, i.width, i.height, i.frame_count) for i in started.sources] == [
                (0, 640, 272, 0)
            ]
            messages = collect(subscription, lambda m: len(results_of(m)) >= 8)
            assert any(is_status(m, SourceEventKind.RECONNECTING, 1) for m in messages)
            live = results_of(messages)
            # max_fps 5 on a 25 fps camera: about four frames in five skipped, counted; sequence numbers gap.
            assert live[-1].frames_skipped > live[0].frames_skipped
            assert live[-1].sequence_number - live[0].sequence_number > 2 * (len(live) - 1)

            late.start(late_port)
            messages = collect(
                subscription, lambda m: any(r.source_index == 1 for r in results_of(m)), timeout_s=30
            )
            # Its late start announces STARTED again, now listing both sources; its results follow.
            statuses = [m for m in messages if isinstance(m, StreamStatus)]
            starts = [
                (s.source_index, len(s.sources)) for s in statuses if s.event is SourceEventKind.STARTED
            ]
            assert starts == [(1, 2)]
        finally:
            late.stop()
            subscription.close()
        assert pipeline.join(10)


def collect(
    subscription: Subscription, done: Callable[[list[StreamMessage]], bool], timeout_s: float = 20.0
) -> list[StreamMessage]:
    """Messages until `done(messages)` holds (checked once there is one); fails on the end or timeout."""
    messages: list[StreamMessage] = []
    deadline = time.monotonic() + timeout_s
    while not messages or not done(messages):
        assert time.monotonic() < deadline, f"gave up after {len(messages)} messages: {messages[-3:]}"
        message = subscription.get(timeout_s=1.0)
        assert not isinstance(message, StreamEnd), message
        if message is not None:
            messages.append(message)
    return messages
