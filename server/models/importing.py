"""Adding models to a model repository: from an ONNX file or a Darknet cfg + weights pair, checked first.

A model that does not fit its manifest (wrong input size, a YOLOv8 export declared as YOLOv5, a class list one
short) would otherwise load fine and fail on the first request, or worse, return nonsense. `add_model`
checks the ONNX graph against the manifest before anything is written, then writes the version atomically
(`write_version_dir`), so a server reading the repository at the same time never sees half a model.

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
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper
from visionrpc.engines.importers import darknet

from ..domain import ChannelOrder, Task
from ..errors import InvalidArgumentError
from ..manifest import Decoder, ModelManifest, ResizeMode
from .ids import split_model_id

__all__ = ["add_model", "check_model_against_manifest", "darknet_model", "write_version_dir"]

logger = logging.getLogger(__name__)

# A declared dimension: a fixed size, a symbolic name ("batch"), or None when the graph does not say.
Dim = int | str | None

_CENTERFACE_CHANNELS = (("heatmap", 1), ("scale", 2), ("offset", 2), ("landmarks", 10))
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
            or a model that does not fit its manifest (`check_model_against_manifest`).
        FileExistsError: the version exists already; versions are never overwritten.
        FileNotFoundError: `model` is a path that does not exist.
    """
    _check_id(name, version)
    graph = _load(model) if isinstance(model, Path) else model
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as exc:
        raise ValueError(f"{_describe(model)} is not a valid ONNX model: {exc}") from None
    check_model_against_manifest(graph, manifest)

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
    """Writes `manifest.json` and the model (as `manifest.onnx_file`) into `version_dir`, all or nothing.

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
            onnx.save(model, str(target))
        manifest.write(staging)
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
    """Checks the graph's declared input and output shapes against what the manifest makes the server do.

    The server feeds one float32 NCHW image tensor of the manifest's input size (so fixed H and W must equal
    it; symbolic ones are fine) and reads the outputs with the manifest's decoder: `yolov5` [N, boxes, 5 + C],
    `yolov8` [N, 4 + C, boxes], `classification` [N, C], `centerface` four [N, c, h, w] maps with c = 1, 2, 2,
    10. C is checked against `class_names` when the manifest has any. Dimensions the graph does not declare
    are not checked.

    Raises:
        ValueError: every problem found, each as "expected X, got Y".
    """
    problems = _check_task(manifest) + _check_input(model, manifest) + _check_outputs(model, manifest)
    if problems:
        raise ValueError("; ".join(problems))


# ------------------------------------------------------------------------------------------------ checks


def _check_task(manifest: ModelManifest) -> list[str]:
    expected = Task.CLASSIFICATION if manifest.decoder is Decoder.CLASSIFICATION else Task.DETECTION
    if manifest.task is expected:
        return []
    return [f"expected task {expected.value} for decoder {manifest.decoder.value}, got {manifest.task.value}"]


def _check_input(model: onnx.ModelProto, manifest: ModelManifest) -> list[str]:
    # Exports in the IR 3 style list every weight as a graph input too; only the others are fed.
    weights = {initializer.name for initializer in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    if len(inputs) != 1:
        return [f"expected one image input, got {len(inputs)}: {[value.name for value in inputs]}"]
    value = inputs[0]
    problems = []
    element = value.type.tensor_type.elem_type
    if element != TensorProto.FLOAT:
        problems.append(
            f"expected input {value.name!r} of type float32 (the server feeds float32), "
            f"got {TensorProto.DataType.Name(element).lower()}"
        )
    dims = _dims(value)
    if dims is None:
        return problems
    height, width = manifest.input_height, manifest.input_width
    if len(dims) != 4:
        return [*problems, f"expected input {value.name!r} of rank 4 [N, 3, H, W], got {_show(dims)}"]
    if isinstance(dims[1], int) and dims[1] != 3:
        nhwc = " (channels last? the server feeds NCHW)" if dims[3] == 3 else ""
        problems.append(f"expected input {value.name!r} shaped [N, 3, H, W], got {_show(dims)}{nhwc}")
    if _differs(dims[2], height) or _differs(dims[3], width):
        problems.append(
            f"expected input {value.name!r} shaped [N, 3, {height}, {width}] for the manifest's input size "
            f"{width}x{height} (W x H), got {_show(dims)}"
        )
    return problems


def _check_outputs(model: onnx.ModelProto, manifest: ModelManifest) -> list[str]:
    outputs = {value.name: _dims(value) for value in model.graph.output}
    if manifest.decoder is Decoder.CENTERFACE:
        return _check_centerface(outputs, manifest)
    if not outputs:
        return ["expected at least one output, got none"]
    # As the decoders do: the output named by extra["output"], else the first one.
    name = manifest.extra.get("output")
    if name is None:
        name = next(iter(outputs))
    elif name not in outputs:
        return [f"expected an output named {name!r} (the manifest's extra.output), got {sorted(outputs)}"]
    dims = outputs[name]
    if dims is None:
        return []
    classes = len(manifest.class_names) or None
    if manifest.decoder is Decoder.CLASSIFICATION:
        if len(dims) != 2 or _differs(dims[1], classes):
            return [f"expected output {name!r} shaped [N, {classes or 'C'}], got {_show(dims)}"]
        return []
    v8 = manifest.decoder is Decoder.YOLOV8
    offset = 4 if v8 else 5
    wanted = f"[N, {offset} + {classes or 'C'}, boxes]" if v8 else f"[N, boxes, {offset} + {classes or 'C'}]"
    if len(dims) != 3:
        return [f"expected output {name!r} shaped {wanted}, got {_show(dims)}"]
    attributes = dims[1] if v8 else dims[2]
    if not isinstance(attributes, int):  # symbolic or undeclared: the decoder checks it at run time
        return []
    if (attributes == offset + classes) if classes is not None else (attributes > offset):
        return []
    return [f"expected output {name!r} shaped {wanted}, got {_show(dims)}{_layout_hint(dims, v8, classes)}"]


def _layout_hint(dims: list[Dim], v8: bool, classes: int | None) -> str:
    """Names the likely mistake: the other YOLO layout (the most common mix-up), or a class list's length."""
    if classes is None:
        return ""
    if not v8 and dims[1] == 4 + classes:
        return " (that is the YOLOv8/YOLO11 layout: use decoder yolov8)"
    if v8 and dims[2] == 5 + classes:
        return " (that is the YOLOv5 layout: use decoder yolov5)"
    offset = 4 if v8 else 5
    attributes = dims[1] if v8 else dims[2]
    if isinstance(attributes, int) and attributes > offset:
        return f" (the model has {attributes - offset} classes, the manifest {classes} class names)"
    return ""


def _check_centerface(outputs: Mapping[str, list[Dim] | None], manifest: ModelManifest) -> list[str]:
    roles = [role for role, _ in _CENTERFACE_CHANNELS]
    named = manifest.extra.get("outputs")
    if isinstance(named, Mapping):
        missing = [named.get(role) for role in roles if named.get(role) not in outputs]
        if missing:
            return [f"expected outputs {missing} (the manifest's extra.outputs), got {sorted(outputs)}"]
        names = [str(named[role]) for role in roles]
    else:
        names = list(outputs)[:4]
        if len(names) != 4:
            return [f"expected 4 outputs ({', '.join(roles)}), got {len(outputs)}: {list(outputs)}"]
    problems = []
    for (role, channels), name in zip(_CENTERFACE_CHANNELS, names, strict=True):
        dims = outputs[name]
        if dims is not None and (len(dims) != 4 or _differs(dims[1], channels)):
            wanted = f"[N, {channels}, h, w]"
            problems.append(f"expected {role} output {name!r} shaped {wanted}, got {_show(dims)}")
    return problems


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


def _load(path: Path) -> onnx.ModelProto:
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


def _dims(value: onnx.ValueInfoProto) -> list[Dim] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _differs(dim: Dim, expected: int | None) -> bool:
    """A fixed dimension that is not the expected size; symbolic or unknown ones fit anything."""
    return expected is not None and isinstance(dim, int) and dim != expected


def _show(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
