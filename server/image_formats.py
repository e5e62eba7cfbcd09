"""Reading image containers without decoding them: each format's stored size from its header, the segments of
a JPEG and the chunks of a PNG, and a name for the formats we refuse. Pure Python over bytes; anything
broken raises `MalformedHeaderError`, which `imaging` turns into UNDECODABLE_IMAGE."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

__all__ = [
    "HEADER_PARSERS",
    "MalformedHeaderError",
    "describe_unsupported",
    "jpeg_segments",
    "require_png_chunks",
]


class MalformedHeaderError(Exception):
    """A recognised format whose header is broken; becomes UNDECODABLE_IMAGE."""


# --- header parsers: each returns (width, height) as stored, or raises MalformedHeaderError ---------------


def _positive(fmt: str, width: int, height: int) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise MalformedHeaderError(f"{fmt} header gives a size of {width}x{height}")
    return width, height


def _png_size(data: bytes) -> tuple[int, int]:
    # The PNG spec requires IHDR to be the first chunk, right after the 8-byte signature.
    if len(data) < 24:
        raise MalformedHeaderError("header is truncated")
    if data[12:16] != b"IHDR":
        raise MalformedHeaderError("the first chunk is not IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    if width > 2**31 - 1 or height > 2**31 - 1:
        raise MalformedHeaderError(f"IHDR size {width}x{height} is out of range")
    return _positive("PNG", width, height)


def require_png_chunks(data: bytes) -> None:
    """Refuses a PNG whose chunks claim more bytes than it holds, before OpenCV sees it.

    OpenCV's PNG reader allocates each chunk's declared length up front, even past the end of the buffer: a
    541-byte PNG whose IEND claims 2.6 GB took 2.7 GB of memory and 7 s to refuse (found by tests/fuzz).
    Walking the chunk lengths costs a few microseconds (one per chunk, and a PNG has a handful to a few
    hundred).
    """
    offset = 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        remaining = len(data) - offset - 12
        if length > remaining:
            shown = kind.decode("latin-1").encode("unicode_escape").decode()[:16]
            raise MalformedHeaderError(
                f"chunk {shown!r} at byte {offset} declares {length} bytes, "
                f"{max(remaining, 0)} remain (truncated or corrupt)"
            )
        if kind == b"IEND":
            return
        offset += 12 + length
    raise MalformedHeaderError("no IEND chunk (truncated or corrupt)")


# Start-of-frame markers SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0-7 (SOI is only valid first, EOI only last).
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """Yields (marker, offset of its length field) for each marker segment after SOI, up to the first SOS.

    Walks the segments (APPn with EXIF/ICC/XMP, COM, DQT, DHT, SOFn, ...) the way libjpeg's next_marker()
    does: bytes before a marker are skipped, as are 0xFF fill bytes, so we see the markers the decoder sees.
    Stops early, silently, where the data ends; callers say what was missing.
    """
    pos, end = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos + 2 >= end:
            return
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9):
            raise MalformedHeaderError(f"unexpected marker {marker:02X} before the image data")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            raise MalformedHeaderError(f"marker {marker:02X} has an invalid segment length {length}")
        yield marker, pos
        if marker == 0xDA:
            return
        pos += length


def _jpeg_size(data: bytes) -> tuple[int, int]:
    # libjpeg refuses a second SOF, so the first one is the frame the decoder will allocate for.
    for marker, pos in jpeg_segments(data):
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if height == 0:
                # Height 0 defers the height to a DNL marker after the first scan; libjpeg does not support it
                # and we could not bound the image anyway.
                raise MalformedHeaderError(
                    "the image height is deferred to a DNL marker, which is not supported"
                )
            return _positive("JPEG", width, height)
    raise MalformedHeaderError("no frame header (SOFn marker) before the image data")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit dimensions
        width, height = struct.unpack_from("<HH", data, 18)
    elif dib_size >= 40:  # BITMAPINFOHEADER and its extensions (V4, V5, OS/2 2.x)
        width, height = struct.unpack_from("<ii", data, 18)
        height = abs(height)  # negative height marks a top-down bitmap
    else:
        raise MalformedHeaderError(f"unknown DIB header size {dib_size}")
    return _positive("BMP", width, height)


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: key-frame header after a 3-byte frame tag
        if data[23:26] != b"\x9d\x01\x2a":
            raise MalformedHeaderError("VP8 key-frame start code missing")
        width, height = struct.unpack_from("<HH", data, 26)
        return _positive("WebP", width & 0x3FFF, height & 0x3FFF)  # the top 2 bits are a scaling hint
    if chunk == b"VP8L":  # lossless: signature byte 0x2F, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            raise MalformedHeaderError("VP8L signature byte missing")
        (bits,) = struct.unpack_from("<I", data, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: the canvas size as 24-bit width-1 and height-1
        if len(data) < 30:
            raise MalformedHeaderError("header is truncated")
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise MalformedHeaderError(f"unknown first chunk {chunk!r}")


def _gif_size(data: bytes) -> tuple[int, int]:
    # The logical screen: OpenCV decodes GIF frames onto a canvas of this size, and frames must fit inside it.
    width, height = struct.unpack_from("<HH", data, 6)
    return _positive("GIF", width, height)


HEADER_PARSERS: tuple[tuple[str, bytes, Callable[[bytes], tuple[int, int]]], ...] = (
    ("JPEG", b"\xff\xd8\xff", _jpeg_size),
    ("PNG", b"\x89PNG\r\n\x1a\n", _png_size),
    ("BMP", b"BM", _bmp_size),
    ("WebP", b"RIFF", _webp_size),  # plus "WEBP" at offset 8, checked by the caller
    ("GIF", b"GIF87a", _gif_size),
    ("GIF", b"GIF89a", _gif_size),
)

# Formats people send by mistake, named in the error so the client knows what it sent.
_UNSUPPORTED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"%PDF", "PDF"),
    (b"8BPS", "Photoshop"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
)


def describe_unsupported(data: bytes) -> str:
    for signature, name in _UNSUPPORTED_SIGNATURES:
        if data.startswith(signature):
            return f"a {name} image, which is not supported"
    if data[4:8] == b"ftyp":  # ISO-BMFF: AVIF, HEIC, and MP4 video
        brand = data[8:12].decode("ascii", "replace").strip()
        return f"an ISO media file (brand {brand!r}: AVIF, HEIF or video), which is not supported"
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in b"1234567":
        return "a PNM image, which is not supported"
    head = data[:8].hex(" ")
    return f"{len(data)} bytes of an unknown format (starting {head})"
