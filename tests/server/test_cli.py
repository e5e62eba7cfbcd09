"""The `visionrpc` command against a real server: in-process through `main()`, and as real processes
(`python -m visionrpc.server.cli`, the `visionrpc` console script) to prove the entry points."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import sysconfig
import threading
from argparse import Namespace
from pathlib import Path
from typing import IO, Any

import cv2
import pytest
from media import media
from visionrpc.server.cli import main
from visionrpc.server.config import ServerConfig

INFERENCE_SERVICE = "visionrpc.v1.InferenceService"
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: any RPC fails with UNAVAILABLE


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def image_size(name: str) -> tuple[int, int]:
    pixels = cv2.imread(str(media(name)))
    assert pixels is not None
    return pixels.shape[1], pixels.shape[0]


DETECTION_LINE = r"^  {label} (0\.\d\d) \[\d+, \d+, \d+, \d+\]$"

INFER_CASES = [
    # (image, extra args, expected label, model header)
    ("coffee.png", [], "cup", "yolov3-tiny-coco/1"),
    ("motorcycle_left.png", [], "motorbike", "yolov3-tiny-coco/1"),
    ("astronaut.png", ["--model", "centerface"], "face", "centerface/1"),
]


@pytest.mark.parametrize(("image", "args", "label", "model"), INFER_CASES, ids=[c[0] for c in INFER_CASES])
def test_infer_human_output(
    server: Any, capsys: pytest.CaptureFixture[str], image: str, args: list[str], label: str, model: str
) -> None:
    code, out, err = run(capsys, "infer", str(media(image)), "--address", server.address, *args)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"model {model}  onnxruntime")
    width, height = image_size(image)
    assert lines[1].startswith(f"{media(image)}  {width}x{height}  total ")
    confidences = [
        float(m.group(1)) for line in lines if (m := re.match(DETECTION_LINE.format(label=label), line))
    ]
    assert confidences and max(confidences) >= 0.5
    if label == "face":
        assert re.search(
            r"^    landmarks: left_eye \(\d+, \d+\) right_eye .* right_mouth \(\d+, \d+\)$", out, re.M
        )


def test_infer_several_images_in_order(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "infer",
        str(media("motorcycle_left.png")),
        str(media("coffee.png")),
        "--address",
        server.address,
    )
    assert code == 0
    names = [line.split("  ")[0] for line in out.splitlines()[1:] if not line.startswith(" ")]
    assert names == [str(media("motorcycle_left.png")), str(media("coffee.png"))]


def test_infer_json_is_the_infer_response(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "infer", str(media("coffee.png")), "--json", "--address", server.address)
    assert code == 0
    response = json.loads(out)
    assert (response["model_name"], response["model_version"]) == ("yolov3-tiny-coco", "1")
    (prediction,) = response["predictions"]
    assert prediction["image_size"] == {"width": 600, "height": 400}
    cups = [d for d in prediction["detections"] if d["class_name"] == "cup"]
    assert cups and cups[0]["confidence"] >= 0.5 and cups[0]["class_id"] == 41
    assert set(cups[0]["box"]) == {"x_min", "y_min", "x_max", "y_max"}  # proto field names, not camelCase


OPTION_CASES = [
    (["--classes", "cup"], lambda out: "  cup " in out and "dining" not in out),
    (["--classes", "41"], lambda out: "  cup " in out),
    (["--classes", "giraffe"], lambda out: "(nothing found)" in out),
    (["--confidence", "0.99"], lambda out: "(nothing found)" in out),
    (["--confidence", "0.01", "--max-detections", "2", "--iou", "0.3"], lambda out: out.count("\n  ") == 2),
]


@pytest.mark.parametrize(("args", "check"), OPTION_CASES, ids=[" ".join(c[0]) for c in OPTION_CASES])
def test_infer_options(server: Any, capsys: pytest.CaptureFixture[str], args: list[str], check: Any) -> None:
    code, out, _ = run(capsys, "infer", str(media("coffee.png")), "--address", server.address, *args)
    assert code == 0
    assert check(out), out


@pytest.mark.parametrize("images", [["coffee.png"], ["coffee.png", "astronaut.png"]], ids=["one", "two"])
def test_annotate_writes_decodable_images(
    server: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path, images: list[str]
) -> None:
    out = tmp_path / "annotated.jpg"
    code, _, _ = run(
        capsys, "infer", *(str(media(i)) for i in images), "--annotate", str(out), "--address", server.address
    )
    assert code == 0
    written = [out] if len(images) == 1 else [tmp_path / f"annotated-{i}.jpg" for i in range(len(images))]
    assert sorted(tmp_path.iterdir()) == sorted(written)
    for path, image in zip(written, images, strict=True):
        assert path.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
        decoded = cv2.imread(str(path))
        assert decoded is not None and (decoded.shape[1], decoded.shape[0]) == image_size(image)


def test_address_from_environment(
    server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONRPC_ADDRESS", server.address)
    assert run(capsys, "health")[:2] == (0, "SERVING\n")


ERROR_CASES = [
    # (argv after "infer" or the whole command, expected exit code, stderr must contain)
    (["infer", "{coffee}", "--model", "no-such-model"], 2, "error: NOT_FOUND: "),
    (["infer", "{coffee}", "--model", "a b"], 2, "  model_id: expected"),
    (["infer", "{pyproject}"], 2, "  images[0].encoded: "),
    (
        ["infer", "{coffee}", "--confidence", "2"],
        2,
        "  options.confidence_threshold: expected a value in [0, 1]",
    ),
    (["infer", "{coffee}", "--timeout", "0.001"], 1, "error: DEADLINE_EXCEEDED"),
    (["models", "get", "no-such-model"], 2, "error: NOT_FOUND: "),
    (["health", "--service", "no.such.Service"], 2, "error: NOT_FOUND: the server has no health status"),
]


@pytest.mark.parametrize(
    ("argv", "exit_code", "message"), ERROR_CASES, ids=[" ".join(c[0][:3]) for c in ERROR_CASES]
)
def test_errors_exit_non_zero(
    server: Any, capsys: pytest.CaptureFixture[str], argv: list[str], exit_code: int, message: str
) -> None:
    paths = {
        "coffee": str(media("coffee.png")),
        "pyproject": str(Path(__file__).parents[2] / "pyproject.toml"),
    }
    code, out, err = run(capsys, *(a.format(**paths) for a in argv), "--address", server.address)
    assert (code, out) == (exit_code, "")
    assert message in err
    assert err.startswith("error: ")


OFFLINE_CASES = [
    # Against an address where nothing listens: a missing file is reported before any RPC (exit 2, not 1).
    (["infer", "/no/such/image.png"], 2, "error: no such image file: /no/such/image.png"),
    (["infer", "{coffee}"], 1, "error: UNAVAILABLE: "),
    (["health"], 1, "error: UNAVAILABLE: "),
    (["models", "list"], 1, "error: UNAVAILABLE: "),
]


@pytest.mark.parametrize(
    ("argv", "exit_code", "message"), OFFLINE_CASES, ids=[" ".join(c[0]) for c in OFFLINE_CASES]
)
def test_offline_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], exit_code: int, message: str
) -> None:
    code, _, err = run(
        capsys, *(a.format(coffee=media("coffee.png")) for a in argv), "--address", UNREACHABLE
    )
    assert code == exit_code
    assert err.startswith(message)


@pytest.mark.parametrize(
    "argv",
    [["infer"], ["models"], ["infer", "x", "--timeout", "0"], []],
    ids=["no-image", "no-action", "zero-timeout", "nothing"],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: visionrpc" in capsys.readouterr().err


SERVE_SETTING_CASES = [
    (["--port", "70000"], {}, "error: expected a port in [0, 65535], got 70000"),
    ([], {"VISIONRPC_PORT": "abc"}, "error: VISIONRPC_PORT: invalid literal"),
]


@pytest.mark.parametrize(("argv", "env", "message"), SERVE_SETTING_CASES, ids=["flag", "environment"])
def test_serve_rejects_bad_settings_before_starting(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "serve", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(message)


# ------------------------------------------------------------------------------------------------ models


def test_models_list_table(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list", "--address", server.address)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "VERSION", "TASK", "DECODER", "STATE", "ENGINE", "INPUT", "BUILTIN"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["yolov3-tiny-coco"][1:5] == ["1", "detection", "yolov5", "ready"]
    assert by_name["yolov3-tiny-coco"][-2:] == ["416x416", "yes"]
    assert "centerface" in by_name


def test_models_list_json(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list", "--json", "--address", server.address)
    assert code == 0
    names = {m["name"] for m in json.loads(out)["models"]}
    assert {"yolov3-tiny-coco", "centerface"} <= names


def test_models_get(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "get", "centerface", "--address", server.address)
    assert code == 0
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in out.splitlines())
    assert fields["name"] == "centerface" and fields["decoder"] == "centerface"
    assert fields["keypoints"].startswith("5: left_eye, right_eye")
    assert fields["input"].startswith("640x640")

    code, out, _ = run(capsys, "models", "get", "yolov3-tiny-coco/1", "--json", "--address", server.address)
    model = json.loads(out)
    assert (code, model["name"], model["state"], len(model["class_names"])) == (
        0,
        "yolov3-tiny-coco",
        "MODEL_STATE_READY",
        80,
    )


def test_models_load_and_unload(fresh_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    address = ("--address", fresh_server.address)
    code, out, _ = run(capsys, "models", "load", "centerface", *address)
    assert (
        code == 0
        and re.search(r"^state:\s+ready$", out, re.M)
        and re.search(r"^engine:\s+onnxruntime", out, re.M)
    )
    code, out, _ = run(capsys, "models", "unload", "centerface", "--json", *address)
    assert code == 0 and json.loads(out)["state"] == "MODEL_STATE_AVAILABLE"


def test_models_pull_installs_into_the_builtin_repository(
    server: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session server installed the built-ins into this cache already: pulling again is offline and fast.
    cache_dir = server.config.cache_dir
    expected = ServerConfig(cache_dir=cache_dir).builtin_repository
    assert expected == cache_dir / "builtin-models"
    code, out, _ = run(
        capsys, "models", "pull", "yolov3-tiny-coco", "centerface", "--cache-dir", str(cache_dir)
    )
    assert code == 0
    assert out.splitlines() == [
        f"yolov3-tiny-coco: {expected / 'yolov3-tiny-coco' / '1'}",
        f"centerface: {expected / 'centerface' / '1'}",
    ]
    assert (expected / "centerface" / "1").is_dir()

    monkeypatch.setenv("VISIONRPC_CACHE_DIR", str(cache_dir))  # the environment works like the flag
    assert ServerConfig.from_namespace(Namespace()).cache_dir == cache_dir
    assert run(capsys, "models", "pull", "centerface")[:2] == (
        0,
        f"centerface: {expected / 'centerface' / '1'}\n",
    )


def test_models_pull_unknown_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, "models", "pull", "centerface", "no-such-builtin", "--cache-dir", str(tmp_path)
    )
    assert (code, out) == (2, "")
    assert err == "error: not a built-in model: no-such-builtin (built-ins: centerface, yolov3-tiny-coco)\n"
    assert list(tmp_path.iterdir()) == []  # nothing was installed: names are checked first


# ------------------------------------------------------------------------------------------------ health


@pytest.mark.parametrize("service", [[], ["--service", INFERENCE_SERVICE]], ids=["server", "inference"])
def test_health_serving(server: Any, capsys: pytest.CaptureFixture[str], service: list[str]) -> None:
    assert run(capsys, "health", "--address", server.address, *service) == (0, "SERVING\n", "")


# ------------------------------------------------------------------------------------ real processes


def console_script() -> str:
    path = Path(sysconfig.get_path("scripts")) / "visionrpc"
    if not path.exists():
        pytest.skip(f"the visionrpc console script is not installed at {path}")
    return str(path)


def test_module_entry_point_json(server: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "visionrpc.server.cli", "infer", "-", "--json", "--address", server.address],
        input=media("coffee.png").read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    detections = json.loads(result.stdout)["predictions"][0]["detections"]
    assert any(d["class_name"] == "cup" and d["confidence"] >= 0.5 for d in detections)


@pytest.mark.parametrize(
    ("address", "exit_code", "stdout"),
    [("{server}", 0, "SERVING\n"), (UNREACHABLE, 1, "")],
    ids=["serving", "unreachable"],
)
def test_console_script_health(server: Any, address: str, exit_code: int, stdout: str) -> None:
    result = subprocess.run(
        [console_script(), "health", "--address", address.format(server=server.address)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (exit_code, stdout), result.stderr


def test_importing_the_cli_configures_nothing_and_loads_no_server() -> None:
    code = (
        "import logging, sys, visionrpc.server.cli\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert 'visionrpc.server.app' not in sys.modules\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def _drain(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    for line in stream or ():
        lines.put(line)


def test_serve_runs_until_sigterm(server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = [
        sys.executable, "-m", "visionrpc.server.cli", "serve", "--port", "0", "--no-preload-default-model",
        "--model-repository", str(tmp_path / "models"), "--cache-dir", str(server.config.cache_dir),
        "--shutdown-grace-s", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        lines: queue.Queue[str] = queue.Queue()
        # A reader thread, so a server that never logs its port fails the test by timeout instead of hanging.
        reader = threading.Thread(target=_drain, args=(process.stderr, lines), daemon=True)
        reader.start()
        try:
            port = None
            while port is None:
                if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", lines.get(timeout=60)):
                    port = match.group(1)
            assert run(capsys, "health", "--address", f"127.0.0.1:{port}") == (0, "SERVING\n", "")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=10)
