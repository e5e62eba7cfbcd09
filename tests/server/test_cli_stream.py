"""`visionrpc stream` against a real server: JSON Lines per message, human output, usage errors."""

from __future__ import annotations

import json

import pytest
from conftest import RunningServer
from visionrpc.server.cli import main


def test_stream_json_prints_one_result_per_frame_then_ends_ok(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["stream", "bikes.mp4", "--json", "--address", server.address])
    out = capsys.readouterr().out
    messages = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    frames = [m["frame"] for m in messages if "frame" in m]
    statuses = [m["status"]["event"] for m in messages if "status" in m]
    assert len(frames) == 250
    assert [int(f["sequence_number"]) for f in frames] == list(range(250))
    assert statuses[0] == "STREAM_EVENT_STARTED" and statuses[-1] == "STREAM_EVENT_SOURCE_ENDED"
    found = {d["class_name"] for f in frames for d in f["prediction"]["detections"]}
    assert {"person", "car"} <= found
    assert len({m["stream_id"] for m in messages}) == 1


def test_stream_human_output(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stream", "bikes.mp4", "--max-fps", "100", "--classes", "person"]
    code = main([*argv, "--address", server.address])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "started" in lines[0] and "640x272" in lines[0]
    assert sum(line.startswith("source 0 frame ") for line in lines) == 250
    assert any("person" in line for line in lines) and not any(" car " in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["stream"], 2, "give at least one SOURCE"),
        (["stream", "../etc/passwd"], 2, "INVALID_ARGUMENT"),
        (["stream", "missing.mp4"], 2, "NOT_FOUND"),
        (["stream", "rtsp://example.com/cam"], 1, "PERMISSION_DENIED"),
    ],
)
def test_stream_errors(
    server: RunningServer, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main([*argv, "--address", server.address]) == code
    assert message in capsys.readouterr().err
