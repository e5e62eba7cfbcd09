"""The annotated video sink: real frames in, an MP4 out that OpenCV reads back, zones and lines drawn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from conftest import wait_for
from visionrpc.server.analytics.types import StreamAnalytics
from visionrpc.server.sinks import VideoSinkConfig, open_sink
from visionrpc.server.streams.types import FrameResult, StreamMessage

TEMPLATE = "recordings/{pipeline}-{start}.mp4"


def record(
    config: VideoSinkConfig, runs: list[tuple[StreamMessage, ...]], analytics: StreamAnalytics | None = None
) -> None:
    # All at once, far faster than a pipeline infers: a queue for all of them, so none is dropped.
    sink = open_sink(replace(config, queue_size=sum(map(len, runs))), analytics=analytics)
    assert sink.needs_pixels
    for messages in runs:
        for message in messages:
            sink.offer("gate", message)
    sink.close(timeout_s=60.0)
    status = sink.status()
    assert (status.failed, status.dropped, status.queued) == (0, 0, 0), status


def read_video(path: Path) -> tuple[list[npt.NDArray[np.uint8]], float]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} opens"
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(np.asarray(image, np.uint8))
    capture.release()
    return frames, fps


def source_frames(messages: tuple[StreamMessage, ...]) -> list[FrameResult]:
    return [m for m in messages if isinstance(m, FrameResult)]


# name: (configured fps, expected fps of the file)
RATES = {"the-source-rate": (None, 25.0), "a-configured-rate": (10.0, 10.0)}


@pytest.mark.parametrize(("fps", "expected_fps"), RATES.values(), ids=RATES.keys())
def test_a_run_becomes_one_playable_file_of_every_frame(
    messages: tuple[StreamMessage, ...], tmp_path: Path, fps: float | None, expected_fps: float
) -> None:
    record(VideoSinkConfig("rec", str(tmp_path / TEMPLATE), fps=fps), [messages])
    (path,) = (tmp_path / "recordings").iterdir()
    assert path.name.startswith("gate-") and path.suffix == ".mp4"
    frames, file_fps = read_video(path)
    assert len(frames) == len(source_frames(messages))
    assert frames[0].shape == (272, 640, 3)
    assert file_fps == pytest.approx(expected_fps)


def region_difference(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], x: slice, y: slice) -> float:
    return float(np.abs(a[y, x].astype(np.int16) - b[y, x].astype(np.int16)).mean())


def test_zones_and_lines_are_drawn_where_declared(
    messages: tuple[StreamMessage, ...], analytics: StreamAnalytics, tmp_path: Path
) -> None:
    # The same run recorded with and without the declared zone and line: both have the boxes, so what
    # differs is what the analytics drew (the yard: x 40..300, y 150..260; the gate: x = 320).
    record(VideoSinkConfig("plain", str(tmp_path / "plain.mp4")), [messages])
    record(VideoSinkConfig("drawn", str(tmp_path / "drawn.mp4")), [messages], analytics)
    plain, drawn = read_video(tmp_path / "plain.mp4")[0], read_video(tmp_path / "drawn.mp4")[0]
    source = source_frames(messages)[0].pixels
    assert source is not None
    inside_yard, on_gate = (slice(60, 280), slice(170, 250)), (slice(318, 323), slice(40, 120))
    away = (slice(520, 630), slice(160, 260))
    for frame_plain, frame_drawn in zip(plain, drawn, strict=True):
        assert region_difference(frame_drawn, frame_plain, *inside_yard) > 15, "the yard is tinted"
        assert region_difference(frame_drawn, frame_plain, *on_gate) > 60, "the gate line is drawn"
        assert region_difference(frame_drawn, frame_plain, *away) < 8, "elsewhere only codec noise"
    assert region_difference(drawn[0], source, *on_gate) > 60, "and the source had no line there"


def test_each_run_gets_a_new_file(messages: tuple[StreamMessage, ...], tmp_path: Path) -> None:
    # Two runs in the same second: the start time alone would name them the same.
    record(VideoSinkConfig("rec", str(tmp_path / TEMPLATE)), [messages, messages])
    paths = sorted((tmp_path / "recordings").iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(paths) == 2
    assert all(len(read_video(p)[0]) == len(source_frames(messages)) for p in paths)


def test_other_sources_are_not_recorded_and_frames_without_pixels_are_counted(
    messages: tuple[StreamMessage, ...], tmp_path: Path
) -> None:
    frames = source_frames(messages)
    sink = open_sink(VideoSinkConfig("rec", str(tmp_path / "one.mp4"), source_index=1))
    sink.offer("gate", frames[0])  # source 0: not this sink's
    sink.offer("gate", replace(frames[0], source_index=1, pixels=None))
    assert wait_for(lambda: sink.status().dropped == 1)
    sink.close()
    status = sink.status()
    assert (status.delivered, status.failed, status.dropped) == (0, 1, 1)
    assert "without pixels" in status.last_error
    assert not (tmp_path / "one.mp4").exists()
