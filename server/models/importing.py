"""Adding models to a model repository: from an ONNX file or a Darknet cfg + weights pair, checked first.

A model that does not fit its manifest (wrong input size, a YOLOv8 export declared as YOLOv5, a class list one
short) would otherwise load fine and fail on the first request, or worse, return nonsense. `add_model`
checks the ONNX graph against the manifest before anything is written - its declared shapes (shapes.py),
then a real run on ONNX Runtime, which settles what dynamic axes leave open (probe.py) - and writes the
version atomically (`write_version_dir`), so a server reading the repository at the same time never sees
half a model.

Example:
    >>> model, manifest = darknet_model(Path("yolov3-tiny.cfg"), Path("yolov3-tiny.weights"), coco_names)
    >>> add_model(Path("models"), "my-tiny", model, manifest)
    PosixPath('models/my-tiny/1')
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from visionrpc.engines import EngineError, OnnxRuntimeEngine

from ..domain import ChannelOrder, Task
from ..errors import InvalidArgumentError
from ..manifest import Decoder, ModelManifest, ResizeMode
from .ids import split_model_id
from .integrity import write_integrity_record
from .metadata import read_metadata
from .probe import check_by_running, check_export_size
from .shapes import check_declared

if TYPE_CHECKING:  # imported where used: `onnx` costs ~1 s and ~15 MB at start; serving never needs it
    import onnx

__all__ = [
    "add_model",
    "check_file_by_running",
    "check_model_against_manifest",
    "darknet_model",
    "load_onnx",
    "write_version_dir",
]

logger = logging.getLogger(__name__)

# A concurrent add can take the version this one picked; after this many lost races something else is wrong.
_MAX_VERSION_ATTEMPTS = 16


def darknet_model(
    cfg: Path,
    weights: Path,
    class_names: Sequence[str],
    *,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
) -> tuple[onnx.ModelProto, ModelManifest]:
    """Converts a Darknet cfg + weights pair to ONNX and describes it with a `yolov5` decoder manifest.

    Preprocessing is Darknet's own: RGB scaled to [0, 1]. The graph is letterboxed with YOLOv5's grey (114),
    as the built-in yolov3-tiny is. `extra` entries are added to the manifest's `extra` beside the input and
    output names and the conversion's record (layers, floats consumed, weights format).

    Raises:
        ValueError: the number of class names differs from the cfg's `classes=` (DarknetCfgError and
            DarknetWeightsError, both ValueErrors, for a cfg or weights file the importer refuses).
    """
    from visionrpc.engines.importers import darknet  # deferred with onnx, which it builds on

    conversion = darknet.convert_darknet(cfg, weights)
    names = tuple(class_names)
    if len(names) != conversion.class_count:
        raise ValueError(
            f"expected {conversion.class_count} class names (the classes= of {cfg.name}'s [yolo] layers), "
            f"got {len(names)}"
        )
    manifest = ModelManifest(
        task=Task.DETECTION,
        decoder=Decoder.YOLOV5,
        input_width=conversion.input_width,
        input_height=conversion.input_height,
        class_names=names,
        channel_order=ChannelOrder.RGB,
        resize=ResizeMode.LETTERBOX,
        pad_value=114,
        scale=1.0 / 255.0,
        default_confidence=0.25,
        default_iou=0.45,
        description=description,
        extra={
            "input": darknet.INPUT_NAME,
            "output": darknet.OUTPUT_NAME,
            **(extra or {}),
            "darknet": {
                "layers": conversion.layer_count,
                "weights_consumed": conversion.weights_consumed,
                "weights_format": f"{conversion.header.major}.{conversion.header.minor}",
            },
        },
    )
    return conversion.model, manifest


def add_model(
    repository: Path,
    name: str,
    model: onnx.ModelProto | Path,
    manifest: ModelManifest,
    *,
    version: str | None = None,
) -> Path:
    """Checks `model` against `manifest` and writes `<repository>/<name>/<version>/` with both.

    `model` is a loaded graph or the path of a self-contained .onnx file (copied byte for byte). Without
    `version` the next integer after the highest one present is used (1 for a new name).

    Returns:
        The version directory written.

    Raises:
        ValueError: a name or version the repository would not accept, a file that is not an ONNX model,
            or a model that does not fit its manifest: its declared shapes
            (`check_model_against_manifest`), then the shapes of a real run (`check_file_by_running`).
        FileExistsError: the version exists already; versions are never overwritten.
        FileNotFoundError: `model` is a path that does not exist.
    """
    import onnx  # deferred: see TYPE_CHECKING above

    _check_id(name, version)
    graph = load_onnx(model) if isinstance(model, Path) else model
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"{_describe(model)} is not a valid ONNX model: {exc}") from None
    check_model_against_manifest(graph, manifest)
    if isinstance(model, Path):
        check_file_by_running(model, manifest)
    else:
        with tempfile.TemporaryDirectory(prefix="visionrpc-check-") as folder:
            path = Path(folder) / "model.onnx"
            onnx.save(model, str(path))
            check_file_by_running(path, manifest)

    model_dir = repository / name
    for _ in range(_MAX_VERSION_ATTEMPTS):
        chosen = version if version is not None else str(max(_versions(model_dir), default=0) + 1)
        version_dir = model_dir / chosen
        if version_dir.exists():
            if version is not None:
                raise FileExistsError(f"{version_dir} exists already; versions are never overwritten")
            continue  # another writer took this number since we listed the versions: pick the next one
        if write_version_dir(version_dir, model, manifest):
            logger.info("added %s/%s at %s", name, chosen, version_dir)
            return version_dir
        if version is not None:  # the caller asked for exactly this version and someone else wrote it
            raise FileExistsError(f"{version_dir} was written concurrently; versions are never overwritten")
    raise FileExistsError(f"lost {_MAX_VERSION_ATTEMPTS} races for a new version of {name!r} in {model_dir}")


def write_version_dir(version_dir: Path, model: onnx.ModelProto | Path, manifest: ModelManifest) -> bool:
    """Writes `manifest.json`, the model (as `manifest.onnx_file`) and their checksums (`integrity.json`)
    into `version_dir`, all or nothing.

    The version is built in a hidden staging folder beside its target (same file system, so the final rename
    is atomic; the leading dot keeps it out of the repository's view, since model names and versions cannot
    start with one) and renamed into place. A crash leaves at most a staging folder, never half a version.

    Returns:
        True when written; False, with nothing written, when `version_dir` exists and is not empty (another
        writer finished first).
    """
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".install-{version_dir.name}-", dir=version_dir.parent))
    try:
        target = staging / manifest.onnx_file
        if isinstance(model, Path):
            shutil.copyfile(model, target)
        else:
            import onnx  # deferred: see TYPE_CHECKING above

            onnx.save(model, str(target))
        manifest.write(staging)
        write_integrity_record(staging)  # in the same rename as the files it covers (integrity.py)
        try:
            staging.rename(version_dir)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful rename


def check_model_against_manifest(model: onnx.ModelProto, manifest: ModelManifest) -> None:
    """Checks the graph's declared input and output shapes against what the manifest makes the server do
    (shapes.py); symbolic dimensions fit anything here, `check_by_running` settles them.

    Raises:
        ValueError: every problem found, each as "expected X, got Y".
    """
    problems = check_declared(model, manifest)
    if problems:
        raise ValueError("; ".join(problems))


def check_file_by_running(path: Path, manifest: ModelManifest) -> None:
    """Loads the ONNX file on ONNX Runtime (CPU) and runs it as the server will (probe.py), after checking
    the input size against the size its metadata says it was exported for.

    Raises:
        ValueError: the model cannot be loaded, does not run at the manifest's input size, or its outputs
            do not fit the manifest.
    """
    check_export_size(read_metadata(path), manifest)
    try:
        engine = OnnxRuntimeEngine.load(path)
    except EngineError as exc:
        raise ValueError(str(exc)) from None
    try:
        check_by_running(engine, manifest)
    finally:
        engine.close()


# ----------------------------------------------------------------------------------------------- helpers


def _check_id(name: str, version: str | None) -> None:
    """Applies the repository's id grammar (ids.py), as a ValueError for callers off the network."""
    try:
        if split_model_id(name, field="name")[1] is not None:
            raise ValueError(f"expected a model name without '/', got {name!r}")
        if version is not None:
            split_model_id(f"{name}/{version}", field="version")
    except InvalidArgumentError as exc:
        raise ValueError(exc.message) from None
    if version is not None and str(int(version)) != version:
        # The repository orders versions by value, so "01" beside "1" would be two equal versions.
        raise ValueError(f"expected a version without leading zeros, got {version!r}")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Loads a self-contained ONNX file (external weights refused: only the .onnx file is copied).

    Raises:
        FileNotFoundError: no such file.  ValueError: not an ONNX model, or weights in external files.
    """
    import onnx  # deferred: see TYPE_CHECKING above
    from onnx import external_data_helper

    if not path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {path}")
    try:
        # The weights are not needed to check shapes, and the file is copied as it is.
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ValueError(f"{path} is not an ONNX model: {exc}") from None
    if any(external_data_helper.uses_external_data(t) for t in model.graph.initializer):
        # Only the .onnx file is copied into the repository; its external data files would be left behind.
        raise ValueError(f"expected a self-contained ONNX file, got {path} with weights in external files")
    return model


def _describe(model: onnx.ModelProto | Path) -> str:
    return str(model) if isinstance(model, Path) else "the model"


def _versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return [int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()]
