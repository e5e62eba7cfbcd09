"""Source readers against real things: files on disk, a loopback HTTP server, a loopback GStreamer RTSP
server.

What a request may name is tested in test_source_policy.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from media import media
from streaming import HttpFileServer, RecordingSink, RtspServer, copy_into, free_port, running_rtsp_server
from visionrpc.server.streams.buffers import Gate, SourceBuffer
from visionrpc.server.streams.sources import SourceReader
from visionrpc.server.streams.types import (
    Frame,
    FramePolicy,
    ReconnectPolicy,
    SourceEventKind,
    SourceKind,
    SourceSpec,
)

BIKES_FRAMES = 250
# Short timeouts and backoffs keep the suite quick; 1 s of read timeout is ~25 frame times at 25 fps.
FAST = ReconnectPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, open_timeout_s=3.0, read_timeout_s=1.0)

Started = SourceEventKind.STARTED
Reconnecting = SourceEventKind.RECONNECTING
Reconnected = SourceEventKind.RECONNECTED
Ended = SourceEventKind.ENDED
Error = SourceEventKind.ERROR


# Fixture names are this module's own: the folder's conftest.py (the pipeline suites') has `bikes` and
# `media_root` fixtures of a different shape.


@pytest.fixture(scope="module")
def bikes_mp4() -> Path:
    """640x272, 250 frames, 25 fps."""
    return media("bikes.mp4")


@pytest.fixture
def rtsp_server(bikes_mp4: Path) -> Iterator[RtspServer]:
    """A running RTSP server looping bikes.mp4 at rtsp_server.url; killed after the test."""
    with running_rtsp_server(bikes_mp4) as server:
        yield server


@pytest.fixture(scope="module")
def http_files(bikes_mp4: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFileServer]:
    with HttpFileServer(copy_into(tmp_path_factory.mktemp("http-root"), bikes_mp4)) as server:
        yield server


@pytest.fixture
def start_reader() -> Iterator[Callable[..., SourceReader]]:
    """Starts readers and makes sure every one is stopped (and its thread gone) after the test."""
    readers: list[SourceReader] = []

    def start(
        spec: SourceSpec,
        sink: RecordingSink | SourceBuffer,
        *,
        policy: FramePolicy = FramePolicy.AUTO,
        max_fps: float | None = None,
        reconnect: ReconnectPolicy = FAST,
    ) -> SourceReader:
        demand = sink if isinstance(sink, SourceBuffer) else None
        reader = SourceReader(
            spec, sink, policy=policy.resolve(spec), max_fps=max_fps, reconnect=reconnect, demand=demand
        )
        readers.append(reader)
        reader.start()
        return reader

    yield start
    for reader in readers:
        assert reader.stop(timeout_s=10), f"reader {reader.spec.index} did not stop"


def file_spec(path: Path, index: int = 0) -> SourceSpec:
    return SourceSpec(index=index, kind=SourceKind.FILE, location=str(path))


def url_spec(url: str, index: int = 0) -> SourceSpec:
    return SourceSpec(index=index, kind=SourceKind.URL, location=url)


# -- files -------------------------------------------------------------------------------------------------


def assert_whole_clip(sink: RecordingSink, reader: SourceReader) -> None:
    assert sink.wait_for(lambda s: bool(s.events) and s.events[-1].kind in (Ended, Error), 60)
    assert sink.kinds() == [Started, Ended]
    info = sink.events[0].info
    assert info is not None
    assert (info.index, info.width, info.height, info.frame_count) == (0, 640, 272, BIKES_FRAMES)
    assert info.fps == pytest.approx(25, abs=0.5)
    frames = sink.snapshot()
    assert [f.sequence_number for f in frames] == list(range(BIKES_FRAMES))
    assert {(f.shape, f.dtype) for f in frames} == {((272, 640, 3), "uint8")}
    stamps = [f.timestamp_ms for f in frames]
    assert stamps[0] == pytest.approx(0, abs=1)
    assert all(b > a for a, b in pairwise(stamps)), "timestamps must increase"
    assert stamps[-1] == pytest.approx((BIKES_FRAMES - 1) * 40, abs=5)
    assert (reader.frames_read, reader.frames_skipped) == (BIKES_FRAMES, 0)
    assert reader.frames_retrieved == BIKES_FRAMES
    reader.stop(timeout_s=5)
    assert not reader.alive


def test_a_file_source_reads_every_frame_then_ends(
    bikes_mp4: Path, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink()
    reader = start_reader(file_spec(bikes_mp4), sink)
    assert_whole_clip(sink, reader)


def test_an_http_url_source_reads_the_same_frames(
    http_files: HttpFileServer, start_reader: Callable[..., SourceReader]
) -> None:
    spec = url_spec(http_files.url("bikes.mp4"))
    assert not spec.live  # a recorded file over HTTP: every frame, an end
    before = http_files.requests
    sink = RecordingSink()
    reader = start_reader(spec, sink)
    assert_whole_clip(sink, reader)
    assert http_files.requests > before


def test_max_fps_paces_a_file_without_skipping(
    bikes_mp4: Path, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink(stop_after=12)  # answering False ends the reader quietly
    reader = start_reader(file_spec(bikes_mp4), sink, max_fps=40)
    assert sink.wait_for(lambda s: len(s.frames) >= 12)
    reader.stop(timeout_s=5)
    frames = sink.snapshot()
    assert [f.sequence_number for f in frames] == list(range(12))
    assert reader.frames_skipped == 0 and reader.frames_read == 12
    assert sink.kinds() == [Started]  # neither ENDED nor ERROR: the sink stopped it
    # Paced: 11 intervals of 1/40 s at least (a lower bound sleeping guarantees), far below the decode speed.
    span = frames[-1].capture_time - frames[0].capture_time
    assert 11 / 40 * 0.9 <= span < 10


@pytest.mark.parametrize(
    ("policy", "max_fps", "start_frame", "retrieved"),
    [
        # Decoded far faster than 5 fps: a frame or two kept, the rest grabbed only.
        pytest.param(FramePolicy.NEWEST_FRAME, 5.0, 0, "delivered", id="newest frame, max_fps 5"),
        pytest.param(FramePolicy.NEWEST_FRAME, None, 0, "delivered", id="newest frame, no cap"),
        pytest.param(FramePolicy.EVERY_FRAME, 100.0, 200, "delivered + the first", id="resumed at 200"),
        pytest.param(FramePolicy.EVERY_FRAME, None, 0, "delivered", id="every frame"),
    ],
)
def test_a_file_converts_only_the_frames_it_delivers(
    bikes_mp4: Path,
    start_reader: Callable[..., SourceReader],
    policy: FramePolicy,
    max_fps: float | None,
    start_frame: int,
    retrieved: str,
) -> None:
    sink = RecordingSink()
    spec = SourceSpec(index=0, kind=SourceKind.FILE, location=str(bikes_mp4), start_frame=start_frame)
    reader = start_reader(spec, sink, policy=policy, max_fps=max_fps)
    assert sink.wait_for(sink.has(Ended), 60)
    delivered = [f.sequence_number for f in sink.snapshot()]
    assert reader.frames_read == BIKES_FRAMES
    assert (
        delivered[0] == start_frame and len(delivered) + reader.frames_skipped == BIKES_FRAMES - start_frame
    )
    # The first frame is converted for STARTED (its size) even when a resumed file does not deliver it.
    expected = len(delivered) + (1 if retrieved == "delivered + the first" else 0)
    assert reader.frames_retrieved == expected
    if max_fps == 5.0:
        assert reader.frames_skipped > BIKES_FRAMES / 2


@pytest.mark.parametrize("name", ["notes.mp4", "does-not-exist.mp4"])
def test_a_file_that_is_not_a_video_is_an_error(
    name: str, tmp_path: Path, start_reader: Callable[..., SourceReader]
) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 100)
    sink = RecordingSink()
    reader = start_reader(file_spec(tmp_path / name), sink)
    assert sink.wait_for(sink.has(Error))
    assert sink.kinds() == [Error]
    assert sink.frames == []
    assert reader.stop(timeout_s=5)


# -- RTSP --------------------------------------------------------------------------------------------------


def test_rtsp_frames_arrive_in_order(
    rtsp_server: RtspServer, start_reader: Callable[..., SourceReader]
) -> None:
    spec = url_spec(rtsp_server.url)
    assert spec.live
    sink = RecordingSink()
    reader = start_reader(spec, sink, policy=FramePolicy.AUTO)
    assert sink.wait_for(lambda s: len(s.frames) >= 40)
    reader.stop()
    assert sink.kinds() == [Started]
    info = sink.events[0].info
    assert info is not None
    assert (info.width, info.height, info.frame_count) == (640, 272, 0)
    assert info.fps == pytest.approx(25, abs=1)
    frames = sink.snapshot()
    assert [f.sequence_number for f in frames] == list(range(len(frames)))  # no max_fps: nothing skipped
    stamps = [f.timestamp_ms for f in frames]
    assert all(b >= a for a, b in pairwise(stamps))


def test_rtsp_max_fps_skips_frames(
    rtsp_server: RtspServer, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink()
    reader = start_reader(url_spec(rtsp_server.url), sink, max_fps=5)
    assert sink.wait_for(lambda s: len(s.frames) >= 6)
    reader.stop()
    numbers = [f.sequence_number for f in sink.snapshot()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    assert any(b - a > 1 for a, b in pairwise(numbers)), "expected gaps"
    assert reader.frames_skipped > 0
    assert reader.frames_read == len(numbers) + reader.frames_skipped
    assert reader.frames_retrieved == len(numbers), "skipped frames are grabbed, never converted"


@dataclass(frozen=True)
class Taken:
    sequence_number: int
    newest_before: int  # the newest frame grabbed just before the consumer came for this one


def consume(buffer: SourceBuffer, gate: Gate, reader: SourceReader, count: int, busy_s: float) -> list[Taken]:
    """A pipeline's inference thread in miniature: take the newest frame, work on it for `busy_s`, repeat."""
    taken: list[Taken] = []
    while len(taken) < count:
        with gate.lock:
            newest_before = reader.frames_read - 1
            frame: Frame | None = None
            while frame is None:
                _, frame = buffer.take(True)
                if frame is None:
                    assert gate.work.wait(10), "no frame within 10 s"
        taken.append(Taken(frame.sequence_number, newest_before))
        time.sleep(busy_s)  # stands in for inference: the consumer is away this long (a workload, not a wait)
    return taken


def test_a_live_newest_frame_source_converts_only_frames_the_pipeline_will_take(
    rtsp_server: RtspServer, start_reader: Callable[..., SourceReader]
) -> None:
    gate = Gate()
    buffer = SourceBuffer(gate, FramePolicy.NEWEST_FRAME, 1)
    reader = start_reader(url_spec(rtsp_server.url), buffer, policy=FramePolicy.NEWEST_FRAME)
    # Away 0.2 s per frame on a 25 fps camera: ~5 frames arrive per frame taken. The first frames teach the
    # buffer how long the consumer stays away (until then, and in the connection's first burst, every frame
    # is converted); the counts are compared after them.
    taken = consume(buffer, gate, reader, count=5, busy_s=0.2)
    read_before, retrieved_before = reader.frames_read, reader.frames_retrieved
    taken += consume(buffer, gate, reader, count=15, busy_s=0.2)
    read, retrieved = reader.frames_read - read_before, reader.frames_retrieved - retrieved_before
    with gate.lock:
        gate.stopping = True  # lets the reader's next put_frame end it
    reader.stop()
    numbers = [t.sequence_number for t in taken]
    assert numbers == sorted(set(numbers))
    # Never staler than converting every frame: the frame taken is the newest grabbed (or the one before,
    # when the consumer came between a grab and its decision).
    stale = [t for t in taken if t.sequence_number < t.newest_before - 1]
    assert not stale, f"frames older than the newest grabbed were taken: {stale}"
    # Most frames were grabbed only: about two converted per frame taken (the lookahead), not five.
    assert 15 <= retrieved < 0.6 * read, f"{retrieved} of {read} frames converted"
    # Counted as skipped, like frames replaced in the buffer: taken + skipped + pending or refused = read.
    with gate.lock:
        skipped = reader.frames_skipped + buffer.skipped
    assert reader.frames_read - 2 <= len(taken) + skipped <= reader.frames_read


def test_rtsp_reconnects_after_the_server_dies_and_returns(
    rtsp_server: RtspServer, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink()
    reader = start_reader(url_spec(rtsp_server.url), sink)
    assert sink.wait_for(lambda s: len(s.frames) >= 30)

    rtsp_server.stop()
    assert sink.wait_for(sink.has(Reconnecting, 3))
    before = sink.frame_count()
    rtsp_server.restart()
    assert sink.wait_for(sink.has(Reconnected))
    assert sink.wait_for(lambda s: len(s.frames) >= before + 10)
    reader.stop()

    kinds = sink.kinds()
    reconnecting = sink.of_kind(Reconnecting)
    assert kinds[0] is Started and kinds.count(Reconnected) == 1
    assert [e.attempt for e in reconnecting] == list(range(1, len(reconnecting) + 1))
    assert kinds.index(Reconnected) > kinds.index(Reconnecting)
    assert all(e.reason for e in reconnecting)
    reconnected = sink.of_kind(Reconnected)[0].info
    assert reconnected is not None and (reconnected.width, reconnected.height) == (640, 272)
    numbers = [f.sequence_number for f in sink.snapshot()]
    assert numbers == list(range(len(numbers))), "sequence numbers continue across the reconnect"


def test_a_frozen_server_is_a_disconnect_and_stop_stays_prompt(
    rtsp_server: RtspServer, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink()
    reader = start_reader(url_spec(rtsp_server.url), sink)
    assert sink.wait_for(lambda s: len(s.frames) >= 30)

    rtsp_server.freeze()
    assert sink.wait_for(sink.has(Reconnecting), timeout_s=10)
    assert "stall" in sink.of_kind(Reconnecting)[0].reason
    rtsp_server.thaw()
    assert sink.wait_for(sink.has(Reconnected))

    rtsp_server.freeze()  # now stop while a read is blocked on the hung server
    time.sleep(0.2)
    began = time.monotonic()
    assert reader.stop(timeout_s=10)
    took = time.monotonic() - began
    assert not reader.alive
    assert took < FAST.read_timeout_s + 2, f"stop took {took:.1f}s"


def test_a_live_source_with_nothing_listening_keeps_reconnecting(
    start_reader: Callable[..., SourceReader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="visionrpc.server.streams")
    url = f"rtsp://viewer:hunter2@127.0.0.1:{free_port()}/bikes"
    sink = RecordingSink()
    reader = start_reader(url_spec(url), sink, reconnect=FAST)
    assert sink.wait_for(sink.has(Reconnecting, 3))
    reader.stop()
    assert set(sink.kinds()) == {Reconnecting}, "a camera that is not up yet is not an error"
    assert [e.attempt for e in sink.events][:3] == [1, 2, 3]
    assert "hunter2" not in caplog.text and "hunter2" not in repr(sink.events)
    assert "***@127.0.0.1" in caplog.text


def test_a_live_source_gives_up_after_max_attempts(start_reader: Callable[..., SourceReader]) -> None:
    policy = ReconnectPolicy(initial_backoff_s=0.02, max_backoff_s=0.05, max_attempts=2, open_timeout_s=2.0)
    sink = RecordingSink()
    reader = start_reader(url_spec(f"rtsp://127.0.0.1:{free_port()}/bikes"), sink, reconnect=policy)
    assert sink.wait_for(sink.has(Ended))
    assert sink.kinds() == [Reconnecting, Reconnecting, Ended]
    assert "gave up after 2" in sink.events[-1].reason
    assert reader.stop(timeout_s=5)
