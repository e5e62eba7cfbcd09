"""Request images to pixels: header sizes, the decompression-bomb guard, bad payloads, raw pixels.

Real photos, re-encoded with OpenCV into every supported format; bombs and broken files are made from those
same real files by editing their headers, or built by hand where noted.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from media import media
from visionrpc.server import imaging
from visionrpc.server.domain import ChannelOrder, ImageSize
from visionrpc.server.errors import InvalidArgumentError
from visionrpc.server.imaging import DecodedImage, decode_image, raw_image, read_image_header

Pixels = npt.NDArray[np.uint8]

PHOTOS = ["coffee.png", "astronaut.png", "rocket.jpg", "grace_hopper.jpg"]
LIMIT = 40_000_000

# id -> (extension, imencode params, format name, mean absolute error of the round trip: 0 is lossless)
ENCODINGS: dict[str, tuple[str, list[int], str, float]] = {
    "jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90], "JPEG", 8),
    "jpeg-progressive": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG", 8),
    "png": (".png", [], "PNG", 0),
    "bmp": (".bmp", [], "BMP", 0),
    "webp-lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP", 8),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP", 0),
    "gif": (".gif", [], "GIF", 40),  # a fixed 256-colour palette with dithering
}


@pytest.fixture(scope="module")
def photos() -> dict[str, Pixels]:
    return {name: cv2.imread(str(media(name)), cv2.IMREAD_COLOR) for name in PHOTOS}


def encode(pixels: Pixels, ext: str, params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, pixels, params or [])
    assert ok
    return buffer.tobytes()


def expect_invalid(call: Callable[[], Any], reason: str, field: str) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    error = caught.value
    assert (error.reason, [v.field for v in error.violations]) == (reason, [field]), error.message
    return error


# --- hand-built headers and edits of real files ---------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def black_png(width: int, height: int) -> bytes:
    """A real, valid 1-bit greyscale PNG, all black: 20000x20000 is ~50 KB, and decodes to 1.2 GB as BGR."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte "none", then packed 1-bit pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def with_png_size(data: bytes, width: int, height: int) -> bytes:
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]


def jpeg_sof_offset(data: bytes) -> int:
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return pos


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    at = jpeg_sof_offset(data) + 5
    return data[:at] + struct.pack(">HH", height, width) + data[at + 4 :]


def with_bmp_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def with_gif_size(data: bytes, width: int, height: int) -> bytes:
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def with_vp8l_size(data: bytes, width: int, height: int) -> bytes:
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14)
    return data[:21] + struct.pack("<I", bits) + data[25:]


def vp8x(lossy_webp: bytes, width: int, height: int, extra_chunks: bytes = b"", flags: int = 0) -> bytes:
    """Wraps a simple lossy WebP's VP8 chunk in the extended (VP8X) container with the given canvas size."""
    header = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + header + extra_chunks + lossy_webp[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_orientation(orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def with_jpeg_exif(data: bytes, orientation: int) -> bytes:
    return data[:2] + jpeg_segment(0xE1, b"Exif\x00\x00" + tiff_orientation(orientation)) + data[2:]


def with_png_exif(data: bytes, orientation: int) -> bytes:
    return data[:33] + png_chunk(b"eXIf", tiff_orientation(orientation)) + data[33:]


# --- encoded images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
@pytest.mark.parametrize("photo", PHOTOS)
def test_header_size_is_decoded_size(
    photos: dict[str, Pixels], photo: str, encoding: tuple[Any, ...]
) -> None:
    ext, params, fmt, tolerance = encoding
    original = photos[photo]
    data = encode(original, ext, params)

    header = read_image_header(data)
    image = decode_image(data, max_pixels=LIMIT)

    height, width = original.shape[:2]
    assert (header.format, header.width, header.height) == (fmt, width, height)
    assert image.size == ImageSize(width, height)
    assert image.pixels.shape == (height, width, 3) and image.pixels.dtype == np.uint8
    assert image.order is ChannelOrder.BGR
    assert image.decode_ms > 0
    assert not image.pixels.flags.writeable
    error = float(np.abs(image.pixels.astype(np.int16) - original).mean())
    assert error <= tolerance, f"round trip differs by {error:.1f} on average"


@pytest.mark.parametrize("photo", PHOTOS)
def test_original_files_decode_like_imread(photo: str) -> None:
    data = media(photo).read_bytes()
    image = decode_image(data, max_pixels=LIMIT)
    np.testing.assert_array_equal(image.pixels, cv2.imread(str(media(photo)), cv2.IMREAD_COLOR))


def test_jpeg_header_walk_skips_app_segments_fill_bytes_and_an_exif_thumbnail(
    photos: dict[str, Pixels],
) -> None:
    photo = photos["rocket.jpg"]
    main = encode(photo, ".jpg")
    # An EXIF thumbnail is a complete JPEG (with its own SOF, SOS and EOI) inside APP1: the parser must take
    # the size from the main frame, and the truncation check must not be fooled by the thumbnail's EOI.
    thumbnail = encode(cv2.resize(photo, (64, 43)), ".jpg")
    segments = (
        jpeg_segment(0xE1, b"Exif\x00\x00" + thumbnail)
        + jpeg_segment(0xE2, b"ICC_PROFILE\x00" + bytes(60000))
        + jpeg_segment(0xFE, b"a comment \xff\xc0 that looks like a SOF marker")
        + b"\xff\xff\xff"  # fill bytes before the next marker are legal
    )
    data = main[:2] + segments + main[2:]

    assert read_image_header(data).width == 640
    assert decode_image(data, max_pixels=LIMIT).size == ImageSize(640, 427)
    truncated = data[: len(segments) + len(main) // 2]
    expect_invalid(lambda: decode_image(truncated, max_pixels=LIMIT), "UNDECODABLE_IMAGE", "encoded")


def test_webp_extended_container_gives_the_canvas_size(photos: dict[str, Pixels]) -> None:
    lossy = encode(photos["coffee.png"], ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    data = vp8x(lossy, 600, 400)
    assert read_image_header(data).width == 600
    assert decode_image(data, max_pixels=LIMIT).size == ImageSize(600, 400)


def test_top_down_bmp(photos: dict[str, Pixels]) -> None:
    photo = photos["coffee.png"]  # 600 px * 3 bytes: rows need no padding
    bottom_up = encode(photo, ".bmp")
    offset = struct.unpack_from("<I", bottom_up, 10)[0]
    rows = np.frombuffer(bottom_up[offset:], np.uint8).reshape(400, -1)
    top_down = with_bmp_size(bottom_up, 600, -400)[:offset] + rows[::-1].tobytes()

    assert (read_image_header(top_down).width, read_image_header(top_down).height) == (600, 400)
    np.testing.assert_array_equal(decode_image(top_down, max_pixels=LIMIT).pixels, photo)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    ("ext", "add_exif"), [(".jpg", with_jpeg_exif), (".png", with_png_exif)], ids=["jpeg", "png"]
)
def test_exif_orientation_is_applied(
    photos: dict[str, Pixels], ext: str, add_exif: Callable[[bytes, int], bytes], orientation: int
) -> None:
    plain = encode(photos["rocket.jpg"], ext)
    stored = decode_image(plain, max_pixels=LIMIT).pixels
    displayed = {1: stored, 3: cv2.rotate(stored, cv2.ROTATE_180)}.get(orientation)
    if orientation == 6:
        displayed = cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 8:
        displayed = cv2.rotate(stored, cv2.ROTATE_90_COUNTERCLOCKWISE)

    image = decode_image(add_exif(plain, orientation), max_pixels=LIMIT)

    assert displayed is not None
    assert image.size == ImageSize(displayed.shape[1], displayed.shape[0])
    np.testing.assert_array_equal(image.pixels, displayed)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_opencv(photos: dict[str, Pixels], orientation: int) -> None:
    # JPEGs are decoded by libjpeg-turbo through simplejpeg (strict about truncation), which leaves the EXIF
    # orientation to us: every one of the eight must come out as cv2.imdecode shows it.
    data = with_jpeg_exif(encode(photos["rocket.jpg"], ".jpg"), orientation)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decode_image(data, max_pixels=LIMIT).pixels, expected)


def test_greyscale_jpeg_decodes_like_opencv(photos: dict[str, Pixels]) -> None:
    data = encode(cv2.cvtColor(photos["rocket.jpg"], cv2.COLOR_BGR2GRAY), ".jpg")
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decode_image(data, max_pixels=LIMIT).pixels, expected)


# --- the decompression-bomb guard -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def black_20000_png() -> bytes:
    return black_png(20000, 20000)


def test_black_png_builder_makes_real_images() -> None:
    data = black_png(77, 45)  # same code as the 20000x20000 bomb, small enough to decode
    image = decode_image(data, max_pixels=LIMIT)
    assert image.size == ImageSize(77, 45) and not image.pixels.any()


def coffee(ext: str, *params: int) -> Callable[[dict[str, Pixels]], bytes]:
    return lambda photos: encode(photos["coffee.png"], ext, list(params))


def rocket(ext: str, *params: int) -> Callable[[dict[str, Pixels]], bytes]:
    return lambda photos: encode(photos["rocket.jpg"], ext, list(params))


def edited(
    make: Callable[[dict[str, Pixels]], bytes], edit: Callable[[bytes], bytes]
) -> Callable[..., bytes]:
    return lambda photos: edit(make(photos))


def cut(make: Callable[[dict[str, Pixels]], bytes], fraction: float) -> Callable[..., bytes]:
    return edited(make, lambda data: data[: int(len(data) * fraction)])


def constant(data: bytes) -> Callable[..., bytes]:
    return lambda photos: data


WEBP_LOSSY = (cv2.IMWRITE_WEBP_QUALITY, 80)
WEBP_LOSSLESS = (cv2.IMWRITE_WEBP_QUALITY, 101)
PROGRESSIVE = (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)

# id -> (payload from the photos, width and height it claims)
BOMBS: dict[str, tuple[Callable[..., bytes], int, int]] = {
    "png-100000x100000": (edited(coffee(".png"), lambda d: with_png_size(d, 100000, 100000)), 100000, 100000),
    "png-2^31-1-wide": (edited(coffee(".png"), lambda d: with_png_size(d, 2**31 - 1, 1)), 2**31 - 1, 1),
    "jpeg-65535x65535": (edited(rocket(".jpg"), lambda d: with_jpeg_size(d, 65535, 65535)), 65535, 65535),
    "jpeg-progressive": (
        edited(rocket(".jpg", *PROGRESSIVE), lambda d: with_jpeg_size(d, 40000, 30000)),
        40000,
        30000,
    ),
    "bmp-50000x50000": (edited(coffee(".bmp"), lambda d: with_bmp_size(d, 50000, 50000)), 50000, 50000),
    "webp-vp8l": (
        edited(coffee(".webp", *WEBP_LOSSLESS), lambda d: with_vp8l_size(d, 16384, 16384)),
        16384,
        16384,
    ),
    "webp-vp8x": (edited(coffee(".webp", *WEBP_LOSSY), lambda d: vp8x(d, 2**24, 2**24)), 2**24, 2**24),
    "gif-65535x65535": (edited(coffee(".gif"), lambda d: with_gif_size(d, 65535, 65535)), 65535, 65535),
}


@pytest.mark.parametrize(("make", "width", "height"), BOMBS.values(), ids=BOMBS.keys())
def test_bombs_are_refused_before_decoding(
    photos: dict[str, Pixels],
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[..., bytes],
    width: int,
    height: int,
) -> None:
    data = make(photos)

    def must_not_decode(*args: object) -> None:
        raise AssertionError("cv2.imdecode was reached for an image over the pixel limit")

    monkeypatch.setattr(imaging.cv2, "imdecode", must_not_decode)
    error = expect_invalid(lambda: decode_image(data, max_pixels=LIMIT), "IMAGE_TOO_LARGE", "encoded")
    assert error.metadata == {"width": str(width), "height": str(height), "max_pixels": str(LIMIT)}
    assert f"{width}x{height}" in error.message


def test_real_20000x20000_png_is_refused_before_decoding(
    black_20000_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(black_20000_png) < 200_000  # ~60 KB on the wire, 1.2 GB once decoded to BGR
    assert read_image_header(black_20000_png).pixels == 400_000_000
    monkeypatch.setattr(imaging.cv2, "imdecode", lambda *a: pytest.fail("cv2.imdecode was reached"))
    expect_invalid(lambda: decode_image(black_20000_png, max_pixels=LIMIT), "IMAGE_TOO_LARGE", "encoded")


def test_refusing_a_bomb_allocates_next_to_nothing(black_20000_png: bytes) -> None:
    # The real code path, no spy: numpy reports its buffers to tracemalloc, so a decode would show as >1 GB.
    tracemalloc.start()
    try:
        expect_invalid(lambda: decode_image(black_20000_png, max_pixels=LIMIT), "IMAGE_TOO_LARGE", "encoded")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize(
    ("width", "height", "ok"), [(1000, 400, True), (1000, 401, False)], ids=["at", "over"]
)
def test_limit_is_inclusive(width: int, height: int, ok: bool) -> None:
    data = black_png(width, height)
    if ok:
        assert decode_image(data, max_pixels=400_000).size == ImageSize(width, height)
    else:
        expect_invalid(lambda: decode_image(data, max_pixels=400_000), "IMAGE_TOO_LARGE", "encoded")


# --- bad payloads ---------------------------------------------------------------------------------------


def flip_bytes(data: bytes, start: int, count: int) -> bytes:
    return data[:start] + bytes(b ^ 0x5A for b in data[start : start + count]) + data[start + count :]


UNSUPPORTED = "UNSUPPORTED_IMAGE_FORMAT"
UNDECODABLE = "UNDECODABLE_IMAGE"

# id -> (payload from the photos, reason, a fragment of the message)
BAD_PAYLOADS: dict[str, tuple[Callable[..., bytes], str, str]] = {
    "empty": (constant(b""), "EMPTY_IMAGE", "empty"),
    "random-bytes": (constant(np.random.default_rng(7).bytes(4096)), UNSUPPORTED, "unknown format"),
    "text": (constant(b"hello, I am not an image\n"), UNSUPPORTED, "JPEG, PNG, BMP, WebP or GIF"),
    "html": (constant(b"<!DOCTYPE html><html></html>"), UNSUPPORTED, "unknown format"),
    "riff-not-webp": (constant(b"RIFF\x24\x00\x00\x00WAVEfmt "), UNSUPPORTED, "unknown format"),
    "tiff": (coffee(".tiff"), UNSUPPORTED, "TIFF"),
    "jpeg-2000": (coffee(".jp2"), UNSUPPORTED, "JPEG 2000"),
    "pnm": (coffee(".ppm"), UNSUPPORTED, "PNM"),
    "jpeg-soi-only": (constant(b"\xff\xd8\xff"), UNDECODABLE, "JPEG"),
    "jpeg-sos-before-sof": (constant(b"\xff\xd8" + jpeg_segment(0xDA, bytes(10))), UNDECODABLE, "SOFn"),
    "jpeg-dnl-height": (edited(rocket(".jpg"), lambda d: with_jpeg_size(d, 640, 0)), UNDECODABLE, "DNL"),
    "jpeg-truncated-half": (cut(rocket(".jpg"), 0.5), UNDECODABLE, "truncated"),
    "jpeg-without-eoi": (edited(rocket(".jpg"), lambda d: d[:-2]), UNDECODABLE, "end-of-image"),
    "jpeg-progressive-truncated": (cut(rocket(".jpg", *PROGRESSIVE), 0.66), UNDECODABLE, "truncated"),
    # Issue 11: cut, then an end-of-image marker appended; libjpeg only warns and fills the rest with grey.
    "jpeg-truncated-eoi-appended": (
        edited(rocket(".jpg"), lambda d: d[: len(d) // 2] + b"\xff\xd9"),
        UNDECODABLE,
        "premature end",
    ),
    "jpeg-progressive-truncated-eoi-appended": (
        edited(rocket(".jpg", *PROGRESSIVE), lambda d: d[: len(d) * 9 // 10] + b"\xff\xd9"),
        UNDECODABLE,
        "truncated or corrupt",
    ),
    "png-signature-only": (constant(b"\x89PNG\r\n\x1a\n"), UNDECODABLE, "truncated"),
    "png-header-only": (edited(coffee(".png"), lambda d: d[:33]), UNDECODABLE, "truncated or corrupt"),
    "png-truncated-half": (cut(coffee(".png"), 0.5), UNDECODABLE, "truncated or corrupt"),
    "png-corrupt-idat": (edited(coffee(".png"), lambda d: flip_bytes(d, 200, 2000)), UNDECODABLE, "corrupt"),
    "png-zero-width": (edited(coffee(".png"), lambda d: with_png_size(d, 0, 400)), UNDECODABLE, "0x400"),
    "png-first-chunk-not-ihdr": (
        edited(coffee(".png"), lambda d: d[:8] + png_chunk(b"tEXt", b"a\x00b") + d[8:]),
        UNDECODABLE,
        "IHDR",
    ),
    "bmp-truncated": (cut(coffee(".bmp"), 0.5), UNDECODABLE, "truncated or corrupt"),
    "bmp-unknown-dib-header": (
        constant(b"BM" + bytes(12) + struct.pack("<I", 20) + bytes(20)),
        UNDECODABLE,
        "DIB",
    ),
    "webp-truncated": (cut(coffee(".webp", *WEBP_LOSSY), 0.5), UNDECODABLE, "truncated or corrupt"),
    "webp-unknown-chunk": (constant(b"RIFF\x20\x00\x00\x00WEBPABCD" + bytes(20)), UNDECODABLE, "chunk"),
    "gif-truncated": (cut(coffee(".gif"), 0.5), UNDECODABLE, "truncated or corrupt"),
}


@pytest.mark.parametrize(("make", "reason", "fragment"), BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payloads(
    photos: dict[str, Pixels], make: Callable[..., bytes], reason: str, fragment: str
) -> None:
    error = expect_invalid(lambda: decode_image(make(photos), max_pixels=LIMIT), reason, "encoded")
    assert fragment in error.message
    assert error.violations[0].description == error.message


def test_decoded_size_must_match_the_header(
    photos: dict[str, Pixels], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = encode(photos["coffee.png"], ".png")
    monkeypatch.setattr(imaging.cv2, "imdecode", lambda *a: np.zeros((10, 20, 3), np.uint8))
    error = expect_invalid(lambda: decode_image(data, max_pixels=LIMIT), "UNDECODABLE_IMAGE", "encoded")
    assert "header says 600x400 but the image decodes to 20x10" in error.message


def test_field_is_prefixed_by_the_caller() -> None:
    error = expect_invalid(lambda: decode_image(b"", max_pixels=LIMIT), "EMPTY_IMAGE", "encoded")
    assert [v.field for v in error.with_field_prefix("images[3]").violations] == ["images[3].encoded"]


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(b"\xff\xd8\xff", max_pixels=0)


# --- JPEG decoded at reduced size ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpeg(photos: dict[str, Pixels]) -> bytes:
    """rocket.jpg upscaled x4: 2560x1708, the kind of phone photo a 416 px model gets."""
    large = cv2.resize(photos["rocket.jpg"], (2560, 1708), interpolation=cv2.INTER_CUBIC)
    return encode(np.asarray(large, np.uint8), ".jpg")


def opencv_decode(data: bytes, flags: int) -> Pixels:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert decoded is not None
    return np.asarray(decoded, np.uint8)


@pytest.mark.parametrize(
    ("width", "height", "min_size", "scale"),
    [
        pytest.param(2560, 1708, ImageSize(416, 277), 0.25, id="quarter-covers-the-letterbox"),
        pytest.param(2560, 1708, ImageSize(320, 214), 0.125, id="eighth-exactly-enough"),
        pytest.param(2560, 1708, ImageSize(321, 214), 0.25, id="eighth-one-pixel-short"),
        pytest.param(2560, 1708, ImageSize(416, 416), 0.25, id="stretch-needs-both-sides"),
        pytest.param(1001, 999, ImageSize(126, 125), 0.125, id="libjpeg-rounds-up"),
        pytest.param(832, 832, ImageSize(416, 416), 0.5, id="exactly-twice"),
        pytest.param(831, 832, ImageSize(416, 416), 0.5, id="half-a-pixel-short-rounds-up"),
        pytest.param(830, 832, ImageSize(416, 416), 1.0, id="a-pixel-short"),
        pytest.param(640, 427, ImageSize(416, 277), 1.0, id="not-much-larger"),
        pytest.param(300, 200, ImageSize(416, 277), 1.0, id="smaller-than-needed"),
        pytest.param(7, 4000, ImageSize(1, 1), 1.0, id="under-8-pixels-never-reduced"),
    ],
)
def test_jpeg_scale(width: int, height: int, min_size: ImageSize, scale: float) -> None:
    assert imaging.jpeg_scale(width, height, min_size) == scale


@pytest.mark.parametrize(
    ("min_size", "scale", "reduced_flag"),
    [
        pytest.param(ImageSize(416, 277), 0.25, cv2.IMREAD_REDUCED_COLOR_4, id="quarter"),
        pytest.param(ImageSize(1280, 854), 0.5, cv2.IMREAD_REDUCED_COLOR_2, id="half"),
        pytest.param(ImageSize(64, 64), 0.125, cv2.IMREAD_REDUCED_COLOR_8, id="eighth"),
        pytest.param(ImageSize(2000, 1000), 1.0, cv2.IMREAD_COLOR, id="full"),
    ],
)
def test_reduced_jpeg_matches_opencvs_reduced_decode(
    large_jpeg: bytes, min_size: ImageSize, scale: float, reduced_flag: int
) -> None:
    """The same libjpeg DCT scaling OpenCV's IMREAD_REDUCED_COLOR_k asks for; `size` stays the image's."""
    expected = opencv_decode(large_jpeg, reduced_flag)

    image = decode_image(large_jpeg, max_pixels=LIMIT, min_size=min_size)

    assert (image.size, image.scale) == (ImageSize(2560, 1708), scale)
    assert image.pixel_size == ImageSize(expected.shape[1], expected.shape[0])
    assert image.pixel_size.width >= min_size.width and image.pixel_size.height >= min_size.height
    assert np.abs(image.pixels.astype(np.int16) - expected).mean() < 1.0
    assert not image.pixels.flags.writeable


def test_reduced_jpeg_is_the_full_image_shrunk(large_jpeg: bytes) -> None:
    """Block averages, like INTER_AREA on the full decode: the same picture at a quarter of the size."""
    full = decode_image(large_jpeg, max_pixels=LIMIT).pixels
    image = decode_image(large_jpeg, max_pixels=LIMIT, min_size=ImageSize(416, 277))
    shrunk = cv2.resize(full, (image.pixel_size.width, image.pixel_size.height), interpolation=cv2.INTER_AREA)

    assert np.abs(image.pixels.astype(np.int16) - shrunk).mean() < 3.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reduced_jpeg_applies_the_exif_orientation(large_jpeg: bytes, orientation: int) -> None:
    """min_size is as displayed: a portrait (orientations 5-8) needs the stored width to cover its height."""
    data = with_jpeg_exif(large_jpeg, orientation)
    expected = opencv_decode(data, cv2.IMREAD_REDUCED_COLOR_4)
    displayed = ImageSize(1708, 2560) if orientation >= 5 else ImageSize(2560, 1708)
    needed = ImageSize(277, 416) if orientation >= 5 else ImageSize(416, 277)

    image = decode_image(data, max_pixels=LIMIT, min_size=needed)

    assert (image.size, image.scale) == (displayed, 0.25)
    assert image.pixels.shape == expected.shape
    assert np.abs(image.pixels.astype(np.int16) - expected).mean() < 1.0


@pytest.mark.parametrize(
    ("make", "reason", "fragment"),
    [
        pytest.param(
            lambda jpeg: jpeg[: len(jpeg) // 2] + b"\xff\xd9", "UNDECODABLE_IMAGE", "truncated or corrupt",
            id="cut-with-an-end-marker-appended",
        ),
        pytest.param(lambda jpeg: jpeg[: len(jpeg) // 2], "UNDECODABLE_IMAGE", "truncated", id="cut"),
        pytest.param(
            lambda jpeg: with_jpeg_size(jpeg, 20000, 20000), "IMAGE_TOO_LARGE", "20000x20000",
            id="bomb-header",
        ),
    ],
)  # fmt: skip
def test_reduced_decoding_keeps_strictness_and_budgets(
    large_jpeg: bytes, make: Callable[[bytes], bytes], reason: str, fragment: str
) -> None:
    """What is refused at full size is refused at reduced size, before or by the decoder alike."""
    error = expect_invalid(
        lambda: decode_image(make(large_jpeg), max_pixels=LIMIT, min_size=ImageSize(64, 64)),
        reason,
        "encoded",
    )
    assert fragment in error.message


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp"])
def test_other_formats_always_decode_at_full_size(photos: dict[str, Pixels], ext: str) -> None:
    large = np.asarray(cv2.resize(photos["coffee.png"], (2400, 1600)), np.uint8)

    image = decode_image(encode(large, ext), max_pixels=LIMIT, min_size=ImageSize(64, 64))

    assert (image.scale, image.pixel_size, image.size) == (1.0, ImageSize(2400, 1600), ImageSize(2400, 1600))


@pytest.mark.parametrize(
    ("scale", "shape", "message"),
    [
        pytest.param(0.25, (3, 4, 3), None, id="quarter-rounds-up"),
        pytest.param(0.25, (4, 4, 3), r"shape \(3, 4, 3\)", id="quarter-wrong-shape"),
        pytest.param(0.3, (3, 3, 3), r"expected a scale in \(1.0, 0.5, 0.25, 0.125\), got 0.3", id="not-k/8"),
    ],
)
def test_decoded_image_checks_its_scale(scale: float, shape: tuple[int, ...], message: str | None) -> None:
    def make() -> DecodedImage:
        return DecodedImage(np.zeros(shape, np.uint8), ChannelOrder.BGR, ImageSize(13, 9), 0.0, scale)

    if message is None:
        assert make().pixel_size == ImageSize(4, 3)
    else:
        with pytest.raises(ValueError, match=message):
            make()


# --- raw pixels -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(ChannelOrder), ids=[o.value for o in ChannelOrder])
def test_raw_image_is_a_zero_copy_view(photos: dict[str, Pixels], order: ChannelOrder) -> None:
    photo = photos["astronaut.png"][:300, :200]
    pixels = np.ascontiguousarray(np.resize(photo, (300, 200, order.channels)))
    data = pixels.tobytes()

    image = raw_image(data, 200, 300, order, max_pixels=LIMIT)

    assert isinstance(image, DecodedImage)
    assert (image.order, image.size, image.pixels.shape) == (
        order,
        ImageSize(200, 300),
        (300, 200, order.channels),
    )
    np.testing.assert_array_equal(image.pixels, pixels)
    assert np.shares_memory(image.pixels, np.frombuffer(data, np.uint8))
    assert not image.pixels.flags.writeable


RAW_ERRORS: dict[str, tuple[int, int, ChannelOrder | None, int, str, str, str]] = {
    # id: (width, height, order, data length, reason, field, message fragment)
    "one-byte-short": (
        4,
        3,
        ChannelOrder.RGB,
        35,
        "RAW_SIZE_MISMATCH",
        "raw.data",
        "expected 36 bytes (4x3x3",
    ),
    "one-byte-long": (
        4,
        3,
        ChannelOrder.BGRA,
        49,
        "RAW_SIZE_MISMATCH",
        "raw.data",
        "48 bytes (4x3x4 for bgra)",
    ),
    "gray-sized-for-rgb": (4, 3, ChannelOrder.RGB, 12, "RAW_SIZE_MISMATCH", "raw.data", "got 12"),
    "empty-data": (4, 3, ChannelOrder.GRAY, 0, "EMPTY_IMAGE", "raw.data", "empty"),
    "zero-width": (0, 3, ChannelOrder.RGB, 36, "INVALID_DIMENSIONS", "raw.width", "a positive width, got 0"),
    "negative-width": (-4, 3, ChannelOrder.RGB, 36, "INVALID_DIMENSIONS", "raw.width", "got -4"),
    "zero-height": (
        4,
        0,
        ChannelOrder.RGB,
        36,
        "INVALID_DIMENSIONS",
        "raw.height",
        "a positive height, got 0",
    ),
    "negative-height": (4, -3, ChannelOrder.RGB, 36, "INVALID_DIMENSIONS", "raw.height", "got -3"),
    "unspecified-order": (4, 3, None, 36, "INVALID_CHANNEL_ORDER", "raw.channel_order", "rgb, bgr, gray"),
    # Too many pixels is reported as such even when the data is small: the claim is what is refused.
    "too-many-pixels": (10001, 10000, ChannelOrder.RGB, 36, "IMAGE_TOO_LARGE", "raw", "10001x10000"),
}


@pytest.mark.parametrize(
    ("width", "height", "order", "length", "reason", "field", "fragment"),
    RAW_ERRORS.values(),
    ids=RAW_ERRORS.keys(),
)
def test_raw_image_errors(
    width: int, height: int, order: ChannelOrder | None, length: int, reason: str, field: str, fragment: str
) -> None:
    error = expect_invalid(
        lambda: raw_image(bytes(length), width, height, order, max_pixels=100_000_000), reason, field
    )
    assert fragment in error.message
    if reason == "IMAGE_TOO_LARGE":
        assert error.metadata == {"width": "10001", "height": "10000", "max_pixels": "100000000"}


def test_raw_image_limit_is_inclusive() -> None:
    assert raw_image(bytes(12), 4, 3, ChannelOrder.GRAY, max_pixels=12).size == ImageSize(4, 3)
    expect_invalid(
        lambda: raw_image(bytes(12), 4, 3, ChannelOrder.GRAY, max_pixels=11), "IMAGE_TOO_LARGE", "raw"
    )


def test_decoded_image_checks_its_pixels() -> None:
    with pytest.raises(
        ValueError, match=r"expected uint8 pixels of shape \(3, 4, 3\), got float32 \(3, 4, 3\)"
    ):
        DecodedImage(np.zeros((3, 4, 3), np.float32), ChannelOrder.BGR, ImageSize(4, 3), 0.0)  # type: ignore[arg-type]
