"""Declared pipelines end to end: a real server started with a pipelines file, real sinks delivering to a real
HTTP receiver, a real mosquitto broker and real files, PipelineService over real gRPC stubs.

One server for the module declares:
    gate      bikes.mp4 with tracking and a line across the road, every sink kind; runs once (ENDED)
    broken    a file that is not a video: fails, backs off, restarts
    hanging   bikes.mp4 looping at 10 fps, its webhook to a receiver that never answers; started by the test
    manual    bikes.mp4 looping at 10 fps, autostart false: started, watched by name and stopped by the tests
    looping   a 10-frame clip that loops
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import pytest
from conftest import RunningServer, start_server, wait_for
from media import media
from prometheus_client.parser import text_string_to_metric_families
from sink_receivers import MqttSubscriber, Receiver, running_broker, running_receiver
from streaming import free_port
from visionrpc.client import Client, FailedPreconditionError, NotFoundError, PipelineState
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, pipelines_pb2, pipelines_pb2_grpc

PIPELINES = """
pipelines:
  - name: gate
    sources: [{{path: bikes.mp4}}]
    analytics:
      tracking: true
      lines: [{{name: road, start: [320, 0], end: [320, 272]}}]
    sinks:
      - {{type: webhook, url: "{hook}"}}
      - {{type: mqtt, host: 127.0.0.1, port: {mqtt_port}, topic: "visionrpc/{{pipeline}}/events"}}
      - {{type: jsonl, path: "{out}/{{pipeline}}.jsonl"}}
      - {{type: video, path: "{out}/{{pipeline}}.mp4"}}
  - name: broken
    sources: [{{path: broken.mp4}}]
    restart: {{initial_backoff_s: 0.1, max_backoff_s: 1}}
  - name: hanging
    autostart: false
    loop: true
    sources: [{{path: bikes.mp4}}]
    stream: {{max_fps: 10}}
    sinks:
      - {{type: webhook, url: "{hanging_hook}", content: frames, queue_size: 4, timeout_s: 0.5,
          max_attempts: 1}}
  - name: manual
    autostart: false
    loop: true
    sources: [{{path: bikes.mp4}}]
    stream: {{max_fps: 10}}
  - name: looping
    autostart: false
    loop: true
    sources: [{{path: short.mp4}}]
"""
STATE = pipelines_pb2.PipelineState


@dataclasses.dataclass
class Declared:
    server: RunningServer
    hook: Receiver
    hanging_hook: Receiver
    mqtt: MqttSubscriber
    out: Path

    @property
    def stub(self) -> pipelines_pb2_grpc.PipelineServiceStub:
        return pipelines_pb2_grpc.PipelineServiceStub(grpc.insecure_channel(self.server.address))

    def get(self, name: str) -> pipelines_pb2.PipelineStatus:
        return self.stub.GetPipeline(pipelines_pb2.GetPipelineRequest(name=name), timeout=30).pipeline


@pytest.fixture(scope="module")
def declared(base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Declared]:
    root = tmp_path_factory.mktemp("declared")
    media_root, out = root / "media", root / "out"
    media_root.mkdir()
    out.mkdir()
    shutil.copyfile(media("bikes.mp4"), media_root / "bikes.mp4")
    (media_root / "broken.mp4").write_bytes(b"this is not a video\n" * 100)
    _write_clip(media_root / "short.mp4", frames=10)
    with (
        running_receiver() as hook,
        running_receiver(hang=True) as hanging_hook,
        running_broker(root) as broker,
        MqttSubscriber(broker.port, "visionrpc/gate/events") as mqtt,
    ):
        pipelines = root / "pipelines.yaml"
        pipelines.write_text(
            PIPELINES.format(hook=hook.url, hanging_hook=hanging_hook.url, mqtt_port=broker.port, out=out)
        )
        config = dataclasses.replace(
            base_config,
            model_repository=root / "models",
            media_root=media_root,
            pipelines_file=str(pipelines),
            preload_default_model=False,
            metrics_port=free_port(),
        )
        running = start_server(config)
        try:
            yield Declared(running, hook, hanging_hook, mqtt, out)
        finally:
            running.server.stop(grace_s=0.5)


def _write_clip(path: Path, frames: int) -> None:
    """The first frames of bikes.mp4 as a clip of their own."""
    capture = cv2.VideoCapture(str(media("bikes.mp4")))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (640, 272))
    try:
        for _ in range(frames):
            ok, image = capture.read()
            assert ok
            writer.write(image)
    finally:
        writer.release()
        capture.release()


def test_a_pipeline_counts_line_crossings_and_every_sink_gets_every_event_once_in_order(
    declared: Declared,
) -> None:
    assert wait_for(lambda: declared.get("gate").state == STATE.PIPELINE_STATE_ENDED, 240), declared.get(
        "gate"
    )
    status = declared.get("gate")
    assert status.frames_processed == 250 and status.restarts == 0 and not status.last_error
    (road,) = status.lines
    assert road.name == "road" and road.source_index == 0
    crossings = road.left_to_right + road.right_to_left
    assert crossings > 0, "cars and people cross the middle of bikes.mp4"

    # The webhook: each frame with events once, in stream order, the events adding up to the line counts.
    frames = [body for body in declared.hook.bodies() if body["type"] == "frame"]
    cursors = [frame["cursor"] for frame in frames]
    assert cursors == sorted(set(cursors)), "once each, in order"
    events = [event for frame in frames for event in frame["events"]]
    assert all(event["kind"] == "line_crossed" and event["name"] == "road" for event in events)
    by_direction = [
        sum(event["direction"] == d for event in events) for d in ("left_to_right", "right_to_left")
    ]
    assert by_direction == [road.left_to_right, road.right_to_left]
    assert frames[-1]["lines"] == [
        {
            "name": "road",
            "source_index": 0,
            "left_to_right": road.left_to_right,
            "right_to_left": road.right_to_left,
        }
    ]
    # The other sinks carry the same frames: MQTT (a real mosquitto) and the JSON lines file.
    assert wait_for(lambda: len(declared.mqtt.payloads()) >= len(frames), 30)
    assert declared.mqtt.payloads() == frames
    lines = [json.loads(line) for line in (declared.out / "gate.jsonl").read_text().splitlines()]
    assert [line for line in lines if line["type"] == "frame"] == frames
    # The text sinks delivered everything without failing, and the status says so.
    sinks = {sink.kind: sink for sink in status.sinks}
    assert set(sinks) == {"webhook", "mqtt", "jsonl", "video"}
    assert all(sinks[kind].failed == 0 and sinks[kind].dropped == 0 for kind in ("webhook", "mqtt", "jsonl"))
    assert sinks["webhook"].delivered == len(declared.hook.bodies())
    # The annotated video is readable: every frame the sink took (a slow disk may make it drop some).
    video = sinks["video"]
    assert video.delivered > 0 and video.failed == 0
    capture = cv2.VideoCapture(str(declared.out / "gate.mp4"))
    try:
        assert capture.isOpened()
        assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 272)
        read = 0
        while capture.read()[0]:
            read += 1
        assert 0 < read <= 250 and (read == 250 or video.dropped > 0)
    finally:
        capture.release()


def test_a_failing_pipeline_backs_off_and_restarts(declared: Declared) -> None:
    assert wait_for(lambda: declared.get("broken").restarts >= 2, 60), declared.get("broken")
    status = declared.get("broken")
    assert "broken.mp4" in status.last_error
    assert status.state in (
        STATE.PIPELINE_STATE_BACKOFF, STATE.PIPELINE_STATE_STARTING, STATE.PIPELINE_STATE_RUNNING
    )  # fmt: skip
    # Stopped while failing: it stays stopped, and says why it last failed.
    stopped = declared.stub.StopPipeline(
        pipelines_pb2.StopPipelineRequest(name="broken"), timeout=60
    ).pipeline
    assert stopped.state == STATE.PIPELINE_STATE_STOPPED and "broken.mp4" in stopped.last_error
    restarts = stopped.restarts
    assert declared.get("broken").restarts == restarts


def test_a_hanging_sink_does_not_slow_the_pipeline(declared: Declared) -> None:
    declared.stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="hanging"), timeout=30)
    try:

        def sink() -> pipelines_pb2.SinkStatus:
            # Sinks are listed once the pipeline has opened them: not yet in the moment after the start.
            statuses: list[pipelines_pb2.PipelineStatus] = []

            def listed() -> bool:
                statuses.append(declared.get("hanging"))
                return bool(statuses[-1].sinks)

            assert wait_for(listed, 60), statuses[-1]
            return statuses[-1].sinks[0]

        assert wait_for(lambda: sink().failed >= 1 and sink().dropped >= 1, 120), declared.get("hanging")
        before = declared.get("hanging").frames_processed
        # Frames keep flowing while the sink's deliveries hang and its queue overflows.
        assert wait_for(lambda: declared.get("hanging").frames_processed >= before + 20, 120)
        assert sink().dropped > 0 and declared.hanging_hook.attempts >= 1
        assert declared.get("hanging").state == STATE.PIPELINE_STATE_RUNNING
        # The same on /metrics (read at scrape time): the state, the sink's failures and drops. Waited for:
        # the pipeline loops its file, and a scrape in the moment it starts again sees STARTING.
        sink_labels = (("kind", "webhook"), ("pipeline", "hanging"), ("sink", "webhook"))
        wanted = [
            ("visionrpc_pipeline_state", ("pipeline", "hanging"), ("state", "running")),
            *(
                ("visionrpc_sink_messages_total", *sorted((*sink_labels, ("outcome", outcome))))
                for outcome in ("failed", "dropped")
            ),
        ]
        assert wait_for(lambda: all(scrape(declared.server).get(key, 0) >= 1 for key in wanted), 60), {
            key: scrape(declared.server).get(key) for key in wanted
        }
    finally:
        stopped = declared.stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="hanging"), timeout=60)
    assert stopped.pipeline.state == STATE.PIPELINE_STATE_STOPPED


def scrape(server: RunningServer) -> dict[tuple[object, ...], float]:
    """/metrics as {(sample name, *sorted label pairs): value}."""
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_start_watch_by_name_and_stop(declared: Declared) -> None:
    stub = declared.stub
    listed = stub.ListPipelines(pipelines_pb2.ListPipelinesRequest(), timeout=30).pipelines
    assert [p.name for p in listed] == ["gate", "broken", "hanging", "manual", "looping"]
    assert declared.get("manual").state == STATE.PIPELINE_STATE_STOPPED
    assert [s.path for s in declared.get("manual").sources] == ["bikes.mp4"]
    # Not running: subscribers by name are refused with the reason.
    inference = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(declared.server.address))
    with pytest.raises(grpc.RpcError) as refused:
        next(
            iter(
                inference.StreamPredictions(
                    inference_pb2.StreamPredictionsRequest(pipeline="manual"), timeout=30
                )
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not running" in (refused.value.details() or "")

    started = stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="manual"), timeout=30).pipeline
    assert started.state in (STATE.PIPELINE_STATE_STARTING, STATE.PIPELINE_STATE_RUNNING)
    assert stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="manual"), timeout=30)  # idempotent
    assert wait_for(lambda: declared.get("manual").state == STATE.PIPELINE_STATE_RUNNING, 120)
    # `visionrpc stream --pipeline manual --json` prints its frames; stopping the pipeline ends it normally.
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "stream", "--pipeline", "manual", "--json",
        "--address", declared.server.address,
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        assert cli.stdout is not None
        frames = []
        for line in cli.stdout:
            message = json.loads(line)
            assert message["stream_id"] == declared.get("manual").stream_id
            if "frame" in message:
                frames.append(message["frame"])
            if len(frames) == 5:
                break
        assert wait_for(lambda: declared.get("manual").subscribers == 1, 30)
        stopped = stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="manual"), timeout=60).pipeline
        _, errors = cli.communicate(timeout=60)  # reads what it printed meanwhile, so it never blocks
        assert cli.returncode == 0, errors
    assert len(frames) == 5
    assert stopped.state == STATE.PIPELINE_STATE_STOPPED and not stopped.stream_id
    assert stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="manual"), timeout=30)  # idempotent


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.GetPipeline(pipelines_pb2.GetPipelineRequest(name="nope"), timeout=30),
        lambda stub: stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="nope"), timeout=30),
        lambda stub: stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="nope"), timeout=30),
    ],
    ids=["get", "start", "stop"],
)
def test_unknown_pipelines_are_not_found(declared: Declared, call: object) -> None:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as raised:
        call(declared.stub)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_subscribing_to_an_unknown_pipeline_is_not_found(declared: Declared) -> None:
    inference = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(declared.server.address))
    request = inference_pb2.StreamPredictionsRequest(pipeline="nope")
    with pytest.raises(grpc.RpcError) as raised:
        next(iter(inference.StreamPredictions(request, timeout=30)))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def guarded(base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that checks keys, declaring one pipeline that does not start by itself."""
    root = tmp_path_factory.mktemp("guarded")
    (root / "keys").write_text("user-key\n")
    (root / "admin-keys").write_text("admin-key\n")
    (root / "pipelines.yaml").write_text("- {name: quiet, autostart: false, sources: [{path: bikes.mp4}]}\n")
    config = dataclasses.replace(
        base_config,
        model_repository=root / "models",
        pipelines_file=str(root / "pipelines.yaml"),
        api_keys_file=str(root / "keys"),
        admin_keys_file=str(root / "admin-keys"),
        preload_default_model=False,
    )
    running = start_server(config)
    yield running
    running.server.stop(grace_s=0.5)


@pytest.mark.parametrize(
    ("key", "method", "code"),
    [
        ("user-key", "GetPipeline", grpc.StatusCode.OK),
        ("user-key", "StopPipeline", grpc.StatusCode.PERMISSION_DENIED),
        ("user-key", "StartPipeline", grpc.StatusCode.PERMISSION_DENIED),
        (None, "StopPipeline", grpc.StatusCode.UNAUTHENTICATED),
        ("admin-key", "StopPipeline", grpc.StatusCode.OK),
    ],
)
def test_start_and_stop_need_an_admin_key(
    guarded: RunningServer, key: str | None, method: str, code: grpc.StatusCode
) -> None:
    stub = pipelines_pb2_grpc.PipelineServiceStub(grpc.insecure_channel(guarded.address))
    request = {
        "GetPipeline": pipelines_pb2.GetPipelineRequest,
        "StartPipeline": pipelines_pb2.StartPipelineRequest,
        "StopPipeline": pipelines_pb2.StopPipelineRequest,
    }[method](name="quiet")
    metadata = [("authorization", f"Bearer {key}")] if key else []
    try:
        getattr(stub, method)(request, metadata=metadata, timeout=30)
        outcome = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        outcome = exc.code()
    assert outcome == code


def test_the_python_sdk(declared: Declared) -> None:
    with Client(declared.server.address) as client:
        listed = client.pipelines.list()
        assert [p.name for p in listed] == ["gate", "broken", "hanging", "manual", "looping"]
        manual = client.pipelines.get("manual")
        assert manual.sources == ("bikes.mp4",) and manual.model_id == "yolov3-tiny-coco"
        assert manual.state in (PipelineState.STOPPED, PipelineState.STARTING, PipelineState.RUNNING)
        assert wait_for(lambda: client.pipelines.get("gate").state is PipelineState.ENDED, 240)
        gate = client.pipelines.get("gate")
        assert [line.name for line in gate.lines] == ["road"] and gate.frames_processed == 250
        assert {sink.kind for sink in gate.sinks} == {"webhook", "mqtt", "jsonl", "video"}
        with pytest.raises(NotFoundError):
            client.pipelines.get("nope")
        with pytest.raises(NotFoundError), client.stream(pipeline="nope") as stream:
            next(iter(stream))
        with pytest.raises(FailedPreconditionError), client.stream(pipeline="gate") as stream:
            next(iter(stream))


@pytest.mark.parametrize(("known", "outcome"), [(True, "REPLAYED"), (False, "RESTARTED")])
def test_a_subscriber_by_name_resumes(declared: Declared, known: bool, outcome: str) -> None:
    """A broken subscription by name continues on the stream it watched if it still runs here, else on the
    pipeline's present stream."""
    declared.stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="manual"), timeout=30)
    try:
        assert wait_for(lambda: declared.get("manual").state == STATE.PIPELINE_STATE_RUNNING, 120)
        inference = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(declared.server.address))
        call = inference.StreamPredictions(
            inference_pb2.StreamPredictionsRequest(pipeline="manual"), timeout=60
        )
        first = [message for message, _ in zip(call, range(3), strict=False)]
        call.cancel()
        stream_id = first[-1].stream_id if known else "no-such-stream"
        request = inference_pb2.StreamPredictionsRequest(
            pipeline="manual",
            resume=inference_pb2.StreamResume(stream_id=stream_id, after_cursor=first[-1].cursor),
        )
        resumed = inference.StreamPredictions(request, timeout=60)
        status = next(iter(resumed)).status
        resumed.cancel()
        assert status.event == inference_pb2.STREAM_EVENT_RESUMED
        assert inference_pb2.ResumeOutcome.Name(status.resume.outcome) == f"RESUME_OUTCOME_{outcome}"
        assert status.resume.previous_stream_id == stream_id
    finally:
        declared.stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="manual"), timeout=60)


def test_a_looping_pipeline_starts_its_files_again(declared: Declared) -> None:
    declared.stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name="looping"), timeout=30)
    try:
        runs: set[str] = set()

        def another_run() -> bool:
            status = declared.get("looping")
            if status.stream_id:
                runs.add(status.stream_id)
            return len(runs) >= 3

        assert wait_for(another_run, 120), declared.get("looping")
        status = declared.get("looping")
        assert status.restarts == 0 and not status.last_error, "a loop is not a failure"
    finally:
        stopped = declared.stub.StopPipeline(pipelines_pb2.StopPipelineRequest(name="looping"), timeout=60)
    assert stopped.pipeline.state == STATE.PIPELINE_STATE_STOPPED
