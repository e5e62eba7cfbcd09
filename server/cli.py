"""The `visionrpc` command: run the server, or talk to one through the Python SDK.

    visionrpc serve [--port 50051 --model-repository DIR ...]     run the server (flags over VISIONRPC_* env)
    visionrpc infer IMAGE... [--model ID] [--json] [--annotate OUT.jpg] [--confidence F] ...
    visionrpc models list | get ID | load ID | unload ID [--json]
    visionrpc models pull NAME... [--cache-dir DIR]                install built-ins offline, no server needed
    visionrpc models add NAME MODEL.onnx --decoder D --input-size W[xH] ...   add a model to a repository
    visionrpc models import-darknet NAME CFG WEIGHTS --class-names FILE     convert and add a Darknet model
    visionrpc pipelines list | status NAME | start NAME | stop NAME [--json]   declared pipelines
    visionrpc health [--service NAME]                              exit 0 only when SERVING

Client commands reach the server at --address (env VISIONRPC_ADDRESS, default 127.0.0.1:50051). Exit codes:
0 success, 1 failure, 2 a bad request (INVALID_ARGUMENT, NOT_FOUND, a missing image file or a usage error),
130 interrupted. The server itself (visionrpc.server.app, engines, onnx) is imported only by the commands that
run it, so client commands start fast.

Modules: cli_common (exit codes, usage errors, the SDK client), cli_models (`models pull | add |
import-darknet`), cli_stream (`stream`); this one assembles the parser and holds the other client commands.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from visionrpc.client import (
    DEFAULT_ADDRESS,
    Detection,
    ImagePrediction,
    InferResult,
    ModelInfo,
    ModelTask,
    NotFoundError,
    VisionRpcError,
    annotate,
)
from visionrpc.v1 import models_pb2

from .cli_common import (
    DEFAULT_TIMEOUT_S,
    EXIT_BAD_REQUEST,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    client_for,
    error,
    parse_classes,
    write_json,
)
from .cli_models import add_repository_commands
from .cli_pipelines import add_pipelines_command
from .cli_stream import add_stream_command
from .config import ServerConfig, add_server_arguments

__all__ = ["main"]

logger = logging.getLogger(__name__)

# Deadlines when --timeout is not given (DEFAULT_TIMEOUT_S otherwise): a first `models load` of a built-in may
# download and convert it.
_LOAD_TIMEOUT_S = 600.0
_HEALTH_TIMEOUT_S = 5.0

_BAD_REQUEST_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `visionrpc` console script; returns the process exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command != "serve":
        # `serve` configures logging itself from the server's --log-level.
        logging.basicConfig(
            level=logging.WARNING - 10 * min(ns.verbose, 2),
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    handler: Callable[[argparse.Namespace], int] = ns.handler
    try:
        return handler(ns)
    except UsageError as exc:
        error(str(exc))
        return EXIT_BAD_REQUEST
    except VisionRpcError as exc:
        error(f"{exc.code.name}: {exc.message}" if exc.message else exc.code.name)
        for violation in exc.field_violations:
            sys.stderr.write(f"  {violation.field or '<request>'}: {violation.description}\n")
        return EXIT_BAD_REQUEST if exc.code in _BAD_REQUEST_CODES else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionrpc", description="gRPC computer-vision inference server")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server", description="Run the server until SIGTERM.")
    add_server_arguments(serve)
    serve.set_defaults(handler=_cmd_serve)

    # Shared by the commands that talk to a server.
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--address",
        default=os.environ.get("VISIONRPC_ADDRESS", DEFAULT_ADDRESS),
        help=f"server HOST:PORT or gRPC target (env VISIONRPC_ADDRESS; default {DEFAULT_ADDRESS})",
    )
    client.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="deadline of the call in seconds (default 30)"
    )
    client.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    tls = client.add_argument_group("TLS and keys (a server with --tls-cert-file or --api-keys-file)")
    tls.add_argument("--tls-ca-file", metavar="PEM", help="connect with TLS, trusting this CA")
    tls.add_argument("--tls-cert-file", metavar="PEM", help="client certificate for mutual TLS")
    tls.add_argument("--tls-key-file", metavar="PEM", help="the client certificate's key")
    tls.add_argument("--tls-server-name", metavar="NAME", help="name to verify in the server's certificate")
    tls.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="file holding the API key to send (env VISIONRPC_API_KEY: the key)",
    )
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", help="print the response as protobuf JSON")

    infer = commands.add_parser(
        "infer",
        parents=[client, json_flag],
        help="run a model on image files",
        description="Run a model on one or more image files (JPEG, PNG, BMP, WebP; '-' reads stdin).",
    )
    infer.add_argument("images", nargs="+", metavar="IMAGE")
    infer.add_argument("--model", metavar="ID", help="'name' or 'name/version' (default: the server's)")
    infer.add_argument("--confidence", type=float, metavar="F", help="minimum confidence in [0, 1]")
    infer.add_argument("--iou", type=float, metavar="F", help="NMS IoU threshold in [0, 1]")
    infer.add_argument("--max-detections", type=int, metavar="N", help="at most N detections per image")
    infer.add_argument("--classes", metavar="A,B", help="keep only these classes, by name or id (cup,41)")
    infer.add_argument("--top-k", type=int, metavar="N", help="classifiers: the N best classes")
    infer.add_argument(
        "--annotate",
        type=Path,
        metavar="OUT.jpg",
        help="draw the predictions and write the image (OUT-<i>.jpg for each of several images)",
    )
    infer.set_defaults(handler=_cmd_infer)

    models = commands.add_parser("models", help="list, inspect, load, unload, pull or add models")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = model_commands.add_parser("list", parents=[client, json_flag], help="list the server's models")
    listing.set_defaults(handler=_cmd_models_list)
    for action, help_text in (
        ("get", "show one model"),
        ("load", "load and warm a model now"),
        ("unload", "release a loaded model"),
    ):
        sub = model_commands.add_parser(action, parents=[client, json_flag], help=help_text)
        sub.add_argument("model_id", metavar="ID", help="'name' or 'name/version'")
        sub.set_defaults(handler=_cmd_models_action, action=action)
    add_repository_commands(model_commands)
    add_stream_command(commands, [client, json_flag])
    add_pipelines_command(commands, [client, json_flag])

    health = commands.add_parser(
        "health", parents=[client], help="check the server's health (exit 0: SERVING)"
    )
    health.add_argument("--service", default="", help="service name; '' (default) is the whole server")
    health.set_defaults(handler=_cmd_health)
    return parser


# ------------------------------------------------------------------------------------------- commands


def _cmd_serve(ns: argparse.Namespace) -> int:
    try:
        config = ServerConfig.from_namespace(ns)
    except ValueError as exc:  # a flag or VISIONRPC_* value out of range: a usage error, not a crash
        raise UsageError(str(exc)) from exc
    # ONNX Runtime writes $XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/ (a device id and a SQLite
    # file), reading the variable once when it is imported: point it into the server's cache before that, so
    # the server writes nothing under ~/.cache besides its own (and runs with a read-only home).
    os.environ["XDG_CACHE_HOME"] = str(config.cache_dir / "xdg")
    # Imported on use, not to break a cycle: client commands must not pay for loading engines and onnx.
    from visionrpc.engines.onnxruntime_engine import available_cores
    from visionrpc.engines.onnxruntime_memory import limit_malloc_arenas

    limit_malloc_arenas(available_cores())  # before the threads start (docs/memory.md)
    from .app import serve

    return serve(config)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


@dataclass(frozen=True, slots=True)
class _InputImage:
    name: str
    data: bytes


def _read_images(names: Sequence[str]) -> list[_InputImage]:
    """Reads every image before any RPC, so a typo fails fast and clearly."""
    images: list[_InputImage] = []
    for name in names:
        if name == "-":
            images.append(_InputImage("<stdin>", sys.stdin.buffer.read()))
            continue
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"no such image file: {name}")
        try:
            images.append(_InputImage(name, path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror}") from exc
    return images


def _cmd_infer(ns: argparse.Namespace) -> int:
    images = _read_images(ns.images)
    with client_for(ns) as client:
        result = client.infer(
            [image.data for image in images],
            model=ns.model,
            confidence=ns.confidence,
            iou=ns.iou,
            max_detections=ns.max_detections,
            classes=parse_classes(ns.classes),
            top_k=ns.top_k,
        )
    if ns.json:
        write_json(result.response)
    else:
        _write_infer_result(result, [image.name for image in images])
    if ns.annotate is not None:
        for index, (image, prediction) in enumerate(zip(images, result.predictions, strict=True)):
            out = ns.annotate if len(images) == 1 else _numbered(ns.annotate, index)
            _write_annotated(image, prediction, out)
            logger.info("wrote %s", out)
    return EXIT_OK


def _cmd_models_list(ns: argparse.Namespace) -> int:
    with client_for(ns) as client:
        models = client.list_models()
    if ns.json:
        write_json(models_pb2.ListModelsResponse(models=[m.proto for m in models]))
        return EXIT_OK
    rows: list[list[str]] = [["NAME", "VERSION", "TASK", "DECODER", "STATE", "ENGINE", "INPUT", "BUILTIN"]]
    for m in models:
        rows.append(
            [
                m.name,
                m.version or "-",
                m.task.value,
                m.decoder or "-",
                m.state.value,
                _engine_text(m) or "-",
                f"{m.input.width}x{m.input.height}" if m.input else "-",
                "yes" if m.builtin else "no",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    return EXIT_OK


def _cmd_models_action(ns: argparse.Namespace) -> int:
    with client_for(ns, _LOAD_TIMEOUT_S if ns.action == "load" else DEFAULT_TIMEOUT_S) as client:
        actions = {"get": client.get_model, "load": client.load_model, "unload": client.unload_model}
        model = actions[ns.action](ns.model_id)
    if ns.json:
        write_json(model.proto)
    else:
        _write_model(model)
    return EXIT_OK


def _cmd_health(ns: argparse.Namespace) -> int:
    with client_for(ns, _HEALTH_TIMEOUT_S) as client:
        try:
            status = client.health(ns.service)
        except NotFoundError as exc:
            # grpc's health servicer answers an unknown service with a bare NOT_FOUND and no message.
            raise UsageError(
                f"NOT_FOUND: the server has no health status for service {ns.service!r}"
            ) from exc
    sys.stdout.write(status + "\n")
    return EXIT_OK if status == "SERVING" else EXIT_FAILURE


# --------------------------------------------------------------------------------------------- output


def _engine_text(model: ModelInfo | InferResult) -> str:
    e = model.engine
    return " ".join(part for part in (e.engine, e.provider, e.device, e.precision) if part) if e else ""


def _write_infer_result(result: InferResult, names: Sequence[str]) -> None:
    out = sys.stdout
    out.write(f"model {result.model_name}/{result.model_version}  {_engine_text(result)}".rstrip() + "\n")
    for name, prediction in zip(names, result.predictions, strict=True):
        t = prediction.timings
        size = prediction.image_size
        out.write(
            f"{name}  {size.width}x{size.height}  total {t.total_ms:.1f} ms (decode {t.decode_ms:.1f}, "
            f"queue {t.queue_ms:.1f}, preprocess {t.preprocess_ms:.1f}, inference {t.inference_ms:.1f}, "
            f"postprocess {t.postprocess_ms:.1f})\n"
        )
        for det in prediction.detections:
            box = ", ".join(f"{v:.0f}" for v in det.box.as_tuple())
            out.write(f"  {_label(det)} {det.confidence:.2f} [{box}]\n")
            if det.keypoints:
                points = " ".join(
                    f"{k.name or i} ({k.x:.0f}, {k.y:.0f})" for i, k in enumerate(det.keypoints)
                )
                out.write(f"    landmarks: {points}\n")
            if det.mask is not None:
                grid = det.mask.width * det.mask.height
                share = det.mask.area / grid if grid else 0.0
                out.write(f"    mask: {det.mask.area} px ({share:.0%} of its box)\n")
        for c in prediction.classifications:
            out.write(f"  {c.class_name or f'class {c.class_id}'} {c.confidence:.2f}\n")
        if not prediction.detections and not prediction.classifications:
            out.write("  (nothing found)\n")


def _build_text(m: ModelInfo) -> str:
    build = m.build
    if build is None:
        return "-"
    progress = f" {build.progress:.0%}" if build.progress is not None else ""
    target = f"{build.target_engine} " if build.target_engine else ""
    return f"{target}{build.state.value}{progress}" + (f" ({build.reason})" if build.reason else "")


def _label(det: Detection) -> str:
    return det.class_name or f"class {det.class_id}"


def _write_model(m: ModelInfo) -> None:
    lines = [
        ("name", m.name),
        ("version", m.version),
        ("versions", ", ".join(m.versions)),
        ("task", m.task.value),
        ("decoder", m.decoder),
        ("state", m.state.value + (f" ({m.state_reason})" if m.state_reason else "")),
        ("engine", _engine_text(m) or "-"),
        ("build", _build_text(m)),
        (
            "input",
            f"{m.input.width}x{m.input.height} {m.input.channel_order.value} {m.input.resize}"
            if m.input
            else "-",
        ),
        ("defaults", _defaults_text(m)),
        ("classes", _preview(m.class_names)),
        *([("keypoints", _preview(m.keypoint_names))] if m.keypoint_names else []),
        ("builtin", "yes" if m.builtin else "no"),
        ("description", m.description),
    ]
    for key, value in lines:
        sys.stdout.write(f"{key + ':':<13}{value}".rstrip() + "\n")


def _defaults_text(m: ModelInfo) -> str:
    """Only the defaults the model's task uses: a classifier returns its top_k classes and ignores
    confidence, IoU and max_detections; a detector ignores top_k."""
    d = m.defaults
    if d is None:
        return "-"
    if m.task is ModelTask.CLASSIFICATION:
        return f"top_k {d.top_k}"
    return (
        f"confidence {d.confidence_threshold:g}, iou {d.iou_threshold:g}, max_detections {d.max_detections}"
    )


def _preview(names: Sequence[str], limit: int = 8) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return f"{len(names)}: {shown}" + (", ..." if len(names) > limit else "")


# ----------------------------------------------------------------------------------------- annotation


def _numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}-{index}{path.suffix}")


def _write_annotated(image: _InputImage, prediction: ImagePrediction, out: Path) -> None:
    import cv2  # on use: only --annotate needs OpenCV, and it is slow to import

    pixels = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise UsageError(f"OpenCV cannot decode {image.name} to annotate it")
    drawn = annotate(np.asarray(pixels, dtype=np.uint8), prediction)
    ok, encoded = cv2.imencode(out.suffix or ".jpg", drawn)
    if not ok:
        raise UsageError(f"cannot encode an image as {out.suffix!r} for {out}")
    try:
        out.write_bytes(encoded.tobytes())
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror}") from exc


if __name__ == "__main__":
    sys.exit(main())
