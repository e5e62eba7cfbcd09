"""Preprocessing: letterbox and stretch geometry, coordinate round trips, channel orders, normalising."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from media import media
from visionrpc.server.domain import ChannelOrder, ImageSize, Task
from visionrpc.server.manifest import Decoder, Interpolation, ModelManifest, PadPosition, ResizeMode
from visionrpc.server.processing import Transform, preprocess, stack_batch

# With these the tensor holds plain pixel values, which makes geometry easy to read off.
RAW: dict[str, Any] = {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def make_manifest(width: int = 64, height: int = 64, **overrides: Any) -> ModelManifest:
    values: dict[str, Any] = {
        "task": Task.DETECTION,
        "decoder": Decoder.YOLOV5,
        "input_width": width,
        "input_height": height,
        "class_names": ("thing",),
    }
    values.update(overrides)
    return ModelManifest(**values)


def content_box(plane: npt.NDArray[np.float32], threshold: float) -> tuple[int, int, int, int]:
    """Edge-coordinate bounding box (x_min, y_min, x_max, y_max) of the pixels above `threshold`."""
    ys, xs = np.nonzero(plane > threshold)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    ("original", "model_input", "resized", "pad"),
    [
        pytest.param((1280, 720), (640, 640), (640, 360), (0, 140), id="landscape"),
        pytest.param((720, 1280), (640, 640), (360, 640), (140, 0), id="portrait"),
        pytest.param((500, 500), (640, 640), (640, 640), (0, 0), id="square-upscale"),
        pytest.param((100, 51), (64, 64), (64, 33), (0, 15), id="odd-padding-goes-bottom"),
        pytest.param((640, 480), (320, 256), (320, 240), (0, 8), id="non-square-input"),
        pytest.param((1000, 1), (64, 64), (64, 1), (0, 31), id="one-pixel-sliver"),
    ],
)
def test_letterbox_geometry(
    original: tuple[int, int], model_input: tuple[int, int], resized: tuple[int, int], pad: tuple[int, int]
) -> None:
    width, height = original
    manifest = make_manifest(*model_input, pad_value=114, **RAW)
    image = np.zeros((height, width, 3), dtype=np.uint8)

    tensor, transform = preprocess(image, ChannelOrder.RGB, manifest)

    assert tensor.shape == (3, model_input[1], model_input[0])
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    assert transform == Transform(
        scale_x=resized[0] / width,
        scale_y=resized[1] / height,
        pad_x=float(pad[0]),
        pad_y=float(pad[1]),
        original=ImageSize(width, height),
    )
    content = np.zeros(tensor.shape[1:], dtype=bool)
    content[pad[1] : pad[1] + resized[1], pad[0] : pad[0] + resized[0]] = True
    for channel in tensor:
        assert np.all(channel[content] == 0.0)
        assert np.all(channel[~content] == 114.0)


@pytest.mark.parametrize(
    ("size", "model_input", "drawn"),
    [
        pytest.param((1280, 720), (640, 640), (100, 200, 600, 500), id="landscape"),
        pytest.param((720, 1280), (640, 640), (40, 900, 700, 1270), id="portrait"),
        pytest.param((300, 300), (416, 416), (10, 20, 150, 290), id="square-upscale"),
        pytest.param((333, 517), (320, 192), (0, 0, 333, 100), id="touching-the-corner"),
    ],
)
def test_box_round_trip_through_the_tensor(
    size: tuple[int, int], model_input: tuple[int, int], drawn: tuple[int, int, int, int]
) -> None:
    """A rectangle drawn in the original, found in the tensor and mapped back, lands where it was drawn."""
    width, height = size
    image = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = drawn
    image[y0:y1, x0:x1] = 255
    tensor, transform = preprocess(image, ChannelOrder.BGR, make_manifest(*model_input, pad_value=0, **RAW))

    found = np.array([content_box(tensor[0], 127.0)], dtype=np.float32)
    back = transform.boxes_to_original(found)[0]

    # Finding the edge in the tensor is exact to one input pixel, which is 1/scale original pixels.
    tolerance = 1.0 / min(transform.scale_x, transform.scale_y) + 0.5
    np.testing.assert_allclose(back, drawn, atol=tolerance)
    exact = transform.boxes_to_original(transform.boxes_to_input(np.array([drawn], dtype=np.float32)))
    np.testing.assert_allclose(exact[0], drawn, atol=1e-3)


def test_mapping_clips_to_the_original_image() -> None:
    transform = Transform(scale_x=0.5, scale_y=0.5, pad_x=0.0, pad_y=140.0, original=ImageSize(1280, 720))
    boxes = np.array([[-10, 100, 700, 600], [0, 0, 640, 140]], dtype=np.float32)  # second one: all padding

    mapped = transform.boxes_to_original(boxes)
    points = transform.points_to_original(np.array([[[320, 320], [700, 0]]], dtype=np.float32))

    np.testing.assert_allclose(mapped, [[0, 0, 1280, 720], [0, 0, 1280, 0]])
    np.testing.assert_allclose(points, [[[640, 360], [1280, 0]]])
    assert points.shape == (1, 2, 2)


def test_stretch_ignores_aspect_ratio() -> None:
    manifest = make_manifest(64, 64, resize=ResizeMode.STRETCH, pad_value=114, **RAW)
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[50:100, 100:200] = 200  # the bottom-right quarter

    tensor, transform = preprocess(image, ChannelOrder.RGB, manifest)

    assert transform == Transform(
        scale_x=0.32, scale_y=0.64, pad_x=0.0, pad_y=0.0, original=ImageSize(200, 100)
    )
    assert not np.any(tensor == 114.0)
    assert content_box(tensor[1], 100.0) == (32, 32, 64, 64)


RED_RGB, RED_BGR = (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize(
    ("image_order", "pixel", "model_order", "expected"),
    [
        pytest.param(ChannelOrder.RGB, RED_RGB, ChannelOrder.RGB, RED_RGB, id="rgb->rgb"),
        pytest.param(ChannelOrder.RGB, RED_RGB, ChannelOrder.BGR, RED_BGR, id="rgb->bgr"),
        pytest.param(ChannelOrder.BGR, RED_BGR, ChannelOrder.RGB, RED_RGB, id="bgr->rgb"),
        pytest.param(ChannelOrder.BGR, RED_BGR, ChannelOrder.BGR, RED_BGR, id="bgr->bgr"),
        pytest.param(ChannelOrder.RGBA, (255, 0, 0, 9), ChannelOrder.RGB, RED_RGB, id="rgba->rgb"),
        pytest.param(ChannelOrder.RGBA, (255, 0, 0, 9), ChannelOrder.BGR, RED_BGR, id="rgba->bgr"),
        pytest.param(ChannelOrder.BGRA, (0, 0, 255, 9), ChannelOrder.RGB, RED_RGB, id="bgra->rgb"),
        pytest.param(ChannelOrder.BGRA, (0, 0, 255, 9), ChannelOrder.BGR, RED_BGR, id="bgra->bgr"),
        pytest.param(ChannelOrder.GRAY, (77,), ChannelOrder.RGB, (77, 77, 77), id="gray->rgb"),
        pytest.param(ChannelOrder.GRAY, (77,), ChannelOrder.BGR, (77, 77, 77), id="gray->bgr"),
    ],
)
def test_a_pure_colour_lands_in_the_right_channel(
    image_order: ChannelOrder,
    pixel: tuple[int, ...],
    model_order: ChannelOrder,
    expected: tuple[int, int, int],
) -> None:
    image = np.broadcast_to(np.array(pixel, dtype=np.uint8), (30, 40, len(pixel))).copy()
    tensor, _ = preprocess(image, image_order, make_manifest(32, 32, channel_order=model_order, **RAW))
    np.testing.assert_array_equal(tensor[:, 16, 16], expected)


@pytest.mark.parametrize(
    ("image_order", "model_order", "conversion"),
    [
        pytest.param(ChannelOrder.BGR, ChannelOrder.RGB, cv2.COLOR_BGR2RGB, id="bgr->rgb"),
        pytest.param(ChannelOrder.RGB, ChannelOrder.BGR, cv2.COLOR_RGB2BGR, id="rgb->bgr"),
        pytest.param(ChannelOrder.RGBA, ChannelOrder.RGB, cv2.COLOR_RGBA2RGB, id="rgba->rgb"),
        pytest.param(ChannelOrder.RGBA, ChannelOrder.BGR, cv2.COLOR_RGBA2BGR, id="rgba->bgr"),
        pytest.param(ChannelOrder.BGRA, ChannelOrder.RGB, cv2.COLOR_BGRA2RGB, id="bgra->rgb"),
        pytest.param(ChannelOrder.BGRA, ChannelOrder.BGR, cv2.COLOR_BGRA2BGR, id="bgra->bgr"),
        pytest.param(ChannelOrder.GRAY, ChannelOrder.RGB, cv2.COLOR_GRAY2RGB, id="gray->rgb"),
        pytest.param(ChannelOrder.GRAY, ChannelOrder.BGR, cv2.COLOR_GRAY2BGR, id="gray->bgr"),
    ],
)
def test_conversion_matches_cvtcolor_then_resize(
    image_order: ChannelOrder, model_order: ChannelOrder, conversion: int
) -> None:
    """Converting by plane selection after the resize equals cv2.cvtColor before it, on random pixels."""
    rng = np.random.default_rng(7)
    shape = (123, 77) if image_order is ChannelOrder.GRAY else (123, 77, image_order.channels)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    manifest = make_manifest(64, 48, channel_order=model_order, pad_value=3)

    tensor, _ = preprocess(image, image_order, manifest)
    converted = np.asarray(cv2.cvtColor(image, conversion), dtype=np.uint8)
    reference, _ = preprocess(converted, model_order, manifest)

    np.testing.assert_allclose(tensor, reference, atol=1e-6)


def test_normalisation_per_channel() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    manifest = make_manifest(8, 16, mean=mean, std=std, scale=1 / 255, pad_value=114)
    image = np.broadcast_to(np.array([255, 128, 0], dtype=np.uint8), (4, 4, 3)).copy()

    tensor, _ = preprocess(image, ChannelOrder.RGB, manifest)

    pixel = np.array([255, 128, 0]) / 255
    expected_content = (pixel - mean) / std
    expected_pad = (114 / 255 - np.array(mean)) / std
    np.testing.assert_allclose(tensor[:, 8, 4], expected_content, rtol=1e-5)
    np.testing.assert_allclose(tensor[:, 0, 0], expected_pad, rtol=1e-5)
    np.testing.assert_allclose(tensor[:, 15, 7], expected_pad, rtol=1e-5)


def test_real_photo_matches_a_straightforward_reference() -> None:
    image = np.asarray(cv2.imread(str(media("chelsea.png")), cv2.IMREAD_COLOR), dtype=np.uint8)  # BGR 451x300
    manifest = make_manifest(640, 640, scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))

    tensor, transform = preprocess(image, ChannelOrder.BGR, manifest)

    assert (transform.pad_x, transform.pad_y) == (0.0, 107.0)
    resized = cv2.cvtColor(cv2.resize(image, (640, 426), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    expected = np.full((640, 640, 3), 114, dtype=np.float64)
    expected[107:533] = resized
    expected = (expected / 255 - np.array(manifest.mean)) / np.array(manifest.std)
    np.testing.assert_allclose(tensor, expected.transpose(2, 0, 1), atol=1e-5)


@pytest.mark.parametrize(
    "make_view",
    [
        pytest.param(lambda a: a[10:50, 5:60], id="crop-view"),
        pytest.param(lambda a: a[:, ::-1], id="negative-stride"),
        pytest.param(lambda a: a[::2, ::2], id="strided"),
    ],
)
def test_accepts_read_only_and_non_contiguous_images(make_view: Any) -> None:
    """Decoded request images are read-only, and callers may pass crops; neither may need a copy first."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(80, 90, 3), dtype=np.uint8)
    view = make_view(base)
    view.flags.writeable = False
    manifest = make_manifest(40, 40)

    tensor, _ = preprocess(view, ChannelOrder.BGR, manifest)

    expected, _ = preprocess(np.ascontiguousarray(view), ChannelOrder.BGR, manifest)
    np.testing.assert_array_equal(tensor, expected)


def test_writes_into_a_batch_slot() -> None:
    manifest = make_manifest(32, 32)
    batch = np.zeros((2, 3, 32, 32), dtype=np.float32)
    image = np.full((10, 20, 3), 255, dtype=np.uint8)

    returned, _ = preprocess(image, ChannelOrder.RGB, manifest, out=batch[1])

    assert np.shares_memory(returned, batch)
    np.testing.assert_array_equal(batch[1], preprocess(image, ChannelOrder.RGB, manifest)[0])
    assert not batch[0].any()


@pytest.mark.parametrize(
    ("shape", "dtype", "order"),
    [
        pytest.param((10, 10, 3), np.float32, ChannelOrder.RGB, id="float-pixels"),
        pytest.param((10, 10, 4), np.uint8, ChannelOrder.RGB, id="four-channels-called-rgb"),
        pytest.param((10, 10), np.uint8, ChannelOrder.BGR, id="2d-called-bgr"),
        pytest.param((10, 10, 3), np.uint8, ChannelOrder.GRAY, id="three-channels-called-gray"),
        pytest.param((0, 10, 3), np.uint8, ChannelOrder.RGB, id="empty"),
    ],
)
def test_rejects_images_that_do_not_match_their_order(
    shape: tuple[int, ...], dtype: type[np.generic], order: ChannelOrder
) -> None:
    with pytest.raises(ValueError, match="expected"):
        preprocess(np.zeros(shape, dtype=dtype), order, make_manifest())


def test_stack_batch() -> None:
    one = np.ones((3, 4, 5), dtype=np.float32)
    two = np.full((3, 4, 5), 2, dtype=np.float32)

    single = stack_batch([one])
    pair = stack_batch([one, two])

    assert single.shape == (1, 3, 4, 5) and np.shares_memory(single, one)
    assert pair.shape == (2, 3, 4, 5) and pair.flags.c_contiguous
    np.testing.assert_array_equal(pair[1], two)
    with pytest.raises(ValueError, match="one"):
        stack_batch([one, np.ones((3, 4, 6), dtype=np.float32)])
    with pytest.raises(ValueError, match="at least one"):
        stack_batch([])


# ------------------------------------------------------------- centre-crop, pad value and position, filters


@pytest.mark.parametrize(
    ("original", "fraction", "resized", "offset"),
    [
        # torchvision Resize(256) + CenterCrop(224): the short side to floor(224 / 0.875) = 256.
        pytest.param((640, 480), 0.875, (341, 256), (58, 16), id="landscape"),
        pytest.param((480, 640), 0.875, (256, 341), (16, 58), id="portrait"),
        pytest.param((300, 300), 0.875, (256, 256), (16, 16), id="square"),
        pytest.param((451, 300), 1.0, (336, 224), (56, 0), id="ultralytics-fraction-1"),
        pytest.param((100, 80), 0.875, (320, 256), (48, 16), id="upscale"),
    ],
)
def test_centre_crop_geometry(
    original: tuple[int, int], fraction: float, resized: tuple[int, int], offset: tuple[int, int]
) -> None:
    width, height = original
    manifest = make_manifest(224, 224, resize=ResizeMode.CENTRE_CROP, crop_fraction=fraction, **RAW)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    _, transform = preprocess(image, ChannelOrder.RGB, manifest)
    assert (transform.scale_x * width, transform.scale_y * height) == pytest.approx(resized)
    assert (-transform.pad_x, -transform.pad_y) == offset


def test_centre_crop_cuts_the_centre_of_the_resized_image() -> None:
    """The tensor is exactly the centre window of one cv2.resize of the whole image (no padding)."""
    image = cv2.imread(str(media("chelsea.png")))  # 451x300
    manifest = make_manifest(224, 224, resize=ResizeMode.CENTRE_CROP, channel_order=ChannelOrder.BGR, **RAW)
    tensor, transform = preprocess(image, ChannelOrder.BGR, manifest)
    resized = cv2.resize(image, (384, 256), interpolation=cv2.INTER_LINEAR)  # short side 256
    window = resized[16:240, 80:304].transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(tensor, window)
    # A box in the input maps back through the crop: the input's top-left is (80, 16) of the resized image.
    back = transform.boxes_to_original([[0.0, 0.0, 224.0, 224.0]])[0]
    assert back == pytest.approx([80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256], abs=1e-3)


@pytest.mark.parametrize(
    ("position", "pad_value", "content_at"),
    [
        pytest.param(PadPosition.CENTRE, 114, (0, 16), id="centre-grey"),
        pytest.param(PadPosition.CENTRE, 0, (0, 16), id="centre-black"),
        pytest.param(PadPosition.TOP_LEFT, 114, (0, 0), id="top-left-grey"),
        pytest.param(PadPosition.TOP_LEFT, 255, (0, 0), id="top-left-white"),
    ],
)
def test_pad_value_and_position(position: PadPosition, pad_value: int, content_at: tuple[int, int]) -> None:
    """A 64x32 image in a 64x64 input: the image where the position says, every other pixel the pad value."""
    image = np.full((32, 64, 3), 7, dtype=np.uint8)
    manifest = make_manifest(pad_value=pad_value, pad_position=position, **RAW)
    tensor, transform = preprocess(image, ChannelOrder.RGB, manifest)
    left, top = content_at
    expected = np.full((3, 64, 64), float(pad_value), dtype=np.float32)
    expected[:, top : top + 32, left : left + 64] = 7.0
    np.testing.assert_array_equal(tensor, expected)
    assert (transform.pad_x, transform.pad_y) == (left, top)
    assert transform.boxes_to_original([[0, top, 64, top + 32]])[0] == pytest.approx([0, 0, 64, 32])


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_interpolation_is_the_resize_filter(interpolation: Interpolation) -> None:
    image = cv2.imread(str(media("coffee.png")))
    manifest = make_manifest(
        64, 48, resize=ResizeMode.STRETCH, interpolation=interpolation, channel_order=ChannelOrder.BGR, **RAW
    )
    tensor, _ = preprocess(image, ChannelOrder.BGR, manifest)
    flags = {
        Interpolation.NEAREST: cv2.INTER_NEAREST,
        Interpolation.LINEAR: cv2.INTER_LINEAR,
        Interpolation.CUBIC: cv2.INTER_CUBIC,
        Interpolation.AREA: cv2.INTER_AREA,
        Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
    }
    reference = cv2.resize(image, (64, 48), interpolation=flags[interpolation])
    np.testing.assert_array_equal(tensor, reference.transpose(2, 0, 1).astype(np.float32))
