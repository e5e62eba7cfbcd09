"""`visionrpc models pull | add | import-darknet`: manage model repositories on disk, with no server.

    visionrpc models pull NAME... [--cache-dir DIR]
    visionrpc models add NAME MODEL.onnx --decoder yolov8 --input-size 640 --class-names FILE [...]
    visionrpc models import-darknet NAME CFG WEIGHTS --class-names FILE [...]

`add` and `import-darknet` write `<repository>/<name>/<version>/` (the next version unless --version is
given) after checking the model against its manifest, and print that directory. The repository is
--repository, else VISIONRPC_MODEL_REPOSITORY, else the server's default, so a server started with the same
settings finds the model. A running server picks up a new version on its next lookup.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_common import EXIT_OK, CommandAdder, UsageError, fail
from .config import ServerConfig
from .domain import ChannelOrder, Task
from .errors import VisionRpcError
from .manifest import ENGINE_CHOICES, Decoder, ModelManifest, ResizeMode

if TYPE_CHECKING:
    import onnx

__all__ = ["add_repository_commands"]

logger = logging.getLogger(__name__)


def add_repository_commands(model_commands: CommandAdder) -> None:
    """Adds `pull`, `add` and `import-darknet` to the `visionrpc models` sub-commands."""
    pull = model_commands.add_parser(
        "pull",
        help="install built-in models into the local cache (no server)",
        description="Download and convert built-in models into the local cache so a server works offline.",
    )
    pull.add_argument("names", nargs="+", metavar="NAME")
    pull.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"download cache (env VISIONRPC_CACHE_DIR; default {ServerConfig().cache_dir})",
    )
    # Progress (downloads, conversion) is logged at INFO, shown by default: a first pull takes a while.
    pull.add_argument("-v", "--verbose", action="count", default=1, help="log more (-v for debug)")
    pull.set_defaults(handler=_cmd_pull)

    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "--repository",
        type=Path,
        default=None,
        help=f"model repository (env VISIONRPC_MODEL_REPOSITORY; default {ServerConfig().model_repository})",
    )
    target.add_argument("--version", metavar="N", help="version to write (default: the next one, 1 if new)")
    target.add_argument("--description", default="", metavar="TEXT", help="shown by `models get`")
    target.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        help="engine for this model, overriding the server's --engine (e.g. onnxruntime for operators "
        "TensorRT cannot parse)",
    )
    target.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")

    add = model_commands.add_parser(
        "add",
        parents=[target],
        help="add an ONNX model to a model repository (no server)",
        description="Check an ONNX model against the manifest these options describe, then add both to "
        "the repository as a new version.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("onnx_file", type=Path, metavar="ONNX_FILE")
    add.add_argument(
        "--decoder", required=True, choices=[d.value for d in Decoder], help="how the outputs are read"
    )
    add.add_argument(
        "--input-size",
        required=True,
        type=_input_size,
        metavar="W[xH]",
        help="model input, e.g. 640 or 640x384",
    )
    classes = add.add_mutually_exclusive_group()
    classes.add_argument("--class-names", type=Path, metavar="FILE", help="class names, one per line")
    classes.add_argument("--classes", metavar="A,B,C", help="class names, comma-separated")
    add.add_argument(
        "--channel-order",
        choices=[ChannelOrder.RGB.value, ChannelOrder.BGR.value],
        help="channel order the model expects (rgb)",
    )
    add.add_argument(
        "--resize", choices=[m.value for m in ResizeMode], help="how images are fitted (letterbox)"
    )
    add.add_argument("--scale", type=float, metavar="F", help="pixel multiplier before mean/std (1/255)")
    add.add_argument("--mean", type=_triple, metavar="A,B,C", help="per-channel mean after scaling (0,0,0)")
    add.add_argument("--std", type=_triple, metavar="A,B,C", help="per-channel std after scaling (1,1,1)")
    add.add_argument(
        "--probabilities", action="store_true", help="classification outputs are probabilities, not logits"
    )
    add.add_argument("--confidence", type=float, metavar="F", help="default confidence threshold (0.25)")
    add.add_argument("--iou", type=float, metavar="F", help="default NMS IoU threshold (0.45)")
    add.set_defaults(handler=_cmd_add)

    darknet = model_commands.add_parser(
        "import-darknet",
        parents=[target],
        help="convert a Darknet cfg + weights and add it to a model repository (no server)",
        description="Convert a Darknet YOLO (cfg + weights) to ONNX with the yolov5 decoder and add it to "
        "the repository as a new version.",
    )
    darknet.add_argument("name", metavar="NAME")
    darknet.add_argument("cfg", type=Path, metavar="CFG")
    darknet.add_argument("weights", type=Path, metavar="WEIGHTS")
    darknet.add_argument(
        "--class-names", required=True, type=Path, metavar="FILE", help="class names, one per line"
    )
    darknet.set_defaults(handler=_cmd_import_darknet)


# ------------------------------------------------------------------------------------------- commands


def _cmd_pull(ns: argparse.Namespace) -> int:
    # Imported on use, not to break a cycle: the converters load onnx, which no client command needs.
    from .models.builtins import BUILTIN_MODELS, install_builtin, is_builtin

    config = _config(argparse.Namespace(cache_dir=ns.cache_dir))
    unknown = [name for name in ns.names if not is_builtin(name)]
    if unknown:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UsageError(f"not a built-in model: {', '.join(unknown)} (built-ins: {known})")
    for name in ns.names:
        try:
            path = install_builtin(name, config.builtin_repository, config.cache_dir)
        except VisionRpcError as exc:  # the server's domain errors: sources unavailable or broken
            return fail(f"could not install {name}: {exc.message}")
        except OSError as exc:
            return fail(f"could not install {name}: {exc}")
        sys.stdout.write(f"{name}: {path}\n")
    return EXIT_OK


def _cmd_add(ns: argparse.Namespace) -> int:
    decoder = Decoder(ns.decoder)
    _require_file(ns.onnx_file, "ONNX file")
    if ns.class_names is not None:
        names = _read_class_names(ns.class_names)
    elif ns.classes is not None:
        names = tuple(name.strip() for name in ns.classes.split(",") if name.strip())
    elif decoder is Decoder.CENTERFACE:
        names = ("face",)
    else:
        # Without names the class count cannot be checked, and results would say "41" instead of "cup".
        raise UsageError(f"--decoder {ns.decoder} needs --class-names FILE or --classes A,B,C")
    if ns.probabilities and decoder is not Decoder.CLASSIFICATION:
        raise UsageError(f"--probabilities applies to --decoder classification only, got {ns.decoder}")

    # Only the options given: the manifest's own defaults stay the one source of the others.
    given: dict[str, Any] = {
        "channel_order": ChannelOrder(ns.channel_order) if ns.channel_order else None,
        "resize": ResizeMode(ns.resize) if ns.resize else None,
        "scale": ns.scale,
        "mean": ns.mean,
        "std": ns.std,
        "default_confidence": ns.confidence,
        "default_iou": ns.iou,
    }
    width, height = ns.input_size
    try:
        manifest = ModelManifest(
            task=Task.CLASSIFICATION if decoder is Decoder.CLASSIFICATION else Task.DETECTION,
            decoder=decoder,
            input_width=width,
            input_height=height,
            class_names=names,
            outputs_are_probabilities=ns.probabilities,
            description=ns.description,
            **{key: value for key, value in given.items() if value is not None},
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return _add(ns, ns.onnx_file, manifest)


def _cmd_import_darknet(ns: argparse.Namespace) -> int:
    from .models.importing import darknet_model  # on use: onnx (see _cmd_pull)

    _require_file(ns.cfg, "Darknet cfg")
    _require_file(ns.weights, "Darknet weights file")
    names = _read_class_names(ns.class_names)
    try:
        model, manifest = darknet_model(ns.cfg, ns.weights, names, description=ns.description)
    except ValueError as exc:  # DarknetCfgError and DarknetWeightsError included
        raise UsageError(str(exc)) from exc
    return _add(ns, model, manifest)


def _add(ns: argparse.Namespace, model: onnx.ModelProto | Path, manifest: ModelManifest) -> int:
    from .models.builtins import is_builtin  # on use: onnx (see _cmd_pull)
    from .models.importing import add_model

    if ns.engine:
        manifest = dataclasses.replace(manifest, engine=ns.engine)

    repository = _config(argparse.Namespace(model_repository=ns.repository)).model_repository
    try:
        version_dir = add_model(repository, ns.name, model, manifest, version=ns.version)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # the repository itself: permissions, a full disk
        return fail(f"could not write to {repository}: {exc}")
    if is_builtin(ns.name):
        logger.warning("%s shadows the built-in model of the same name in this repository", ns.name)
    sys.stdout.write(f"{version_dir}\n")
    return EXIT_OK


# -------------------------------------------------------------------------------------------- helpers


def _config(namespace: argparse.Namespace) -> ServerConfig:
    try:
        return ServerConfig.from_namespace(namespace)
    except ValueError as exc:  # a VISIONRPC_* value out of range
        raise UsageError(str(exc)) from exc


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise UsageError(f"no such {what}: {path}")


def _read_class_names(path: Path) -> tuple[str, ...]:
    _require_file(path, "class names file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read class names from {path}: {exc}") from exc
    return tuple(line.strip() for line in lines if line.strip())


def _input_size(text: str) -> tuple[int, int]:
    """ "640" -> (640, 640); "640x384" -> (640, 384), width first as everywhere in the manifest."""
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height) if sep else int(width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W or WxH in pixels, got {text!r}") from None
    if min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return size


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers A,B,C, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers A,B,C, got {text!r}")
    return values[0], values[1], values[2]
