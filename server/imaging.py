"""Turning the image payloads of requests into pixels, safely.

Two doors, both returning a `DecodedImage`:

- `decode_image` for encoded JPEG, PNG, BMP, WebP and GIF files. The width and height are read from the
  container header (`image_formats`, pure Python) and checked against `max_pixels` *before* any codec runs:
  a 50 KB PNG can claim 20000x20000 pixels and would make the decoder allocate 1.2 GB (a decompression bomb).
  Other formats are refused by signature rather than handed to OpenCV, whose many codecs (TIFF, JPEG 2000,
  AVIF, HDR, PNM, ...) are attack surface we do not need.
- `raw_image` for raw 8-bit pixels, which become a zero-copy view on the request's bytes.

EXIF orientation: decoded images are returned *as displayed*, i.e. with the EXIF orientation applied, which
is what `cv2.IMREAD_COLOR` does by default for JPEG, PNG and WebP. Browsers, phone galleries and image viewers
show photos that way, so boxes come back in the coordinates of the image the user actually looks at (and
detectors see people upright rather than lying on their side). `DecodedImage.size` is that displayed size,
which is the transpose of the header's size for orientations 5-8. Clients that want stored-pixel coordinates
send raw pixels.

Reduced JPEG decoding: a caller that knows how small the pixels may be (`min_size`, e.g. what the model's
preprocessing resizes to) lets a JPEG at least twice that size be decoded by libjpeg-turbo's DCT scaling at
1/2, 1/4 or 1/8 of its size, the smallest still covering `min_size`. The entropy decoding is the same, but
the inverse DCT, the colour conversion and the pixels written shrink with the scale, and the later resize
has less to read. `DecodedImage.scale` says what was done; `size` stays the image's own (displayed) size,
which is what results refer to, so boxes found in the reduced pixels are multiplied by 1 / scale. Only those
three factors are used: libjpeg-turbo's other M/8 scalings (3/8, 5/8, ...) decoded no faster than the full
image here (docs/performance.md). Budgets, strict decoding and the orientation are the same either way.

Pixels are read-only in both cases: raw images are views on the immutable request bytes, and decoded ones are
frozen the same way so code downstream cannot tell them apart (it makes new arrays when it resizes anyway).

Example:
    >>> image = decode_image(Path("coffee.png").read_bytes(), max_pixels=40_000_000)
    >>> image.size, image.order
    (ImageSize(width=600, height=400), <ChannelOrder.BGR: 'bgr'>)
"""

from __future__ import annotations

import math
import struct
import time
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from .domain import ChannelOrder, ImageArray, ImageSize
from .errors import InvalidArgumentError
from .image_formats import (
    HEADER_PARSERS,
    MalformedHeaderError,
    describe_unsupported,
    jpeg_segments,
    require_png_chunks,
)

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageHeader",
    "decode_image",
    "encoded_pixels",
    "jpeg_scale",
    "raw_image",
    "read_image_header",
]

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WebP", "GIF")
_SUPPORTED_TEXT = "JPEG, PNG, BMP, WebP or GIF"

# Fields, relative to the request's image message (the servicer prefixes "images[i]").
_ENCODED = "encoded"
_RAW = "raw"
_RAW_DATA = "raw.data"


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Pixels ready for pre-processing: HxWxC uint8 (C = `order.channels`), read-only.

    `size` is the image's own size, as displayed (what results refer to). `scale` is the pixels' size
    relative to it: 1, or 1/2, 1/4 or 1/8 for a JPEG decoded at reduced size (see `decode_image`'s
    `min_size`), whose pixels are then ceil(size x scale) as libjpeg rounds, and whose pixel edges map to
    the image's by exactly 1 / scale.
    """

    pixels: ImageArray
    order: ChannelOrder
    size: ImageSize
    decode_ms: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.scale not in _SCALES:
            raise ValueError(f"expected a scale in {_SCALES}, got {self.scale}")
        expected = (*_scaled(self.size.height, self.size.width, self.scale), self.order.channels)
        if self.pixels.dtype != np.uint8 or self.pixels.shape != expected:
            raise ValueError(
                f"expected uint8 pixels of shape {expected}, got {self.pixels.dtype} {self.pixels.shape}"
            )

    @property
    def pixel_size(self) -> ImageSize:
        """The size of `pixels`: `size` unless the JPEG was decoded at reduced size."""
        return ImageSize(int(self.pixels.shape[1]), int(self.pixels.shape[0]))


# libjpeg-turbo's DCT scalings used for reduced decoding, in eighths: 4/8, 2/8, 1/8 (and 8/8, no scaling).
_EIGHTHS = (8, 4, 2, 1)
_SCALES = tuple(m / 8 for m in _EIGHTHS)


def _scaled(first: int, second: int, scale: float) -> tuple[int, int]:
    """Both sides at `scale`, rounded up as libjpeg sizes a scaled output (exact: scales are k/8)."""
    return math.ceil(first * scale), math.ceil(second * scale)


def jpeg_scale(width: int, height: int, min_size: ImageSize) -> float:
    """The smallest scale in 1, 1/2, 1/4, 1/8 at which a `width` x `height` JPEG still decodes to at least
    `min_size` on both sides (1 when none smaller does, or the image is under 8 pixels on a side)."""
    if min(width, height) < 8:  # ceil(side x k/8) would not tell the scalings apart
        return 1.0
    for eighths in reversed(_EIGHTHS):
        scale = eighths / 8
        scaled_width, scaled_height = _scaled(width, height, scale)
        if scaled_width >= min_size.width and scaled_height >= min_size.height:
            return scale
    return 1.0


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the container header of an encoded image says: its format and its stored size."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def read_image_header(data: bytes) -> ImageHeader:
    """Reads format and stored size from an encoded image's header, without decoding any pixels.

    Raises:
        InvalidArgumentError: EMPTY_IMAGE, UNSUPPORTED_IMAGE_FORMAT, or UNDECODABLE_IMAGE for a broken header.
    """
    if not data:
        raise InvalidArgumentError.for_field(_ENCODED, "image is empty (0 bytes)", reason="EMPTY_IMAGE")
    for name, signature, parse in HEADER_PARSERS:
        if data.startswith(signature) and (name != "WebP" or data[8:12] == b"WEBP"):
            try:
                width, height = parse(data)
            except (MalformedHeaderError, struct.error, IndexError) as exc:
                detail = str(exc) if isinstance(exc, MalformedHeaderError) else "header is truncated"
                raise InvalidArgumentError.for_field(
                    _ENCODED, f"not a valid {name} image: {detail}", reason="UNDECODABLE_IMAGE"
                ) from None
            return ImageHeader(name, width, height)
    raise InvalidArgumentError.for_field(
        _ENCODED,
        f"expected a {_SUPPORTED_TEXT} image, got {describe_unsupported(data)}",
        reason="UNSUPPORTED_IMAGE_FORMAT",
    )


def decode_image(data: bytes, *, max_pixels: int, min_size: ImageSize | None = None) -> DecodedImage:
    """Decodes an encoded image to BGR pixels, refusing oversized images before the codec runs.

    The pixel limit is checked against the header's size; OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS,
    2**30 by default) still applies on top, so a larger `max_pixels` does not raise it.

    Args:
        data: the encoded image.
        max_pixels: the largest width x height accepted, from the header.
        min_size: the smallest pixels the caller can use, as displayed (None: full size). A JPEG at least
            twice as large on both sides is decoded at 1/2, 1/4 or 1/8 scale, the smallest still covering
            `min_size` (`jpeg_scale`); other formats, and CMYK JPEGs, always decode at full size.

    Raises:
        InvalidArgumentError: EMPTY_IMAGE, UNSUPPORTED_IMAGE_FORMAT, UNDECODABLE_IMAGE or IMAGE_TOO_LARGE
            (metadata: width, height, max_pixels), all on field "encoded".
    """
    _check_limit(max_pixels)
    started = time.perf_counter()
    header = read_image_header(data)
    if header.pixels > max_pixels:
        raise _too_large(_ENCODED, header.format, header.width, header.height, max_pixels)
    scale, transposed = 1.0, False
    if header.format == "JPEG":
        _require_jpeg_end(data)
        orientation = _exif_orientation(data)
        transposed = orientation >= 5  # orientations 5-8 store the image transposed
        if min_size is not None:
            needed = ImageSize(min_size.height, min_size.width) if transposed else min_size
            scale = jpeg_scale(header.width, header.height, needed)
        decoded, scale = _decode_jpeg(data, orientation, scale, _scaled(header.width, header.height, scale))
    else:
        if header.format == "PNG":
            try:
                require_png_chunks(data)
            except (MalformedHeaderError, struct.error) as exc:
                raise InvalidArgumentError.for_field(
                    _ENCODED, f"not a valid PNG image: {exc}", reason="UNDECODABLE_IMAGE"
                ) from None
        decoded = _opencv_decode(data)
    if decoded is None or decoded.size == 0:
        raise InvalidArgumentError.for_field(
            _ENCODED,
            f"could not decode the {header.format} image ({header.width}x{header.height}, "
            f"{len(data)} bytes): the data is truncated or corrupt",
            reason="UNDECODABLE_IMAGE",
        )
    pixels: ImageArray = np.asarray(decoded, dtype=np.uint8)  # no copy: IMREAD_COLOR always gives 8 bits
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    # The guard above is only sound if the codec decoded the image the header described. Orientations 5-8
    # of EXIF transpose the image, which leaves the pixel count (all the guard cares about) unchanged.
    stored = _scaled(header.width, header.height, scale)
    if (width, height) not in (stored, stored[::-1]):
        raise InvalidArgumentError.for_field(
            _ENCODED,
            f"the {header.format} header says {header.width}x{header.height} but the image decodes to "
            f"{width}x{height}" + (f" at scale {scale}" if scale != 1.0 else ""),
            reason="UNDECODABLE_IMAGE",
        )
    # OpenCV applies the orientation of PNG and WebP itself; only the decoded shape tells (at full size).
    transposed = transposed or (header.format != "JPEG" and (width, height) != stored)
    size = ImageSize(header.height, header.width) if transposed else ImageSize(header.width, header.height)
    pixels.flags.writeable = False
    decode_ms = (time.perf_counter() - started) * 1000.0
    return DecodedImage(pixels, ChannelOrder.BGR, size, decode_ms, scale)


def encoded_pixels(data: bytes, *, max_pixels: int) -> int:
    """How many pixels an encoded image decodes to, from its header alone; the per-image limit applies.

    Raises:
        InvalidArgumentError: as `decode_image` does for a bad header or an image over `max_pixels`.
    """
    _check_limit(max_pixels)
    header = read_image_header(data)
    if header.pixels > max_pixels:
        raise _too_large(_ENCODED, header.format, header.width, header.height, max_pixels)
    return header.pixels


def raw_image(
    data: bytes, width: int, height: int, order: ChannelOrder | None, *, max_pixels: int
) -> DecodedImage:
    """Wraps raw 8-bit pixels (rows top to bottom, channels interleaved) as a zero-copy HxWxC view.

    `order` None stands for a request that left the channel order unspecified.

    Raises:
        InvalidArgumentError: INVALID_CHANNEL_ORDER (raw.channel_order), INVALID_DIMENSIONS (raw.width,
            raw.height), IMAGE_TOO_LARGE (raw), EMPTY_IMAGE or RAW_SIZE_MISMATCH (raw.data).
    """
    _check_limit(max_pixels)
    started = time.perf_counter()
    check_pixel_layout(_RAW, "raw", width, height, order, max_pixels=max_pixels)
    assert order is not None  # check_pixel_layout refused None
    if not data:
        raise InvalidArgumentError.for_field(
            _RAW_DATA, "raw pixel data is empty (0 bytes)", reason="EMPTY_IMAGE"
        )
    channels = order.channels
    expected = width * height * channels
    if len(data) != expected:
        raise InvalidArgumentError.for_field(
            _RAW_DATA,
            f"expected {expected} bytes ({width}x{height}x{channels} for {order.value}), got {len(data)}",
            reason="RAW_SIZE_MISMATCH",
        )
    # frombuffer on bytes gives a read-only view: no copy of what may be tens of megabytes.
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    decode_ms = (time.perf_counter() - started) * 1000.0
    return DecodedImage(pixels, order, ImageSize(width, height), decode_ms)


def _check_limit(max_pixels: int) -> None:
    if max_pixels < 1:
        raise ValueError(f"expected max_pixels >= 1, got {max_pixels}")


def check_pixel_layout(
    field: str, kind: str, width: int, height: int, order: ChannelOrder | None, *, max_pixels: int
) -> None:
    """The checks every uncompressed image shares (raw bytes, shared memory): a channel order, positive
    dimensions, at most `max_pixels`. `field` is the image's message ("raw", "shared_memory"), `kind` the word
    for it in the message ("raw", "shared-memory").

    Raises:
        InvalidArgumentError: INVALID_CHANNEL_ORDER (`field`.channel_order), INVALID_DIMENSIONS
            (`field`.width, `field`.height), IMAGE_TOO_LARGE (`field`).
    """
    if order is None:
        choices = ", ".join(o.value for o in ChannelOrder)
        raise InvalidArgumentError.for_field(
            f"{field}.channel_order",
            f"expected a channel order ({choices}), got none",
            reason="INVALID_CHANNEL_ORDER",
        )
    for dimension, value in (("width", width), ("height", height)):
        if value <= 0:
            raise InvalidArgumentError.for_field(
                f"{field}.{dimension}",
                f"expected a positive {dimension}, got {value}",
                reason="INVALID_DIMENSIONS",
            )
    if width * height > max_pixels:
        raise _too_large(field, kind, width, height, max_pixels)


def _too_large(field_name: str, kind: str, width: int, height: int, max_pixels: int) -> InvalidArgumentError:
    error = InvalidArgumentError.for_field(
        field_name,
        f"{kind} image of {width}x{height} = {width * height} pixels exceeds the limit of "
        f"{max_pixels} pixels",
        reason="IMAGE_TOO_LARGE",
    )
    error.metadata.update(width=str(width), height=str(height), max_pixels=str(max_pixels))
    return error


def _require_jpeg_end(data: bytes) -> None:
    # Older OpenCV builds decode a truncated JPEG with a libjpeg *warning* and grey-fill the missing rows;
    # a JPEG whose image data never reaches its end-of-image marker is refused here whatever OpenCV does.
    # Entropy-coded data cannot contain FF D9 (FF is always stuffed), so an EOI after the first scan header
    # is a cheap, format-correct test. We start from the real first scan, found by walking the segments,
    # because an EXIF thumbnail in APP1 carries a complete JPEG of its own. Bytes after the EOI (padding some
    # cameras add) are fine.
    scan = -1
    try:
        for marker, pos in jpeg_segments(data):
            if marker == 0xDA:
                scan = pos
    except MalformedHeaderError:
        pass  # a broken segment after the frame header: no usable scan, reported below
    if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
        raise InvalidArgumentError.for_field(
            _ENCODED,
            "the JPEG image is truncated: its image data does not reach an end-of-image marker",
            reason="UNDECODABLE_IMAGE",
        )


# libjpeg warnings that mean part of the image is made up (grey or smeared blocks) rather than decoded. A
# truncated JPEG with an end-of-image marker appended passes the check above, and libjpeg (OpenCV's too) only
# *warns* "premature end of data segment" and fills the rest with grey; simplejpeg's strict mode turns every
# warning into an error, and these are the ones refused. Warnings about metadata (a bad ICC marker, an unknown
# JFIF revision, extraneous bytes before a marker) lose no pixels and are tolerated: real cameras cause them.
_PIXEL_LOSS_WARNINGS = (
    "premature end",
    "bad huffman code",
    "bad arithmetic code",
    "instead of rst",
    "inconsistent progression",
)


def _loses_pixels(error: ValueError) -> bool:
    return any(warning in str(error).lower() for warning in _PIXEL_LOSS_WARNINGS)


def _corrupt_jpeg(error: ValueError) -> InvalidArgumentError:
    return InvalidArgumentError.for_field(
        _ENCODED, f"the JPEG image is truncated or corrupt: {str(error)[:120]}", reason="UNDECODABLE_IMAGE"
    )


def _decode_jpeg(
    data: bytes, orientation: int, scale: float, scaled: tuple[int, int]
) -> tuple[ImageArray | None, float]:
    """A JPEG decoded to BGR by libjpeg-turbo (as OpenCV's own codec) at `scale` (from `jpeg_scale`), whose
    stored (width, height) is then `scaled`, refusing corrupt or truncated data and applying the EXIF
    `orientation` the way cv2.imdecode does; returns the pixels and their scale (1 for CMYK JPEGs, which
    OpenCV decodes)."""
    # simplejpeg picks the most reducing libjpeg scaling (of 1/8 ... 16/8) whose output is at least this
    # large: exactly `scale`, since any smaller one gives a smaller side (`jpeg_scale` reduces only images
    # with both sides >= 8 pixels, where that holds). decode_image checks the size it got anyway.
    size = {"min_width": scaled[0], "min_height": scaled[1]} if scale != 1.0 else {}
    try:
        pixels = _strict_jpeg(data, size)
    except ValueError as exc:
        message = str(exc).lower()
        if "color" in message and "conversion" in message:
            return _decode_cmyk_jpeg(data), 1.0  # Adobe CMYK/YCCK: libjpeg-turbo cannot convert to BGR
        if _loses_pixels(exc):
            raise _corrupt_jpeg(exc) from None
        # A warning about metadata stops the strict decoder before it reaches the image data: decode again
        # without the APPn and COM segments (the orientation is read from the original), strictly first.
        bare = _without_metadata(data)
        try:
            pixels = _strict_jpeg(bare, size)
        except ValueError as again:
            if _loses_pixels(again):
                raise _corrupt_jpeg(again) from None
            try:
                pixels = simplejpeg.decode_jpeg(bare, colorspace="BGR", strict=False, **size)
            except ValueError as last:
                raise _corrupt_jpeg(last) from None
    return _orient(np.asarray(pixels, dtype=np.uint8), orientation), scale


def _strict_jpeg(data: bytes, size: dict[str, int]) -> ImageArray:
    return np.asarray(simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True, **size), dtype=np.uint8)


def _without_metadata(data: bytes) -> bytes:
    """The JPEG without its APPn and COM segments (EXIF, ICC, XMP, comments): what is left is the image."""
    parts, kept_to = [data[:2]], 2
    try:
        for marker, pos in jpeg_segments(data):
            start = pos - 2  # the marker's 0xFF and code precede its length field
            if 0xE0 <= marker <= 0xEF or marker == 0xFE:
                parts.append(data[kept_to:start])
                (length,) = struct.unpack_from(">H", data, pos)
                kept_to = pos + length
    except MalformedHeaderError:
        return data
    parts.append(data[kept_to:])
    return b"".join(parts)


def _decode_cmyk_jpeg(data: bytes) -> ImageArray | None:
    # Validated strictly in CMYK at 1/8 scale (all the entropy data is read, the IDCT mostly skipped), then
    # decoded by OpenCV, which converts CMYK and applies the orientation itself.
    try:
        simplejpeg.decode_jpeg(data, colorspace="CMYK", strict=True, min_factor=8, min_width=1, min_height=1)
    except ValueError as exc:
        if _loses_pixels(exc):
            raise _corrupt_jpeg(exc) from None
    return _opencv_decode(data)


def _opencv_decode(data: bytes) -> ImageArray | None:
    # Straight from the request's bytes: frombuffer shares the buffer, imdecode reads it in place.
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if decoded is None else np.asarray(decoded, dtype=np.uint8)  # no copy: always 8 bits


def _orient(pixels: ImageArray, orientation: int) -> ImageArray:
    """Applies an EXIF orientation (2-8) exactly as OpenCV's ExifTransform does for cv2.imdecode."""
    if orientation in (5, 6, 7, 8):
        pixels = np.asarray(cv2.transpose(pixels), dtype=np.uint8)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return pixels if flip is None else np.asarray(cv2.flip(pixels, flip), dtype=np.uint8)


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of a JPEG's APP1 segment; 1 when absent or unreadable."""
    try:
        for marker, pos in jpeg_segments(data):
            if marker != 0xE1 or data[pos + 2 : pos + 8] != b"Exif\x00\x00":
                continue
            tiff = pos + 8
            order = {b"II": "<", b"MM": ">"}.get(data[tiff : tiff + 2])
            if order is None:
                return 1
            (ifd,) = struct.unpack_from(order + "I", data, tiff + 4)
            (count,) = struct.unpack_from(order + "H", data, tiff + ifd)
            for entry in range(min(count, 512)):  # bounded: a hostile count cannot make this loop long
                tag, kind, _, value = struct.unpack_from(order + "HHIH", data, tiff + ifd + 2 + 12 * entry)
                if tag == 0x0112:
                    return value if kind == 3 and 1 <= value <= 8 else 1
            return 1
    except (MalformedHeaderError, struct.error):
        pass
    return 1
