"""The preprocessing real exports need, against reference pipelines written here from their definitions.

Each reference is the plain, slow version of what a model's own evaluation code does (torchvision's
Resize + CenterCrop, a letterbox with a given grey and placement, greedy NMS within or across classes),
run with ONNX Runtime directly on the real yolov3-tiny weights. visionrpc must give the same answer:

- a centre-crop classifier served over gRPC returns the reference's top-5 (same classes, probabilities
  within 1e-5); served letterboxed, it does not (why centre-crop exists);
- class-agnostic NMS, the pad value and the pad position each change the detections, and each setting
  gives exactly the reference's detections for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from conftest import RunningServer, start_server
from media import media
from model_exports import builtin_tiny, derive_classifier, tiny_yolov5
from visionrpc.engines import OnnxRuntimeEngine
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import ChannelOrder, InferOptions, Task
from visionrpc.server.manifest import Decoder, ModelManifest, PadPosition, ResizeMode, ResolvedModel
from visionrpc.server.predictor import InputImage, Predictor
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

PHOTOS = [
    "coffee.png",
    "motorcycle_left.png",
    "astronaut.png",
    "chelsea.png",
    "grace_hopper.jpg",
    "rocket.jpg",
]
Image = npt.NDArray[np.uint8]


def photo(name: str) -> Image:
    pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert pixels is not None
    return pixels


def to_tensor(rgb: Image) -> npt.NDArray[np.float32]:
    return (rgb.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[np.newaxis].copy()


# ----------------------------------------------------------------------------------- centre-crop classifier


def reference_centre_crop(bgr: Image, size: int, fraction: float) -> npt.NDArray[np.float32]:
    """torchvision: Resize(floor(size / fraction)) on the short side (the long side truncated), then
    CenterCrop(size) at round((resized - size) / 2); RGB scaled to [0, 1]."""
    height, width = bgr.shape[:2]
    short = math.floor(size / fraction)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    window = resized[top : top + size, left : left + size]
    return to_tensor(cv2.cvtColor(window, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def classifier_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, onnx.ModelProto]]:
    """A server with the derived yolov3-tiny classifier twice: centre-cropped and letterboxed."""
    classifier = derive_classifier(tiny_yolov5())
    base = ModelManifest.read(builtin_tiny())
    repository = tmp_path_factory.mktemp("classifiers")
    for name, resize in [("cropped", ResizeMode.CENTRE_CROP), ("letterboxed", ResizeMode.LETTERBOX)]:
        folder = repository / name / "1"
        folder.mkdir(parents=True)
        onnx.save(classifier, str(folder / "model.onnx"))
        dataclasses.replace(
            base,
            task=Task.CLASSIFICATION,
            decoder=Decoder.CLASSIFICATION,
            resize=resize,
            crop_fraction=0.875,
            outputs_are_probabilities=True,
            extra={},
        ).write(folder)
    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield running, classifier
    running.server.stop(grace_s=0.5)


def served_top5(address: str, model: str, bgr: Image) -> list[tuple[str, float]]:
    raw = types_pb2.RawImage(
        data=bgr.tobytes(), width=bgr.shape[1], height=bgr.shape[0], channel_order=types_pb2.CHANNEL_ORDER_BGR
    )
    with grpc.insecure_channel(address) as channel:
        response = inference_pb2_grpc.InferenceServiceStub(channel).Infer(
            inference_pb2.InferRequest(
                model_id=model, images=[types_pb2.Image(raw=raw)], options=types_pb2.InferOptions(top_k=5)
            ),
            timeout=120,
        )
    return [(c.class_name, c.confidence) for c in response.predictions[0].classifications]


@pytest.mark.parametrize("name", PHOTOS)
def test_centre_crop_classifier_top5_equals_the_reference(
    classifier_server: tuple[RunningServer, onnx.ModelProto], name: str
) -> None:
    running, classifier = classifier_server
    session = ort.InferenceSession(classifier.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ModelManifest.read(builtin_tiny()).class_names
    bgr = photo(name)
    (probabilities,) = session.run(None, {"images": reference_centre_crop(bgr, 416, 0.875)})
    ranked = np.argsort(-probabilities[0], kind="stable")[:5]
    reference = [(names[i], float(probabilities[0][i])) for i in ranked]

    served = served_top5(running.address, "cropped", bgr)
    assert [n for n, _ in served] == [n for n, _ in reference]
    assert [p for _, p in served] == pytest.approx([p for _, p in reference], abs=1e-5)


def test_letterboxing_the_same_classifier_disagrees_with_its_reference(
    classifier_server: tuple[RunningServer, onnx.ModelProto],
) -> None:
    """Why centre-crop exists: served the other way, the probabilities move on every photo."""
    running, _ = classifier_server
    moved = 0
    for name in PHOTOS:
        bgr = photo(name)
        cropped = dict(served_top5(running.address, "cropped", bgr))
        letterboxed = dict(served_top5(running.address, "letterboxed", bgr))
        moved += any(abs(cropped.get(n, 0.0) - p) > 1e-3 for n, p in letterboxed.items())
    assert moved == len(PHOTOS)


# ------------------------------------------------------------------------ letterbox and NMS on detections


def reference_letterbox(
    bgr: Image, size: int, pad: int, top_left: bool
) -> tuple[npt.NDArray[np.float32], tuple[float, float], int, int]:
    """YOLOv5's letterbox: scale to fit, round, pad with `pad` (centred, odd pixel right/bottom, or all
    right/bottom); returns the tensor, the scale of each axis (the resize maps pixel edges by
    new size / old size) and the image's offset."""
    height, width = bgr.shape[:2]
    ratio = min(size / width, size / height)
    new_w, new_h = round(width * ratio), round(height * ratio)
    left, top = (0, 0) if top_left else ((size - new_w) // 2, (size - new_h) // 2)
    canvas = np.full((size, size, 3), pad, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = cv2.resize(
        bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR
    )
    scales = (new_w / width, new_h / height)
    return to_tensor(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)), scales, left, top


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def reference_detections(
    output: npt.NDArray[np.float32],
    scale: tuple[float, float],
    left: int,
    top: int,
    size: tuple[int, int],
    agnostic: bool,
) -> list[tuple[int, float, list[float]]]:
    """YOLOv5 rows -> (class, score, box in the photo): score = objectness x best class > CONFIDENCE, boxes
    mapped back and clipped (empty ones dropped), greedy NMS at IoU 0.45 in input pixels, best first."""
    width, height = size
    candidates = []
    for row in output:
        scores = row[5:] * row[4]
        best = int(np.argmax(scores))
        if scores[best] <= CONFIDENCE:
            continue
        cx, cy, w, h = (float(v) for v in row[:4])
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        mapped = [
            min(max((box[0] - left) / scale[0], 0.0), width),
            min(max((box[1] - top) / scale[1], 0.0), height),
            min(max((box[2] - left) / scale[0], 0.0), width),
            min(max((box[3] - top) / scale[1], 0.0), height),
        ]
        if mapped[2] > mapped[0] and mapped[3] > mapped[1]:
            candidates.append((best, float(scores[best]), box, mapped))
    candidates.sort(key=lambda c: -c[1])
    kept: list[tuple[int, float, list[float], list[float]]] = []
    for candidate in candidates:
        rivals = [k for k in kept if agnostic or k[0] == candidate[0]]
        if all(iou(candidate[2], k[2]) <= 0.45 for k in rivals):
            kept.append(candidate)
    return [(c, s, mapped) for c, s, _, mapped in kept]


# Low enough that boxes of different classes overlap (on coffee.png and astronaut.png), which is where
# class-agnostic NMS differs.
CONFIDENCE = 0.05
SETTINGS = [
    # (id, manifest changes, reference: pad, top-left, agnostic)
    ("centre-grey-per-class", {}, (114, False, False)),
    ("agnostic-nms", {"agnostic_nms": True}, (114, False, True)),
    ("black-padding", {"pad_value": 0}, (0, False, False)),
    ("top-left", {"pad_position": PadPosition.TOP_LEFT}, (114, True, False)),
]


@pytest.fixture(scope="module")
def detectors() -> Iterator[dict[str, Predictor]]:
    directory = builtin_tiny()
    base = dataclasses.replace(ModelManifest.read(directory), default_confidence=CONFIDENCE)
    predictors = {}
    for setting, changes, _ in SETTINGS:
        manifest = dataclasses.replace(base, **changes)
        model = ResolvedModel(setting, "1", directory, manifest, builtin=False)
        predictors[setting] = Predictor(
            model, OnnxRuntimeEngine.load(directory / "model.onnx", intra_op_threads=1)
        )
    yield predictors
    for predictor in predictors.values():
        predictor.close()


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(builtin_tiny() / "model.onnx"), providers=["CPUExecutionProvider"])


def served(predictor: Predictor, bgr: Image) -> list[tuple[int, float, list[float]]]:
    options = predictor.resolve_options(InferOptions())
    (prediction,) = predictor.infer([InputImage(bgr, ChannelOrder.BGR)], options).predictions
    return [(d.class_id, d.confidence, list(d.box.as_tuple())) for d in prediction.detections]


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize(
    ("setting", "reference"), [(s[0], s[2]) for s in SETTINGS], ids=[s[0] for s in SETTINGS]
)
def test_detections_equal_the_reference_for_each_setting(
    detectors: dict[str, Predictor],
    session: ort.InferenceSession,
    setting: str,
    reference: tuple[int, bool, bool],
    name: str,
) -> None:
    pad, top_left, agnostic = reference
    bgr = photo(name)
    tensor, scale, left, top = reference_letterbox(bgr, 416, pad, top_left)
    (output,) = session.run(None, {"images": tensor})
    expected = reference_detections(output[0], scale, left, top, (bgr.shape[1], bgr.shape[0]), agnostic)
    got = served(detectors[setting], bgr)
    assert [c for c, _, _ in got] == [c for c, _, _ in expected]
    for (_, score, box), (_, want_score, want_box) in zip(got, expected, strict=True):
        assert score == pytest.approx(want_score, abs=1e-5)
        assert box == pytest.approx(want_box, abs=1e-3)


@pytest.mark.parametrize("setting", [s[0] for s in SETTINGS[1:]])
def test_each_setting_changes_the_detections(detectors: dict[str, Predictor], setting: str) -> None:
    """Against the default (grey, centred, per-class NMS): somewhere among the photos the result moves."""
    changed = [
        name
        for name in PHOTOS
        if served(detectors[setting], photo(name)) != served(detectors[SETTINGS[0][0]], photo(name))
    ]
    assert changed, f"{setting} changed nothing on {PHOTOS}"
