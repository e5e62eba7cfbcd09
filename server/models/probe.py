"""Validate a model by running it: one dummy batch at the manifest's input size, shapes checked as produced.

A graph exported with dynamic axes declares its output as [batch, "anchors", ...] or worse, so reading the
graph cannot tell a YOLOv8 export from a YOLOv5 one, nor count its classes; the first request would then
decode nonsense ("class 2031 1.00"). Running it can: ONNX Runtime returns concrete shapes, and they go
through the same rules as declared ones (shapes.check_outputs). A batch of 2 is run too when the batch is
dynamic, because some exports declare a dynamic batch and pin it to 1 inside the graph.

Both `visionrpc models add` (before anything is written) and the model manager (before a model serves)
call `check_by_running`; at load a failure makes the model FAILED with the message as the reason.

The size the model was exported for is checked too when the file says it (Ultralytics metadata `imgsz`,
metadata.py): a dynamic-size model runs at any size, just slower and with other results, so nothing else
would notice `--input-size 640` on a 320 model. `allow_other_input_size` in the manifest accepts it.
"""

from __future__ import annotations

import logging

import numpy as np
from visionrpc.engines import Engine, EngineError

from ..manifest import Decoder, ModelManifest
from .metadata import ExportMetadata
from .shapes import check_outputs, show_dims

__all__ = ["check_by_running", "check_export_size"]

logger = logging.getLogger(__name__)

# ONNX Runtime's messages can run to kilobytes (node names, full shapes); the reason keeps the start.
_LONGEST_ENGINE_MESSAGE = 300


def check_by_running(engine: Engine, manifest: ModelManifest) -> None:
    """Runs zero images through `engine` (a batch of 1, and of 2 where the batch is dynamic and the manifest
    allows batches) and checks the output shapes against the manifest's decoder and class names.

    Raises:
        ValueError: the model does not run at the manifest's input size, or its outputs do not fit the
            manifest; the message lists every problem, with the likely fix where there is one.
    """
    if not engine.inputs:
        raise ValueError("expected one image input, got none")
    spec = engine.inputs[0]
    dynamic_batch = bool(spec.shape) and spec.shape[0] is None
    batches = [1, 2] if dynamic_batch and (manifest.max_batch_size or 2) >= 2 else [1]
    size = f"{manifest.input_width}x{manifest.input_height}"
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = np.dtype(np.float32)
    for batch in batches:
        images = np.zeros((batch, 3, manifest.input_height, manifest.input_width), dtype=dtype)
        try:
            outputs = engine.infer({spec.name: images})
        except EngineError as exc:
            advice = (
                "; its batch is declared dynamic but the graph only runs batches of 1: set max_batch_size 1"
                if batch > 1
                else ""
            )
            raise ValueError(
                f"the model does not run on a batch of {batch} at the manifest's input size {size} (W x H): "
                f"{_short(str(exc))}{advice}"
            ) from None
        shapes = {name: list(array.shape) for name, array in outputs.items()}
        problems = check_outputs(shapes, manifest) + _check_batch(shapes, manifest, batch)
        if problems:
            ran = f"running a batch of {batch} at {size}"
            raise ValueError("; ".join(problems) + f" ({ran})")
        logger.debug("probe at %s, batch %d: %s", size, batch, {n: show_dims(s) for n, s in shapes.items()})


def check_export_size(metadata: ExportMetadata | None, manifest: ModelManifest) -> None:
    """Refuses an input size other than the one the model says it was exported for, unless allowed.

    Raises:
        ValueError: the sizes differ and `manifest.allow_other_input_size` is off.
    """
    if metadata is None or metadata.input_size is None or manifest.allow_other_input_size:
        return
    width, height = metadata.input_size
    if (width, height) == (manifest.input_width, manifest.input_height):
        return
    raise ValueError(
        f"expected input size {width}x{height} (W x H), the size the model was exported for "
        f"({metadata.convention} metadata imgsz), got {manifest.input_width}x{manifest.input_height}: at "
        f"another size a model runs slower or misses objects; use input size {width}x{height}, or allow "
        "another size explicitly (--allow-other-input-size, manifest allow_other_input_size)"
    )


def _check_batch(shapes: dict[str, list[int]], manifest: ModelManifest, batch: int) -> list[str]:
    """The outputs the decoder reads must have one row per image."""
    if manifest.decoder is Decoder.CENTERFACE:
        read = list(shapes)[:4]
    else:
        read = [manifest.extra.get("output") or next(iter(shapes))]
    wrong = [name for name in read if name in shapes and (not shapes[name] or shapes[name][0] != batch)]
    return [
        f"expected output {name!r} to start with the batch size {batch}, got {show_dims(shapes[name])}"
        for name in wrong
    ]


def _short(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else message
    if len(first) > _LONGEST_ENGINE_MESSAGE:
        return first[:_LONGEST_ENGINE_MESSAGE] + "..."
    return first
