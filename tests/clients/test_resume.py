"""Streams outlive their connections, through each SDK: Python, Go and Node run the same probe command.

Each case starts real servers (subprocesses of `visionrpc serve`), runs a client's stream probe against them
(tests/clients/stream_probe.py and its Go and Node twins), breaks the stream's connection the way production
does, and reads what the client saw:
- connection recycling (max connection age a second and a half, grace half a second): a file stream and an
  RTSP stream are cut several times and resumed on the same server with nothing lost or repeated;
- a drain (SIGTERM) of the server a stream runs on, with the client's target naming two servers: the client
  resumes on the other one, which starts the stream again and says so (RESTARTED), and the file continues
  where it broke off.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from conftest import cache_root, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from streaming import free_port, running_rtsp_server

ROOT = Path(__file__).resolve().parents[2]
LANGUAGES = ("python", "go", "node")
BIKES_FRAMES = 250
# A long linger: a cut stream must find its pipeline still running however slowly a loaded test machine lets
# the client reconnect (the default 2 s is the production window; what is tested here is the replay).
RECYCLING = (
    "--max-connection-age-s",
    "1.5",
    "--max-connection-age-grace-s",
    "0.5",
    "--pipeline-linger-s",
    "10",
)


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each language's probe command, built once (Go: go build; Node: the package's tsc build)."""
    built = tmp_path_factory.mktemp("probes")
    go = built / "streamprobe"
    subprocess.run(
        ["go", "build", "-o", str(go), "./examples/streamprobe"], cwd=ROOT / "clients/go", check=True
    )
    node = ROOT / "clients/node"
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=node, check=True)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=node, check=True)
    return {
        "python": [sys.executable, str(ROOT / "tests/clients/stream_probe.py")],
        "go": [str(go)],
        "node": ["node", str(node / "dist/examples/streamprobe.js")],
    }


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    address: str

    def drain(self) -> None:
        self.process.send_signal(signal.SIGTERM)


@pytest.fixture
def start_server(tmp_path: Path, media_root: Path) -> Iterator[object]:
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        port = free_port()
        name = f"server-{len(started)}"
        command = [
            sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", str(port),
            "--media-root", str(media_root), "--model-repository", str(tmp_path / name),
            "--cache-dir", str(cache_root() / "downloads"), "--allowed-url-hosts", "127.0.0.1",
            "--intra-op-threads", "2", *flags,
        ]  # fmt: skip
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        server = ServerProcess(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), f"127.0.0.1:{port}"
        )
        log.close()
        started.append(server)
        assert wait_for(lambda: serving(server.address), timeout_s=120), (
            tmp_path / f"{name}.log"
        ).read_text()
        return server

    yield start
    for server in started:
        server.process.kill()
        server.process.wait(30)


def serving(address: str) -> bool:
    request = health_pb2.HealthCheckRequest(service="visionrpc.v1.InferenceService")
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status
    except grpc.RpcError:
        return False
    return status == health_pb2.HealthCheckResponse.SERVING


@dataclass
class Probe:
    """A running probe; its JSON lines are collected as they arrive."""

    process: subprocess.Popen[str]
    lines: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for text in self.process.stdout:
                self.lines.append(json.loads(text))

    def frames(self) -> list[dict[str, object]]:
        return [line for line in list(self.lines) if line["kind"] == "frame"]

    def resumed(self) -> list[dict[str, object]]:
        return [line for line in list(self.lines) if line.get("event") == "RESUMED"]

    def finish(self, timeout_s: float) -> int:
        code = self.process.wait(timeout_s)
        assert wait_for(lambda: bool(self.lines) and self.lines[-1]["kind"] in ("end", "error"), 5)
        return code


def run_probe(command: list[str], addresses: list[str], *flags: str) -> Probe:
    process = subprocess.Popen(
        [*command, "--addresses", ",".join(addresses), *flags],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
    )
    return Probe(process)


def assert_file_complete(probe: Probe) -> None:
    """Every frame of the file exactly once, in order, across however many calls it took."""
    sequence = [frame["sequence_number"] for frame in probe.frames()]
    assert sequence == list(range(BIKES_FRAMES)), f"missing or repeated frames: {describe(sequence)}"


def assert_no_lost_message(probe: Probe) -> None:
    """Within each stream id, cursors run 1, 2, 3, ... with no gap and no repeat (resumes included)."""
    cursors: dict[object, list[object]] = {}
    for line in probe.lines:
        if line["kind"] in ("frame", "status") and line.get("cursor"):
            cursors.setdefault(line["stream_id"], []).append(line["cursor"])
    for stream_id, seen in cursors.items():
        first = int(str(seen[0]))
        assert seen == list(range(first, first + len(seen))), f"stream {stream_id}: {describe(seen)}"


def describe(values: list[object]) -> str:
    return f"{len(values)} values, first {values[:5]}, last {values[-5:]}"


@pytest.mark.slow
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_file_stream_survives_connection_recycling(
    language: str, probes: dict[str, list[str]], start_server: object
) -> None:
    server = start_server(*RECYCLING)  # type: ignore[operator]
    probe = run_probe(
        probes[language], [server.address], "--path", "bikes.mp4", "--every-frame", "--max-fps", "20"
    )
    assert probe.finish(timeout_s=120) == 0, probe.lines[-3:]
    assert_file_complete(probe)
    assert_no_lost_message(probe)
    resumed = probe.resumed()
    assert len(resumed) >= 3, "expected the connection to be recycled at least three times"
    assert {line["outcome"] for line in resumed} == {"REPLAYED"}
    assert {line["messages_lost"] for line in resumed} == {0}


@pytest.mark.slow
@pytest.mark.parametrize("language", LANGUAGES)
def test_an_rtsp_stream_survives_connection_recycling(
    language: str, probes: dict[str, list[str]], start_server: object, media_root: Path
) -> None:
    with running_rtsp_server(media_root / "bikes.mp4") as camera:
        server = start_server(*RECYCLING)  # type: ignore[operator]
        probe = run_probe(probes[language], [server.address], "--url", camera.url, "--duration-s", "8")
        assert probe.finish(timeout_s=60) == 0, probe.lines[-3:]
    frames = [int(str(frame["sequence_number"])) for frame in probe.frames()]
    assert len(frames) > 20
    assert all(a < b for a, b in itertools.pairwise(frames)), "a live frame was repeated"
    assert_no_lost_message(probe)
    resumed = probe.resumed()
    assert len(resumed) >= 3, "expected the connection to be recycled at least three times"
    assert {line["outcome"] for line in resumed} == {"REPLAYED"}


@pytest.mark.slow
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_drained_server_hands_the_stream_to_the_other_one(
    language: str, probes: dict[str, list[str]], start_server: object
) -> None:
    first = start_server()  # type: ignore[operator]
    second = start_server()  # type: ignore[operator]
    probe = run_probe(
        probes[language],
        [first.address, second.address],
        "--path",
        "bikes.mp4",
        "--every-frame",
        "--max-fps",
        "20",
    )
    assert wait_for(lambda: len(probe.frames()) >= 30, timeout_s=60)
    first.drain()
    assert probe.finish(timeout_s=120) == 0, probe.lines[-3:]
    assert first.process.wait(30) == 0
    (resumed,) = probe.resumed()
    assert resumed["outcome"] == "RESTARTED"
    before = {frame["stream_id"] for frame in probe.frames()[:30]}
    assert before == {resumed["previous_stream_id"]}
    assert resumed["stream_id"] != resumed["previous_stream_id"]  # a new pipeline, on the other server
    assert_file_complete(probe)  # the file continued where it broke off
