"""The README's pipelines file (examples/pipelines.yaml) run as a user runs it, `visionrpc serve --pipelines
FILE` in a process of its own, with only its endpoints pointed at this test's receivers (a loopback webhook
receiver, a real mosquitto broker, a temporary output folder) and autostart off so the test watches it from
the start. It counts the line crossings of bikes.mp4, posts them to the webhook, publishes them to MQTT,
writes JSON lines and the annotated video, and `visionrpc stream --pipeline bikes-gate` watches it live."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import grpc
import yaml
from conftest import wait_for
from media import media
from server_process import ServerProcess
from sink_receivers import MqttSubscriber, running_broker, running_receiver
from visionrpc.v1 import pipelines_pb2, pipelines_pb2_grpc

EXAMPLE = Path(__file__).parents[3] / "examples" / "pipelines.yaml"
NAME = "bikes-gate"


def adapted_example(webhook_url: str, mqtt_port: int, out: Path) -> dict[str, Any]:
    """The example as it is, but for where its sinks deliver, and autostart off (the test starts it)."""
    document = yaml.safe_load(EXAMPLE.read_text())
    (pipeline,) = document["pipelines"]
    assert pipeline["name"] == NAME
    for sink in pipeline["sinks"]:
        if sink["type"] == "webhook":
            sink["url"] = webhook_url
        elif sink["type"] == "mqtt":
            sink["port"] = mqtt_port
        else:
            sink["path"] = str(out / Path(sink["path"]).name)
    pipeline["autostart"] = False
    return dict(document)


def test_the_readme_pipelines_file(tmp_path: Path) -> None:
    media_root, out = tmp_path / "media", tmp_path / "out"
    media_root.mkdir()
    out.mkdir()
    shutil.copyfile(media("bikes.mp4"), media_root / "bikes.mp4")
    with (
        running_receiver() as hook,
        running_broker(tmp_path) as broker,
        MqttSubscriber(broker.port, f"visionrpc/{NAME}/events") as mqtt,
    ):
        pipelines = tmp_path / "pipelines.yaml"
        pipelines.write_text(yaml.safe_dump(adapted_example(hook.url, broker.port, out)))
        flags = ("--pipelines", str(pipelines), "--media-root", str(media_root))
        with ServerProcess(tmp_path, *flags) as server:
            stub = pipelines_pb2_grpc.PipelineServiceStub(grpc.insecure_channel(server.address))

            def status() -> pipelines_pb2.PipelineStatus:
                return stub.GetPipeline(pipelines_pb2.GetPipelineRequest(name=NAME), timeout=30).pipeline

            stub.StartPipeline(pipelines_pb2.StartPipelineRequest(name=NAME), timeout=60)
            assert wait_for(lambda: status().state == pipelines_pb2.PIPELINE_STATE_RUNNING, 120), status()
            watch = [
                sys.executable, "-m", "visionrpc.server.cli", "stream", "--pipeline", NAME,
                "--address", server.address,
            ]  # fmt: skip
            # The stream ends normally when the file does; the CLI prints a line per frame meanwhile.
            watched = subprocess.run(watch, capture_output=True, text=True, timeout=600, check=True)
            assert wait_for(lambda: status().state == pipelines_pb2.PIPELINE_STATE_ENDED, 300), status()
            final = status()

        frame_lines = [line for line in watched.stdout.splitlines() if line.startswith("source 0 frame")]
        assert frame_lines and "[middle " in frame_lines[-1], watched.stdout[-2000:]
        (middle,) = final.lines
        crossings = middle.left_to_right + middle.right_to_left
        assert final.frames_processed == 250 and crossings > 0
        # Every crossing reached the webhook and MQTT once, and the JSON lines file.
        posted = [e for body in hook.bodies() if body["type"] == "frame" for e in body["events"]]
        assert len(posted) == crossings
        assert wait_for(lambda: len([b for b in mqtt.payloads() if b["type"] == "frame"]) >= 1, 30)
        published = [e for body in mqtt.payloads() if body["type"] == "frame" for e in body["events"]]
        assert published == posted
        written = [json.loads(line) for line in (out / f"{NAME}.jsonl").read_text().splitlines()]
        assert [e for line in written if line["type"] == "frame" for e in line["events"]] == posted
        # And the annotated video of the run.
        (video,) = out.glob(f"{NAME}-*.mp4")
        capture = cv2.VideoCapture(str(video))
        try:
            assert capture.isOpened() and capture.read()[0]
        finally:
            capture.release()
