"""Real video servers on loopback for the stream tests: an RTSP server (GStreamer) and an HTTP file server.

    with running_rtsp_server(media("bikes.mp4")) as rtsp:   # started on a free port; pytest.fail if unusable
        url = rtsp.url                                  # rtsp://127.0.0.1:<port>/bikes, 25 fps, looping
        rtsp.stop(); rtsp.restart()                     # kill it, bring it back on the same port
        rtsp.freeze(); rtsp.thaw()                      # SIGSTOP / SIGCONT: a server that hangs

    with HttpFileServer(directory) as http:
        url = http.url("bikes.mp4"); http.requests      # byte ranges supported, like any real web server

    sink = RecordingSink()                              # a real FrameSink that records, for SourceReader
    sink.wait_for(lambda s: len(s.frames) >= 10)

The RTSP server is tests/rtsp_server.py run by Debian's /usr/bin/python3 (PyGObject lives there). When its
packages are missing RtspServer.start raises GStreamerMissing with the install hint; running_rtsp_server turns
that into a test failure, never a skip, because CI installs them (scripts/install-test-deps).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
from visionrpc.server.streams.pipeline import Subscription
from visionrpc.server.streams.types import Frame, SourceEvent, SourceEventKind, StreamEnd, StreamMessage

__all__ = [
    "FrameRecord",
    "GStreamerMissing",
    "HttpFileServer",
    "RecordingSink",
    "RtspServer",
    "copy_into",
    "free_port",
    "running_rtsp_server",
]

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsp_server.py")
INSTALL_HINT = (
    "the RTSP test server needs GStreamer's RTSP server for Debian's /usr/bin/python3 "
    "(python3-gst-1.0, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-*, gstreamer1.0-libav): "
    "run scripts/install-test-deps"
)
_MISSING_EXIT = 3  # rtsp_server.py: gi or a typelib is missing
_BIND_EXIT = 2  # rtsp_server.py: the port is taken


class GStreamerMissing(RuntimeError):  # noqa: N818 - reads better at the raise site than ...Error
    """The packages of the RTSP test server are not installed."""


def drain(
    subscription: Subscription, *, pause_s: float = 0.0, timeout_s: float = 60.0
) -> list[StreamMessage]:
    """Every message up to and including the StreamEnd, optionally sleeping between gets (a slow consumer)."""
    messages: list[StreamMessage] = []
    while True:
        message = subscription.get(timeout_s=timeout_s)
        assert message is not None, f"no message within {timeout_s} s after {len(messages)}"
        messages.append(message)
        if isinstance(message, StreamEnd):
            return messages
        time.sleep(pause_s)


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound and closed; fine for "nothing is there" tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer:
    """tests/rtsp_server.py as a subprocess: a clip looped at its frame rate on rtsp://127.0.0.1:<port>/<mount>."""

    def __init__(self, video: Path, *, mount: str = "/bikes", key_interval: int = 10) -> None:
        self.video = video
        self.mount = mount
        self.key_interval = key_interval
        self.port = 0
        self.started_in_s = 0.0  # how long the last start took, for reports
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, port: int | None = None, *, timeout_s: float = 30.0) -> int:
        """Starts the server (port None or 0: any free one) and returns its port once it listens."""
        if self.running:
            raise RuntimeError("the RTSP server is already running")
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            raise GStreamerMissing(f"{SYSTEM_PYTHON} not found; {INSTALL_HINT}")
        began = time.monotonic()
        deadline = began + timeout_s
        while True:
            code, stderr = self._launch(port or 0, deadline)
            if code is None:
                self.started_in_s = time.monotonic() - began
                return self.port
            if code == _MISSING_EXIT:
                raise GStreamerMissing(f"{INSTALL_HINT}\n{stderr}")
            # After a kill the old socket can linger for a moment; a restart on the same port retries.
            if code == _BIND_EXIT and port and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise RuntimeError(f"the RTSP test server exited with {code}:\n{stderr}")

    def _launch(self, port: int, deadline: float) -> tuple[int | None, str]:
        """Runs the script until it prints its port: (None, "") when listening, else (exit code, stderr)."""
        # A file, not a pipe: GStreamer warnings must never block the server. Closed in _kill.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        command = [SYSTEM_PYTHON, str(SCRIPT), "--video", str(self.video), "--port", str(port)]
        command += ["--mount", self.mount, "--key-interval", str(self.key_interval)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._process = process
        assert process.stdout is not None
        line = _readline(process.stdout, deadline - time.monotonic())
        if line.startswith("PORT "):
            self.port = int(line.split()[1])
            return None, ""
        if process.poll() is None:
            self._kill()
            return -1, f"no port printed within the timeout; stdout: {line!r}"
        code = process.wait()
        stderr = self._read_stderr()
        self._kill()
        return code, stderr

    def stop(self) -> None:
        """Kills the server (SIGKILL: no RTSP teardown, clients see the connection drop)."""
        self._kill()

    def restart(self, *, timeout_s: float = 30.0) -> int:
        """Kills the server if it runs and starts it again on the same port."""
        if not self.port:
            raise RuntimeError("the RTSP server was never started")
        self._kill()
        return self.start(self.port, timeout_s=timeout_s)

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but stops answering, like a hung camera."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("the RTSP server is not running")
        self._process.send_signal(sig)

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.kill()  # SIGKILL works on a stopped (frozen) process too
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RtspServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._kill()


@contextlib.contextmanager
def running_rtsp_server(video: Path, **options: Any) -> Iterator[RtspServer]:
    """A started RtspServer for a fixture; missing GStreamer packages fail the test with the install hint."""
    server = RtspServer(video, **options)
    try:
        server.start()
    except GStreamerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


def _readline(stream: IO[str], timeout_s: float) -> str:
    """One line from a pipe, or "" after timeout_s (a reader thread: pipes have no portable read timeout)."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, timeout_s))
    return result[0].strip() if result else ""


class _CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _RangeHandler)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges: FFmpeg reaches an mp4's trailing moov atom by a Range request."""

    server: _CountingServer

    def __init__(self, request: Any, client_address: Any, server: _CountingServer) -> None:
        super().__init__(request, client_address, server, directory=str(server.directory))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        with self.server.lock:
            self.server.requests += 1
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        size = path.stat().st_size
        first, last = 0, size - 1
        ranged = self.headers.get("Range", "").startswith("bytes=")
        if ranged:
            start, _, end = self.headers["Range"][6:].split(",")[0].strip().partition("-")
            try:
                first, last = (
                    (int(start), int(end) if end else size - 1) if start else (size - int(end), size - 1)
                )
            except ValueError:
                self.send_error(400)
                return
            if first >= size or first > last:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            last = min(last, size - 1)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body:
            with path.open("rb") as source, contextlib.suppress(BrokenPipeError, ConnectionResetError):
                source.seek(first)
                remaining = last - first + 1
                while remaining > 0 and (chunk := source.read(min(remaining, 64 * 1024))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)


class HttpFileServer:
    """Serves one directory over HTTP on a free loopback port, from a thread; counts requests."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: _CountingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def requests(self) -> int:
        assert self._server is not None, "not started"
        with self._server.lock:
            return self._server.requests

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> int:
        self._server = _CountingServer(self.directory)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-files", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> HttpFileServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def copy_into(directory: Path, *files: Path) -> Path:
    """Copies files into directory (a media root or an HTTP root of the test's own) and returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(file, directory / file.name)
    return directory


# -- a sink that records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """A delivered frame without its pixels (250 full frames would hold ~130 MB)."""

    sequence_number: int
    timestamp_ms: float
    capture_time: float
    shape: tuple[int, ...]
    dtype: str


class RecordingSink:
    """A real FrameSink that records what a reader delivers; tests wait on it with wait_for.

    stop_after: put_frame answers False (stop reading) once that many frames were delivered.
    """

    def __init__(self, *, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.frames: list[FrameRecord] = []
        self.events: list[SourceEvent] = []
        self._changed = threading.Condition()

    def put_frame(self, frame: Frame) -> bool:
        record = FrameRecord(
            frame.sequence_number,
            frame.timestamp_ms,
            frame.capture_time,
            tuple(frame.pixels.shape),
            str(frame.pixels.dtype),
        )
        with self._changed:
            self.frames.append(record)
            self._changed.notify_all()
            return self.stop_after is None or len(self.frames) < self.stop_after

    def put_event(self, event: SourceEvent) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[RecordingSink], bool], timeout_s: float = 20.0) -> bool:
        """Waits until predicate(self) holds (checked under the sink's lock after every delivery)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout_s)

    def kinds(self) -> list[SourceEventKind]:
        with self._changed:
            return [event.kind for event in self.events]

    def of_kind(self, kind: SourceEventKind) -> list[SourceEvent]:
        with self._changed:
            return [event for event in self.events if event.kind is kind]

    def has(self, kind: SourceEventKind, count: int = 1) -> Callable[[RecordingSink], bool]:
        """A predicate for wait_for: at least `count` events of this kind."""
        return lambda sink: sum(event.kind is kind for event in sink.events) >= count

    def frame_count(self) -> int:
        with self._changed:
            return len(self.frames)

    def snapshot(self) -> list[FrameRecord]:
        with self._changed:
            return list(self.frames)
