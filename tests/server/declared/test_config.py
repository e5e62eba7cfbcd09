"""The pipelines file: good files and the values read, bad ones and the field each error names."""

from __future__ import annotations

from pathlib import Path

import pytest
from visionrpc.server.analytics.types import Anchor, ClassFilter, Line, Point, Tracking
from visionrpc.server.declared.config import (
    DeclaredPipeline,
    DeclaredSource,
    PipelinesFileError,
    RestartPolicy,
    load_pipelines_file,
)
from visionrpc.server.models.repository import ModelId
from visionrpc.server.sinks.config import JsonLinesSinkConfig, WebhookSinkConfig
from visionrpc.server.streams.source_policy import SourcePolicy
from visionrpc.server.streams.types import FaceRedaction, FramePolicy, SourceKind

FULL = """
pipelines:
  - name: bikes-gate
    model: yolov3-tiny-coco/1
    sources:
      - path: bikes.mp4
      - url: rtsp://cam:secret@127.0.0.1:8554/live
    options: {confidence: 0.3, iou: 0.5, max_detections: 50, classes: [person, 2]}
    stream: {max_fps: 10, frame_policy: newest_frame}
    analytics:
      tracking: {activation_threshold: 0.3, lost_track_frames: 20, minimum_iou: 0.1}
      zones:
        - name: crossing
          polygon: [[0, 180], [640, 180], [640, 272], [0, 272]]
          sources: [0]
          classes: [person]
          anchor: center
      lines:
        - name: gate
          start: [320, 0]
          end: [320, 272]
    face_redaction: blur
    sinks:
      - {type: webhook, url: "http://127.0.0.1:9/hook"}
      - {type: jsonl, name: log, path: "/tmp/{pipeline}.jsonl"}
    autostart: false
    loop: true
    restart: {initial_backoff_s: 0.5, max_backoff_s: 4, multiplier: 3, max_attempts: 5}
"""


@pytest.fixture
def policy(media_root: Path) -> SourcePolicy:
    return SourcePolicy(
        media_root=media_root,
        allowed_url_schemes=("rtsp", "http", "https"),
        allowed_url_hosts=("127.0.0.1",),
        enable_devices=False,
    )


def _load(tmp_path: Path, text: str, policy: SourcePolicy) -> tuple[DeclaredPipeline, ...]:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    return load_pipelines_file(path, policy, "yolov3-tiny-coco")


def test_a_full_pipeline_reads_every_field(tmp_path: Path, policy: SourcePolicy, media_root: Path) -> None:
    (p,) = _load(tmp_path, FULL, policy)
    assert p.name == "bikes-gate"
    assert p.model_id == ModelId("yolov3-tiny-coco", "1")
    assert [s.kind for s in p.sources] == [SourceKind.FILE, SourceKind.URL]
    assert p.sources[0].location == str((media_root / "bikes.mp4").resolve())
    # Status shows sources as declared, credentials hidden.
    assert p.declared_sources == (
        DeclaredSource(path="bikes.mp4"),
        DeclaredSource(url="rtsp://***@127.0.0.1:8554/live"),
    )
    assert p.options.confidence_threshold == 0.3 and p.options.iou_threshold == 0.5
    assert p.options.max_detections == 50
    assert p.options.class_ids == {2} and p.options.class_names == {"person"}
    assert p.stream_options.max_fps == 10 and p.stream_options.frame_policy is FramePolicy.NEWEST_FRAME
    assert p.stream_options.face_redaction is FaceRedaction.BLUR
    analytics = p.stream_options.analytics
    assert analytics.tracking == Tracking(True, 0.3, 20, 0.1)
    (zone,) = analytics.zones
    assert zone.name == "crossing" and len(zone.polygon) == 4 and zone.source_indexes == {0}
    assert zone.classes == ClassFilter(frozenset(), frozenset({"person"})) and zone.anchor is Anchor.CENTER
    assert analytics.lines == (Line("gate", Point(320, 0), Point(320, 272)),)
    assert isinstance(p.sinks[0], WebhookSinkConfig) and p.sinks[0].name == "webhook"
    assert isinstance(p.sinks[1], JsonLinesSinkConfig) and p.sinks[1].name == "log"
    assert (p.autostart, p.loop) == (False, True)
    assert p.restart == RestartPolicy(0.5, 4.0, 3.0, 5)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("pipelines:\n  - {name: a, sources: [{path: bikes.mp4}]}\n", 1),
        ("- {name: a, sources: [{path: bikes.mp4}]}\n- {name: b, sources: [{path: bikes.mp4}]}\n", 2),
        ("pipelines: []\n", 0),
        ("", 0),
    ],
    ids=["minimal", "bare-list", "empty-list", "empty-file"],
)
def test_good_files(tmp_path: Path, policy: SourcePolicy, text: str, count: int) -> None:
    pipelines = _load(tmp_path, text, policy)
    assert len(pipelines) == count
    for pipeline in pipelines:  # the defaults
        assert pipeline.model_id == ModelId("yolov3-tiny-coco")
        assert pipeline.autostart and not pipeline.loop and pipeline.sinks == ()
        assert pipeline.restart == RestartPolicy()
        assert not pipeline.stream_options.analytics.active


def _one(extra: str, sources: str = "[{path: bikes.mp4}]") -> str:
    return f"pipelines:\n  - name: p\n    sources: {sources}\n" + "".join(
        f"    {line}\n" for line in extra.splitlines()
    )


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("pipelines: [a: [b\n", "", "not valid YAML"),
        ("pipelines: {name: a}\n", "pipelines", "expected a list"),
        ("pipelines:\n  - sources: [{path: bikes.mp4}]\n", "pipelines[0].name", "is required"),
        (
            "pipelines:\n  - {name: 'a b', sources: [{path: bikes.mp4}]}\n",
            "pipelines[0] (a b).name",
            "letters",
        ),
        (_one("") + "  - {name: p, sources: [{path: bikes.mp4}]}\n", "pipelines[1].name", "unique name"),
        (_one("modle: x"), "pipelines[0] (p)", "unknown field(s): modle"),
        (_one("model: 'a//b'"), "pipelines[0] (p).model", "expected 'name' or 'name/version'"),
        (_one("", sources="[]"), "pipelines[0] (p).sources", "expected 1 to 16 sources"),
        (_one("", sources="[{path: ../etc/passwd}]"), "pipelines[0] (p).sources[0].path", ""),
        (_one("", sources="[{path: missing.mp4}]"), "pipelines[0] (p).sources[0].path", "missing.mp4"),
        (
            _one("", sources="[{path: bikes.mp4, device: 0}]"),
            "pipelines[0] (p).sources[0]",
            "path and device",
        ),
        (
            _one("", sources="[{url: 'rtsp://example.com/x'}]"),
            "pipelines[0] (p).sources[0].url",
            "not allowed",
        ),
        (_one("", sources="[{device: 0}]"), "pipelines[0] (p).sources[0].device", "disabled"),
        (_one("stream: {max_fps: -1}"), "pipelines[0] (p).stream.max_fps", "expected a number in"),
        (_one("stream: {frame_policy: all}"), "pipelines[0] (p).stream.frame_policy", "expected one of"),
        (_one("options: {confidence: 2}"), "pipelines[0] (p).options.confidence", "[0.0, 1.0]"),
        (_one("options: {classes: [true]}"), "pipelines[0] (p).options.classes[0]", "class name or id"),
        (_one("face_redaction: smudge"), "pipelines[0] (p).face_redaction", "blur"),
        (_one("autostart: 'yes'"), "pipelines[0] (p).autostart", "true or false"),
        (
            _one("analytics: {lines: [{name: g, start: [1, 1], end: [1, 1]}]}"),
            "pipelines[0] (p).analytics.lines[0].end",
            "other than the start",
        ),
        (
            _one("analytics: {lines: [{name: g, start: [1, 1]}]}"),
            "pipelines[0] (p).analytics.lines[0].end",
            "is required",
        ),
        (
            _one("analytics: {zones: [{name: z, polygon: [[0, 0], [1, 1]]}]}"),
            "pipelines[0] (p).analytics.zones[0].polygon",
            "vertices",
        ),
        (
            _one("analytics: {zones: [{name: z, polygon: [[0, 0], [10, 10], [10, 0], [0, 10]]}]}"),
            "pipelines[0] (p).analytics.zones[0].polygon",
            "simple polygon",
        ),
        (
            _one(
                "analytics:\n  zones: [{name: g, polygon: [[0, 0], [9, 0], [9, 9]]}]\n"
                "  lines: [{name: g, start: [0, 0], end: [5, 5]}]"
            ),
            "pipelines[0] (p).analytics.lines[0].name",
            "unique",
        ),
        (_one("analytics: {lines: [{name: g, start: [0], end: [1, 1]}]}"), "lines[0].start", "point [x, y]"),
        (_one("analytics: {tracking: {minimum_iou: 3}}"), "analytics.tracking.minimum_iou", "[0.0, 1.0]"),
        (_one("sinks: [{type: carrier-pigeon}]"), "pipelines[0] (p).sinks[0].type", "expected one of"),
        (_one("sinks: [{type: webhook, url: 'ftp://x'}]"), "pipelines[0] (p).sinks[0].url", "http"),
        (
            _one("sinks: [{type: jsonl, path: a.jsonl}, {type: jsonl, path: b.jsonl}]"),
            "pipelines[0] (p).sinks[1].name",
            "unique among the sinks",
        ),
        (
            _one("restart: {initial_backoff_s: 5, max_backoff_s: 1}"),
            "pipelines[0] (p).restart.max_backoff_s",
            "at least initial_backoff_s",
        ),
        (_one("restart: {max_attempts: -1}"), "pipelines[0] (p).restart.max_attempts", "at least 0"),
    ],
)
def test_bad_files_name_the_file_pipeline_and_field(
    tmp_path: Path, policy: SourcePolicy, text: str, where: str, message: str
) -> None:
    with pytest.raises(PipelinesFileError) as raised:
        _load(tmp_path, text, policy)
    error = str(raised.value)
    assert error.startswith(f"{tmp_path / 'pipelines.yaml'}: ")
    assert where in error and message in error, error


def test_an_unreadable_file_is_refused(tmp_path: Path, policy: SourcePolicy) -> None:
    with pytest.raises(PipelinesFileError, match="cannot read the pipelines file"):
        load_pipelines_file(tmp_path / "absent.yaml", policy, "yolov3-tiny-coco")


def test_the_example_file_reads(media_root: Path) -> None:
    """examples/pipelines.yaml, the README's example, stays valid."""
    example = Path(__file__).parents[3] / "examples" / "pipelines.yaml"
    policy = SourcePolicy(media_root, ("rtsp",), (), False)
    (pipeline,) = load_pipelines_file(example, policy, "yolov3-tiny-coco")
    assert pipeline.name == "bikes-gate" and pipeline.stream_options.analytics.lines
    assert [config.name for config in pipeline.sinks] == ["webhook", "mqtt", "jsonl", "video"]
