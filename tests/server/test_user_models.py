"""User models in the repository, served for real: a YOLOv8/YOLO11-layout export and an image classifier.

No hub is reachable, so both are derived from the converted yolov3-tiny graph:
- the YOLOv8 layout ([N, 4 + C, boxes], objectness folded into class scores) must give the same detections
  as the YOLOv5-layout original on the same photos: two decoders checked against each other;
- the classifier ([N, C] probabilities: for each class the best box score) must rank "cup" first on coffee.png
  and "motorbike" first on motorcycle_left.png.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import onnx
import pytest
from conftest import RunningServer, cache_root, start_server
from media import media
from model_exports import derive_classifier
from visionrpc.engines.importers.onnx_edit import derive_yolov8_layout
from visionrpc.server.config import ServerConfig
from visionrpc.server.domain import Task
from visionrpc.server.manifest import Decoder, ModelManifest
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc, types_pb2

PHOTOS = ["coffee.png", "motorcycle_left.png", "astronaut.png", "chelsea.png", "grace_hopper.jpg"]


@pytest.fixture(scope="module")
def user_models_server(
    base_config: ServerConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    builtin = cache_root() / "downloads" / "builtin-models" / "yolov3-tiny-coco" / "1"
    repository = tmp_path_factory.mktemp("user-models")
    original_manifest = ModelManifest.read(builtin)
    original = onnx.load(str(builtin / original_manifest.onnx_file))

    v8_dir = repository / "tiny-v8" / "1"
    v8_dir.mkdir(parents=True)
    onnx.save(derive_yolov8_layout(original), str(v8_dir / "model.onnx"))
    dataclasses.replace(
        original_manifest, decoder=Decoder.YOLOV8, onnx_file="model.onnx", description="", extra={}
    ).write(v8_dir)

    cls_dir = repository / "tiny-classifier" / "1"
    cls_dir.mkdir(parents=True)
    onnx.save(derive_classifier(original), str(cls_dir / "model.onnx"))
    dataclasses.replace(
        original_manifest,
        task=Task.CLASSIFICATION,
        decoder=Decoder.CLASSIFICATION,
        onnx_file="model.onnx",
        outputs_are_probabilities=True,
        default_top_k=3,
        extra={},
    ).write(cls_dir)

    running = start_server(
        dataclasses.replace(base_config, model_repository=repository, preload_default_model=False)
    )
    yield running
    running.server.stop(grace_s=0.5)


def infer(address: str, model: str, photo: str, **options: object) -> types_pb2.ImagePrediction:
    with grpc.insecure_channel(address) as channel:
        response = inference_pb2_grpc.InferenceServiceStub(channel).Infer(
            inference_pb2.InferRequest(
                model_id=model,
                images=[types_pb2.Image(encoded=media(photo).read_bytes())],
                options=types_pb2.InferOptions(**options),  # type: ignore[arg-type]
            ),
            timeout=120,
        )
    prediction: types_pb2.ImagePrediction = response.predictions[0]
    return prediction


def summary(prediction: types_pb2.ImagePrediction) -> list[tuple[str, float, tuple[float, ...]]]:
    return sorted(
        (d.class_name, d.confidence, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
        for d in prediction.detections
    )


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("confidence", [0.1, 0.25, 0.5])
def test_yolov8_layout_matches_yolov5_layout(
    user_models_server: RunningServer, photo: str, confidence: float
) -> None:
    v5 = summary(
        infer(user_models_server.address, "yolov3-tiny-coco", photo, confidence_threshold=confidence)
    )
    v8 = summary(infer(user_models_server.address, "tiny-v8", photo, confidence_threshold=confidence))
    assert [d[0] for d in v8] == [d[0] for d in v5]
    for (_, conf5, box5), (_, conf8, box8) in zip(v5, v8, strict=True):
        assert conf8 == pytest.approx(conf5, abs=1e-5)
        assert box8 == pytest.approx(box5, abs=1e-3)


@pytest.mark.parametrize(
    ("photo", "top_class"), [("coffee.png", "cup"), ("motorcycle_left.png", "motorbike")]
)
def test_classifier_ranks_the_photo_subject_first(
    user_models_server: RunningServer, photo: str, top_class: str
) -> None:
    prediction = infer(user_models_server.address, "tiny-classifier", photo)
    ranked = [(c.class_name, c.confidence) for c in prediction.classifications]
    assert len(ranked) == 3  # the manifest's default top_k
    assert ranked[0][0] == top_class and ranked[0][1] >= 0.5
    assert [c for _, c in ranked] == sorted((c for _, c in ranked), reverse=True)
    assert not prediction.detections


def test_classifier_top_k_and_class_filter(user_models_server: RunningServer) -> None:
    prediction = infer(
        user_models_server.address, "tiny-classifier", "coffee.png", top_k=10, class_names=["cup", "bowl"]
    )
    assert {c.class_name for c in prediction.classifications} == {"cup", "bowl"}
    assert (
        len(infer(user_models_server.address, "tiny-classifier", "coffee.png", top_k=7).classifications) == 7
    )


def test_user_models_are_listed_with_their_decoders(user_models_server: RunningServer) -> None:
    with grpc.insecure_channel(user_models_server.address) as channel:
        models = (
            models_pb2_grpc.ModelServiceStub(channel)
            .ListModels(models_pb2.ListModelsRequest(), timeout=30)
            .models
        )
    by_name = {m.name: m for m in models}
    assert (
        by_name["tiny-v8"].decoder == "yolov8" and by_name["tiny-v8"].task == models_pb2.MODEL_TASK_DETECTION
    )
    assert by_name["tiny-classifier"].task == models_pb2.MODEL_TASK_CLASSIFICATION
    assert {"yolov3-tiny-coco", "centerface"} <= set(by_name)


def test_classifier_model_file_shape(tmp_path: Path) -> None:
    builtin = cache_root() / "downloads" / "builtin-models" / "yolov3-tiny-coco" / "1"
    derived = derive_classifier(onnx.load(str(builtin / "model.onnx")))
    dims = derived.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 80]
