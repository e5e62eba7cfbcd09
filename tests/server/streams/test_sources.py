"""Sources against real things: files on disk, a loopback HTTP server, a loopback GStreamer RTSP server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from media import media
from streaming import HttpFileServer, RecordingSink, RtspServer, copy_into, free_port, running_rtsp_server
from visionrpc.server.config import ServerConfig
from visionrpc.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    VisionRpcError,
)
from visionrpc.server.streams.sources import SourcePolicy, SourceReader, redact_url, resolve_source
from visionrpc.server.streams.types import (
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
def jail(tmp_path: Path, bikes_mp4: Path) -> Path:
    """root/bikes.mp4, clips/inner.mp4 -> ../bikes.mp4 (allowed), escape.mp4 -> outside (refused), ..."""
    root = tmp_path / "media"
    (root / "clips").mkdir(parents=True)
    (root / "bikes.mp4").write_bytes(bikes_mp4.read_bytes())  # a copy: a link to the cache would lead outside
    (root / "clips" / "inner.mp4").symlink_to("../bikes.mp4")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    (root / "escape.mp4").symlink_to(outside)
    (root / "escape-missing.mp4").symlink_to(tmp_path / "nothing-here.mp4")
    (root / "outside-dir").symlink_to(tmp_path)
    (root / "notes.mp4").write_text("this is not a video\n" * 100)
    return root


def policy_for(
    root: Path, *, hosts: tuple[str, ...] = ("cam.example",), devices: bool = False
) -> SourcePolicy:
    config = ServerConfig(media_root=root, allowed_url_hosts=hosts, enable_devices=devices)
    return SourcePolicy.from_config(config)


@pytest.fixture
def start_reader() -> Iterator[Callable[..., SourceReader]]:
    """Starts readers and makes sure every one is stopped (and its thread gone) after the test."""
    readers: list[SourceReader] = []

    def start(
        spec: SourceSpec,
        sink: RecordingSink,
        *,
        policy: FramePolicy = FramePolicy.AUTO,
        max_fps: float | None = None,
        reconnect: ReconnectPolicy = FAST,
    ) -> SourceReader:
        reader = SourceReader(spec, sink, policy=policy.resolve(spec), max_fps=max_fps, reconnect=reconnect)
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


# -- resolve_source ----------------------------------------------------------------------------------------

INVALID = (InvalidArgumentError, "INVALID_ARGUMENT")
OUTSIDE = (PermissionDeniedError, "SOURCE_OUTSIDE_MEDIA_ROOT")
SCHEME = (PermissionDeniedError, "URL_SCHEME_NOT_ALLOWED")
HOST = (PermissionDeniedError, "URL_HOST_NOT_ALLOWED")
Refusal = tuple[dict[str, object], tuple[type[VisionRpcError], str], str]

REFUSALS: dict[str, Refusal] = {
    # name: (source, (error, reason), violated field below sources[2]); the policy allows host cam.example
    "absolute-path": ({"path": "/etc/passwd"}, INVALID, ".path"),
    "windows-absolute": ({"path": "C:\\video.mp4"}, INVALID, ".path"),
    "dot-dot": ({"path": "../bikes.mp4"}, INVALID, ".path"),
    "inner-dot-dot": ({"path": "clips/../../x.mp4"}, INVALID, ".path"),
    "empty-path": ({"path": ""}, INVALID, ".path"),
    "directory": ({"path": "clips"}, INVALID, ".path"),
    "symlink-escape": ({"path": "escape.mp4"}, OUTSIDE, ".path"),
    "symlink-escape-missing-target": ({"path": "escape-missing.mp4"}, OUTSIDE, ".path"),
    "symlinked-directory-escape": ({"path": "outside-dir/secret.mp4"}, OUTSIDE, ".path"),
    "missing-file": ({"path": "nope.mp4"}, (NotFoundError, "SOURCE_NOT_FOUND"), ".path"),
    "scheme-not-allowed": ({"url": "ftp://cam.example/x.mp4"}, SCHEME, ".url"),
    "file-url": ({"url": "file:///etc/passwd"}, SCHEME, ".url"),
    "host-not-allowed": ({"url": "rtsp://evil.example/live"}, HOST, ".url"),
    "suffix-is-not-a-host": ({"url": "rtsp://notcam.example/live"}, HOST, ".url"),
    "malformed-ipv6": ({"url": "rtsp://[::1/live"}, INVALID, ".url"),
    "bad-port": ({"url": "rtsp://cam.example:99999/x"}, INVALID, ".url"),
    "no-scheme": ({"url": "cam.example/live"}, INVALID, ".url"),
    "no-host": ({"url": "rtsp:///live"}, INVALID, ".url"),
    "space": ({"url": "rtsp://cam.example/a b"}, INVALID, ".url"),
    "devices-disabled": ({"device": 0}, (PermissionDeniedError, "DEVICES_DISABLED"), ".device"),
    "negative-device": ({"device": -1}, INVALID, ".device"),
    "nothing": ({}, INVALID, ""),
    "two-at-once": ({"path": "bikes.mp4", "device": 0}, INVALID, ""),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_resolve_source_refuses(case: Refusal, jail: Path) -> None:
    source, (error, reason), field = case
    with pytest.raises(error) as info:
        resolve_source(2, **source, policy=policy_for(jail))  # type: ignore[arg-type]
    assert type(info.value) is error
    assert info.value.reason == reason
    assert [v.field for v in info.value.violations] == [f"sources[2]{field}"]


@pytest.mark.parametrize(
    "url", ["rtsp://admin:hunter2@cam.example:99x/live", "rtsp://admin:hun/ter2@cam.example/x"]
)
def test_malformed_url_refusals_never_show_the_credentials(url: str, jail: Path) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        resolve_source(0, url=url, policy=policy_for(jail))
    assert "hunter2" not in str(info.value) and "ter2" not in str(info.value.violations)


def test_host_refusal_names_the_host_and_never_the_credentials(jail: Path) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        resolve_source(0, url="rtsp://admin:hunter2@Evil.Example:554/live", policy=policy_for(jail))
    assert info.value.metadata == {"host": "evil.example"}
    shown = f"{info.value} {info.value.metadata} {info.value.violations}"
    assert "hunter2" not in shown and "admin" not in shown


ROOT = "<root>"  # the real media root
Acceptance = tuple[dict[str, object], tuple[str, ...], SourceKind, str]

ACCEPTED: dict[str, Acceptance] = {
    # name: (source, allowed hosts, kind, location)
    "file": ({"path": "bikes.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "link-inside-root": ({"path": "clips/inner.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "dot-segments": ({"path": "./clips/./inner.mp4"}, (), SourceKind.FILE, f"{ROOT}/bikes.mp4"),
    "allowed-host": ({"url": "rtsp://cam.example/a"}, ("cam.example",), SourceKind.URL, "rtsp://cam.example/a"),
    "host-case": ({"url": "RTSP://CAM.example/a"}, ("cam.example",), SourceKind.URL, "RTSP://CAM.example/a"),
    "any-host": ({"url": "http://10.1.2.3:8080/v.mp4"}, ("*",), SourceKind.URL, "http://10.1.2.3:8080/v.mp4"),
    "suffix": ({"url": "rtsps://a.cams.example/x"}, ("*.cams.example",), SourceKind.URL, "rtsps://a.cams.example/x"),
    "credentials-kept": ({"url": "rtsp://u:p@cam.example/x"}, ("cam.example",), SourceKind.URL, "rtsp://u:p@cam.example/x"),
}  # fmt: skip


@pytest.mark.parametrize("case", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_resolve_source_accepts(case: Acceptance, jail: Path) -> None:
    source, hosts, kind, location = case
    spec = resolve_source(1, **source, policy=policy_for(jail, hosts=hosts))  # type: ignore[arg-type]
    assert spec == SourceSpec(index=1, kind=kind, location=location.replace(ROOT, str(jail.resolve())))


def test_devices_resolve_when_enabled(jail: Path) -> None:
    spec = resolve_source(0, device=1, policy=policy_for(jail, devices=True))
    assert spec == SourceSpec(index=0, kind=SourceKind.DEVICE, location="1")
    assert spec.live


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://user:pw@cam/x", "rtsp://***@cam/x"),
        ("rtsp://user@cam:554", "rtsp://***@cam:554"),
        ("http://cam/a@b", "http://cam/a@b"),  # an @ in the path is not user info
        ("rtsp://u:pa/ss@cam/x", "rtsp://***@cam/x"),  # an unescaped / in the password
        ("rtsp://u:p@ss@cam/x?a=b@c", "rtsp://***@cam/x?a=b@c"),
        ("rtsp://cam/x", "rtsp://cam/x"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


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


@pytest.mark.parametrize("name", ["notes.mp4", "does-not-exist.mp4"])
def test_a_file_that_is_not_a_video_is_an_error(
    name: str, jail: Path, start_reader: Callable[..., SourceReader]
) -> None:
    sink = RecordingSink()
    reader = start_reader(file_spec(jail / name), sink)
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
