"""NMS time per call, the NumPy reference against OpenCV's path, on the same dense candidates.

    python -m bench.nms [--repeats 300]

Prints the median (and interquartile range) of many calls for 100 and 3,000 candidates, class-agnostic and
class-aware (80 classes), with max_detections 300 as the decoders pass it, plus OpenCV's own
NMSBoxesBatched for comparison; then the whole post-processing of one image (`decode_batch`, what the
responses' `postprocess` timing measures) on yolov3-tiny's real outputs for the benchmark's photos, with
the decoders' NMS bound to the NumPy reference (the previous implementation) and to `nms`. The variants
alternate call by call, so a noisy neighbour on a shared machine slows both alike. The numbers in
docs/performance.md come from this script.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from visionrpc.server.domain import ChannelOrder, InferOptions
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.builtins import install_builtin
from visionrpc.server.processing import DecodeOptions, Transform, decode_batch, preprocess, resolve_options
from visionrpc.server.processing.nms import batched_nms, nms, numpy_nms, opencv_nms, shift_by_class

from .assets import IMAGES, load_image, model_cache_dir

__all__ = ["main"]

MAX_DETECTIONS = 300


def candidates(
    count: int, seed: int = 0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Boxes clustered around a few centres (overlaps at every IoU level), 80 classes, float32 values."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 416, size=(8, 2))[rng.integers(0, 8, size=count)]
    centres += rng.normal(0, 15, size=(count, 2))
    sizes = rng.uniform(8, 160, size=(count, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, size=count).astype(np.float32)
    return boxes.astype(np.float64), scores.astype(np.float64), rng.integers(0, 80, size=count)


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    low, median, high = statistics.quantiles(samples, n=4)
    return low * 1e3, median * 1e3, high * 1e3


def _alternate(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - started)
    return samples


def _opencv_batched_once(
    boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], classes: npt.NDArray[np.int64]
) -> object:
    """OpenCV's own class-aware NMS, one run, as callers usually use it (xywh, float32 scores)."""
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return cv2.dnn.NMSBoxesBatched(
        xywh,  # type: ignore[arg-type]  # the stubs say Sequence; arrays are what the binding takes
        scores.astype(np.float32),  # type: ignore[arg-type]
        classes.astype(np.int32),  # type: ignore[arg-type]
        0.0,
        0.45,
    )


def _print(label: str, samples: dict[str, list[float]]) -> None:
    print(label)
    for name, times in samples.items():
        low, median, high = _quartiles(times)
        print(f"  {name:45s} {median:8.3f} [{low:.3f}-{high:.3f}]")
    ratio = statistics.median(samples["numpy"]) / statistics.median(samples["opencv"])
    print(f"  {'numpy / opencv':45s} {ratio:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description="NMS time per call: the NumPy reference against OpenCV.")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    print(f"OpenCV {cv2.__version__}, NumPy {np.__version__}, {args.repeats} calls each, median [IQR] ms")
    for count in (100, 3000):
        boxes, scores, classes = candidates(count)
        for label, these in (("agnostic", boxes), ("class-aware", shift_by_class(boxes, classes))):
            kept = numpy_nms(these, scores, 0.45, max_output=MAX_DETECTIONS)
            decided = opencv_nms(these, scores, 0.45, max_output=MAX_DETECTIONS)
            assert decided is not None and decided.tolist() == kept.tolist(), "OpenCV's answer differs"
            functions: dict[str, Callable[[], object]] = {
                "numpy": functools.partial(numpy_nms, these, scores, 0.45, max_output=MAX_DETECTIONS),
                "opencv": functools.partial(opencv_nms, these, scores, 0.45, max_output=MAX_DETECTIONS),
            }
            if label == "class-aware":
                once = functools.partial(_opencv_batched_once, boxes, scores, classes)
                functions["cv2.dnn.NMSBoxesBatched (once, no bracket)"] = once
            _print(f"{count} candidates, {label}, {kept.size} kept:", _alternate(functions, args.repeats))
    postprocess(args.repeats)


def _numpy_batched(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    iou_threshold: float,
    *,
    max_output: int | None = None,
) -> npt.NDArray[np.int64]:
    """The previous batched_nms: the same class shift, then the NumPy greedy loop."""
    return numpy_nms(shift_by_class(boxes, class_ids), scores, iou_threshold, max_output=max_output)


def _decode_with(
    variant: tuple[Callable[..., npt.NDArray[np.int64]], Callable[..., npt.NDArray[np.int64]]],
    manifest: ModelManifest,
    output: npt.NDArray[np.float32],
    transform: Transform,
    options: DecodeOptions,
) -> int:
    """decode_batch with the decoders' NMS functions bound to `variant` (a measurement, not a test)."""
    decoders = sys.modules["visionrpc.server.processing.decoders"]
    decoders.nms, decoders.batched_nms = variant  # type: ignore[attr-defined]
    try:
        (decoded,) = decode_batch(manifest, {"output": output}, [transform], options)
    finally:
        decoders.nms, decoders.batched_nms = nms, batched_nms  # type: ignore[attr-defined]
    return len(decoded.detections)


def postprocess(repeats: int) -> None:
    """`decode_batch` per image on yolov3-tiny's real outputs, the decoders' NMS bound to each variant."""
    downloads = model_cache_dir()
    directory = install_builtin("yolov3-tiny-coco", downloads / "builtin-models", downloads)
    manifest = ModelManifest.read(directory)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    variants = {"numpy": (numpy_nms, _numpy_batched), "opencv": (nms, batched_nms)}
    print(f"decode_batch per image (yolov3-tiny, 2535 rows), {repeats} calls each, median [IQR] ms")
    for name in IMAGES:
        tensor, transform = preprocess(load_image(name), ChannelOrder.BGR, manifest)
        output = np.asarray(session.run(None, {session.get_inputs()[0].name: tensor[np.newaxis]})[0])
        for confidence in (manifest.default_confidence, 0.001):
            options = resolve_options(InferOptions(confidence_threshold=confidence), manifest)
            runs: dict[str, Callable[[], object]] = {
                label: functools.partial(_decode_with, variant, manifest, output, transform, options)
                for label, variant in variants.items()
            }
            counts = {label: run() for label, run in runs.items()}
            assert len(set(counts.values())) == 1, f"different detections: {counts}"
            _print(
                f"{name}, confidence {confidence}, {counts['opencv']} detections:", _alternate(runs, repeats)
            )


if __name__ == "__main__":
    main()
