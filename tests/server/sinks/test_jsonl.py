"""The JSON lines sink: what it appends, rotation by size, and a path it cannot write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wait_for
from visionrpc.server.sinks import Content, JsonLinesSinkConfig, open_sink
from visionrpc.server.streams.types import FrameResult, StreamMessage, StreamStatus


def run(config: JsonLinesSinkConfig, messages: tuple[StreamMessage, ...]) -> None:
    sink = open_sink(config)
    for message in messages:
        sink.offer("gate", message)
    sink.close(timeout_s=30.0)
    status = sink.status()
    assert (status.failed, status.dropped, status.queued) == (0, 0, 0), status


def lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text()
    assert text.endswith("\n"), "whole lines only"
    return [json.loads(line) for line in text.splitlines()]


def expected_kinds(
    messages: tuple[StreamMessage, ...], content: Content, include_status: bool
) -> list[object]:
    kinds: list[object] = []
    for m in messages:
        if isinstance(m, FrameResult):
            if content is Content.FRAMES or (m.analytics and m.analytics.events):
                kinds.append(m.sequence_number)
        elif include_status:
            kinds.append(m.event.value if isinstance(m, StreamStatus) else "end")
    return kinds


# name: (content, include_status)
CONTENTS = {
    "events-and-statuses": (Content.EVENTS, True),
    "events-only": (Content.EVENTS, False),
    "every-frame": (Content.FRAMES, True),
}


@pytest.mark.parametrize(("content", "include_status"), CONTENTS.values(), ids=CONTENTS.keys())
def test_one_line_per_message_worth_writing(
    messages: tuple[StreamMessage, ...], tmp_path: Path, content: Content, include_status: bool
) -> None:
    config = JsonLinesSinkConfig(
        "log", str(tmp_path / "logs" / "{pipeline}.jsonl"), content=content, include_status=include_status
    )
    run(config, messages)
    written = lines(tmp_path / "logs" / "gate.jsonl")
    got = [w.get("sequence_number", w.get("event", w["type"])) for w in written]
    assert got == expected_kinds(messages, content, include_status)
    frames = [w for w in written if w["type"] == "frame"]
    assert all(("detections" in w) == (content is Content.FRAMES) for w in frames)


def test_appends_to_what_is_there(messages: tuple[StreamMessage, ...], tmp_path: Path) -> None:
    path = tmp_path / "gate.jsonl"
    path.write_text('{"earlier": true}\n')
    run(JsonLinesSinkConfig("log", str(path)), messages)
    written = lines(path)
    assert written[0] == {"earlier": True} and written[1]["event"] == "started"


@pytest.mark.parametrize("backups", [0, 1, 3])
def test_rotation_keeps_the_newest_lines_in_order(
    messages: tuple[StreamMessage, ...], tmp_path: Path, backups: int
) -> None:
    everything = tmp_path / "all.jsonl"
    run(JsonLinesSinkConfig("all", str(everything), content=Content.FRAMES), messages)
    all_lines = everything.read_text().splitlines(keepends=True)
    limit = 3 * max(len(line) for line in all_lines)
    path = tmp_path / "rotated.jsonl"
    run(
        JsonLinesSinkConfig("log", str(path), content=Content.FRAMES, max_bytes=limit, backups=backups),
        messages,
    )
    files = [Path(f"{path}.{n}") for n in range(backups, 0, -1)] + [path]
    assert all(f.exists() and 0 < f.stat().st_size <= limit for f in files)
    assert not Path(f"{path}.{backups + 1}").exists()
    kept = "".join(f.read_text() for f in files)
    assert kept and "".join(all_lines).endswith(kept), "the kept files are the stream's last lines, in order"


def test_a_path_it_cannot_write_is_counted_not_raised(
    messages: tuple[StreamMessage, ...], tmp_path: Path
) -> None:
    sink = open_sink(JsonLinesSinkConfig("log", str(tmp_path)))  # a directory: every open fails
    for message in messages[:3]:
        sink.offer("gate", message)
    assert wait_for(lambda: sink.status().dropped >= 1)
    sink.close(timeout_s=5.0)
    status = sink.status()
    assert status.delivered == 0 and status.failed == status.dropped >= 1
    assert status.last_error.startswith(f"write {tmp_path}:")
