"""Fuzz targets: the server's parsers of hostile input, each fed arbitrary bytes.

A crash is any exception other than the one each function documents for bad input (VisionRpcError for
what comes from the network; ValueError for a manifest, which `ModelRepository.resolve` turns into
FAILED_PRECONDITION), or a broken invariant (a path resolving outside the media root, a URL of a scheme
the policy does not allow). Each target also has seeds: real, valid inputs the fuzzer mutates from.

Run by tests/fuzz/run.py (atheris, coverage-guided); test_fuzz.py runs each for a bounded time in CI and
test_regressions.py replays every crash found.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from visionrpc.server.errors import VisionRpcError
from visionrpc.server.imaging import decode_image, encoded_pixels, read_image_header
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.servicers.convert import (
    decode_request_image,
    infer_options_from_proto,
    request_pixels,
)
from visionrpc.server.streams.source_policy import SourcePolicy, redact_url, resolve_source
from visionrpc.server.streams.url_policy import HostRule, normalise_host
from visionrpc.v1 import inference_pb2, types_pb2

__all__ = ["SEEDS", "TARGETS"]

# Small enough that a decode costs well under a millisecond, large enough for real headers.
MAX_PIXELS = 1 << 16


def image_header(data: bytes) -> None:
    try:
        header = read_image_header(data)
    except VisionRpcError:
        return
    assert header.width > 0 and header.height > 0, header
    try:
        assert encoded_pixels(data, max_pixels=MAX_PIXELS) == header.pixels
    except VisionRpcError:
        assert header.pixels > MAX_PIXELS


def image_decode(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except VisionRpcError:
        return
    assert image.size.width * image.size.height <= MAX_PIXELS


def request(data: bytes) -> None:
    """An InferRequest as the servicer takes it apart: budget from headers, options, then each image."""
    try:
        message = inference_pb2.InferRequest.FromString(data)
    except Exception:  # not a message at all: grpcio refuses it before the servicer (transport.py)
        return
    with contextlib.suppress(VisionRpcError):
        request_pixels(message.images, max_pixels=MAX_PIXELS)
    with contextlib.suppress(VisionRpcError):
        infer_options_from_proto(message.options)
    for index, image in enumerate(message.images[:4]):
        with contextlib.suppress(VisionRpcError):
            decode_request_image(image, index, max_pixels=MAX_PIXELS)


_MANIFEST_DIR = Path(tempfile.mkdtemp(prefix="visionrpc-fuzz-manifest-"))


def manifest(data: bytes) -> None:
    """manifest.json as a repository reads it (a real file: the parse cache keys on its signature)."""
    (_MANIFEST_DIR / "manifest.json").write_bytes(data)
    try:
        parsed = ModelManifest.read(_MANIFEST_DIR)
    except ValueError:
        return
    assert ModelManifest.from_dict(parsed.to_dict()) == parsed  # what it writes, it reads back


def _media_root() -> Path:
    """A media root with a file, a folder, links inside and out, a loop: what a path can meet."""
    root = Path(tempfile.mkdtemp(prefix="visionrpc-fuzz-media-"))
    (root / "clips" / "day").mkdir(parents=True)
    (root / "clips" / "day" / "a.mp4").write_bytes(b"\x00" * 16)
    (root / "b.mp4").write_bytes(b"\x00" * 16)
    (root / "clips" / "up").symlink_to("..")
    (root / "clips" / "out").symlink_to("/etc")
    (root / "clips" / "loop").symlink_to("loop")
    (root / "b-link.mp4").symlink_to("b.mp4")
    return root


_ROOT = _media_root()
_POLICY = SourcePolicy(
    media_root=_ROOT,
    allowed_url_schemes=("rtsp", "http", "https"),
    allowed_url_hosts=("cam.example.com:554", "*.example.org", "127.0.0.1", "[::1]:8554"),
    enable_devices=False,
)
_REAL_ROOT = str(_ROOT.resolve())


def source_path(data: bytes) -> None:
    path = data.decode("utf-8", "surrogateescape")
    try:
        spec = resolve_source(0, path=path, policy=_POLICY)
    except VisionRpcError:
        return
    assert spec.location.startswith(_REAL_ROOT + "/"), (path, spec.location)


def source_url(data: bytes) -> None:
    url = data.decode("utf-8", "replace")
    redact_url(url)
    normalise_host(url)
    with contextlib.suppress(ValueError):
        HostRule.parse(url)
    try:
        spec = resolve_source(0, url=url, policy=_POLICY)
    except VisionRpcError:
        return
    scheme = spec.location.partition("://")[0].lower()
    assert scheme in _POLICY.allowed_url_schemes, (url, spec.location)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "image_header": image_header,
    "image_decode": image_decode,
    "request": request,
    "manifest": manifest,
    "source_path": source_path,
    "source_url": source_url,
}


# ------------------------------------------------------------------------------------------------ seeds


def _images() -> list[bytes]:
    gradient = np.zeros((24, 32, 3), np.uint8)
    gradient[..., 0] = np.arange(32, dtype=np.uint8) * 8
    gradient[..., 1] = (np.arange(24, dtype=np.uint8) * 10)[:, None]
    encoded = [cv2.imencode(ext, gradient)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp")]
    gif = b"GIF89a" + struct.pack("<HH", 32, 24) + b"\x00\x00\x00" + b",\x00\x00\x00\x00\x20\x00\x18\x00\x00;"
    return [*encoded, gif, encoded[1][: len(encoded[1]) // 2] + b"\xff\xd9"]


def _requests(images: list[bytes]) -> list[bytes]:
    raw = types_pb2.RawImage(
        data=bytes(32 * 24 * 3), width=32, height=24, channel_order=types_pb2.CHANNEL_ORDER_BGR
    )
    options = types_pb2.InferOptions(
        confidence_threshold=0.3, class_names=["cup", "person"], class_ids=[1, 2]
    )
    messages = [
        inference_pb2.InferRequest(
            model_id="m", images=[types_pb2.Image(encoded=images[0])], options=options
        ),
        inference_pb2.InferRequest(images=[types_pb2.Image(raw=raw), types_pb2.Image(encoded=images[1])]),
        inference_pb2.InferRequest(images=[types_pb2.Image(encoded=i) for i in images[2:]]),
    ]
    return [m.SerializeToString() for m in messages]


def _manifests() -> list[bytes]:
    base = {
        "task": "detection",
        "decoder": "yolov5",
        "input_width": 416,
        "input_height": 416,
        "class_names": ["person", "cup"],
        "channel_order": "rgb",
        "resize": "letterbox",
        "scale": 0.00392156862745098,
    }
    return [json.dumps(base).encode(), json.dumps({**base, "decoder": "yolov8", "mean": [0, 0, 0]}).encode()]


SEEDS: dict[str, list[bytes]] = {
    "image_header": _images(),
    "image_decode": _images(),
    "request": _requests(_images()),
    "manifest": _manifests(),
    "source_path": [
        b"b.mp4",
        b"clips/day/a.mp4",
        b"clips/up/b.mp4",
        b"clips/out/passwd",
        b"clips/loop/x",
        b"b-link.mp4",
    ],
    "source_url": [
        b"rtsp://cam.example.com/live?token=abc",
        b"rtsp://user:pw@cam.example.com:554/x",
        b"https://a.example.org/index.m3u8",
        b"http://127.1:80/x",
        b"rtsp://[::1]:8554/cam",
        b"http://0x7f.0.0.1/",
    ],
}
