"""`visionrpc pipelines list | status | start | stop` against a real server with a pipelines file, and
`visionrpc serve` refusing a bad pipelines file."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningServer, start_server, wait_for
from visionrpc.server.cli import main
from visionrpc.server.config import ServerConfig

PIPELINES = """
pipelines:
  - name: gate
    autostart: false
    sources: [{path: bikes.mp4}]
    stream: {max_fps: 5}
    analytics: {lines: [{name: road, start: [320, 0], end: [320, 272]}]}
"""


@pytest.fixture(scope="module")
def declared(base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("cli-pipelines")
    (root / "pipelines.yaml").write_text(PIPELINES)
    config = dataclasses.replace(
        base_config,
        model_repository=root / "models",
        pipelines_file=str(root / "pipelines.yaml"),
        preload_default_model=False,
    )
    running = start_server(config)
    yield running
    running.server.stop(grace_s=0.5)


def _run(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--address", server.address])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_status_start_and_stop(declared: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, declared, "pipelines", "list")
    header, row = out.splitlines()
    assert code == 0 and header.split() == [
        "NAME", "STATE", "MODEL", "FRAMES", "RESTARTS", "SUBSCRIBERS", "LINES", "ERROR",
    ]  # fmt: skip
    assert row.split()[:3] == ["gate", "stopped", "yolov3-tiny-coco"]

    code, out, _ = _run(capsys, declared, "pipelines", "start", "gate")
    assert code == 0 and "name:        gate" in out and "sources:     bikes.mp4" in out

    def running() -> bool:
        _, text, _ = _run(capsys, declared, "pipelines", "status", "gate", "--json")
        status = json.loads(text)
        return bool(status["state"] == "PIPELINE_STATE_RUNNING" and int(status["frames_processed"]) > 0)

    assert wait_for(running, 120)
    code, out, _ = _run(capsys, declared, "pipelines", "list", "--json")
    (listed,) = json.loads(out)["pipelines"]
    assert code == 0 and listed["name"] == "gate" and listed["stream_id"]

    code, out, _ = _run(capsys, declared, "pipelines", "stop", "gate")
    assert code == 0 and "state:       stopped" in out
    code, out, _ = _run(capsys, declared, "pipelines", "status", "gate")
    assert code == 0 and "stream:      -" in out and "line road (source 0):" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["pipelines", "status", "nope"], 2, "NOT_FOUND"),
        (["pipelines", "start", "nope"], 2, "NOT_FOUND"),
        (["stream", "--pipeline", "nope"], 2, "NOT_FOUND"),
        (["stream", "--pipeline", "gate"], 1, "FAILED_PRECONDITION: pipeline 'gate' is not running"),
    ],
)
def test_errors(
    declared: RunningServer, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, _, err = _run(capsys, declared, *argv)
    assert got == code and message in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pipelines: [{name: a}]\n", "pipelines[0] (a).sources: expected 1 to 16 sources"),
        ("pipelines: [{name: a, sources: [{path: bikes.mp4}], sinks: [{type: fax}]}]\n", "sinks[0].type"),
    ],
)
def test_serve_refuses_a_bad_pipelines_file(
    tmp_path: Path, media_root: Path, text: str, message: str
) -> None:
    pipelines = tmp_path / "pipelines.yaml"
    pipelines.write_text(text)
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", "0", "--pipelines", str(pipelines),
        "--media-root", str(media_root), "--model-repository", str(tmp_path / "models"),
        "--no-preload-default-model",
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 2
    assert f"{pipelines}: " in finished.stderr and message in finished.stderr
    assert "Traceback" not in finished.stderr
