"""Every crash the fuzzers found (test_fuzz.py, docs/fuzzing.md), replayed: each input through its target
(which fails on any exception but the documented one), and the fix seen from where users meet it."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import cache_root
from fuzz.targets import TARGETS
from visionrpc.server.errors import FailedPreconditionError, InvalidArgumentError
from visionrpc.server.imaging import decode_image
from visionrpc.server.manifest import ModelManifest
from visionrpc.server.models.repository import ModelId, ModelRepository


def lying_png(kind: bytes, length: int) -> bytes:
    """A real 32x24 PNG with a `kind` chunk after IHDR declaring `length` bytes and holding 4."""
    data = cv2.imencode(".png", np.full((24, 32, 3), 90, np.uint8))[1].tobytes()
    return data[:33] + struct.pack(">I", length) + kind + b"abcd" + data[33:]


def fuzzer_png() -> bytes:
    """The fuzzer's own find, rebuilt: IDAT renamed ID0T, IEND declaring 2.6 GB (541 bytes: 2.7 GB, 7 s)."""
    data = bytearray(cv2.imencode(".png", np.full((24, 32, 3), 90, np.uint8))[1].tobytes())
    at = data.find(b"IDAT")
    data[at : at + 4] = b"ID0T"
    struct.pack_into(">I", data, data.find(b"IEND") - 4, 0xA000_0000)
    return bytes(data)


def request_with(image: bytes) -> bytes:
    from visionrpc.v1 import inference_pb2, types_pb2

    return inference_pb2.InferRequest(images=[types_pb2.Image(encoded=image)]).SerializeToString()


_BASE = {"task": "detection", "decoder": "yolov5", "input_width": 416, "input_height": 416}

# (target, input, what it was): found by atheris, each crashed before its fix.
CRASHES: list[tuple[str, bytes, str]] = [
    ("manifest", b'{"task":"detection","decoder":"yolov5","input_width":1}', "a missing key: TypeError"),
    ("manifest", json.dumps({**_BASE, "input_width": "416"}).encode(), "a number as text: TypeError"),
    ("manifest", json.dumps({**_BASE, "class_names": 3}).encode(), "a list as a number: TypeError"),
    ("request", request_with(fuzzer_png()), "IEND claims 2.6 GB: 2.7 GB RSS (oom)"),
    ("image_decode", lying_png(b"tEXt", 0x7FFF_FFF0), "tEXt claims 2 GB: 2 GB RSS"),
]


PNG_CASES = {
    "fuzzer": fuzzer_png(),
    "tEXt-2GB": lying_png(b"tEXt", 0x7FFF_FFF0),
    "tEXt-2.6GB": lying_png(b"tEXt", 0xA000_0000),
    "iCCP-1GB": lying_png(b"iCCP", 0x4000_0000),
}


@pytest.mark.parametrize("data", PNG_CASES.values(), ids=PNG_CASES.keys())
def test_a_png_chunk_longer_than_the_data_is_refused_with_bounded_memory(data: bytes) -> None:
    """OpenCV's PNG reader allocated a chunk's declared length before noticing the data ends: before the
    fix the fuzzer's 541 bytes took 2.7 GB and 7 s, a tEXt chunk after IHDR claiming 2 GB took 2 GB."""
    with pytest.raises(InvalidArgumentError) as info:
        decode_image(data, max_pixels=1 << 20)
    assert info.value.reason == "UNDECODABLE_IMAGE"
    assert "truncated or corrupt" in info.value.message
    # The peak memory of a process that only decodes it (in-process, pytest's own peak would hide it).
    script = (
        "import sys; from visionrpc.server.imaging import decode_image\n"
        "try: decode_image(sys.stdin.buffer.read(), max_pixels=1 << 20)\n"
        "except Exception as e: print(type(e).__name__)\n"
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across exec (pytest's, hundreds of MB).
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, check=True, timeout=60
    )
    error, peak_mb = result.stdout.decode().split()
    assert error == "InvalidArgumentError" and int(peak_mb) < 400, result.stdout


@pytest.mark.parametrize(("target", "data", "what"), CRASHES, ids=[c[2] for c in CRASHES])
def test_crash_input_is_handled(target: str, data: bytes, what: str) -> None:
    TARGETS[target](data)


@pytest.mark.parametrize("data", [c[1] for c in CRASHES if c[0] == "manifest"])
def test_a_malformed_manifest_is_failed_precondition(data: bytes, tmp_path: Path) -> None:
    """Served, such a manifest made every request for the model INTERNAL; now it is INVALID_MANIFEST."""
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "manifest.json").write_bytes(data)
    repository = ModelRepository(tmp_path, tmp_path / "builtins", cache_root() / "downloads")
    with pytest.raises(FailedPreconditionError) as info:
        repository.resolve(ModelId("m"))
    assert info.value.reason == "INVALID_MANIFEST"
    with pytest.raises(ValueError, match="invalid manifest"):
        ModelManifest.from_dict(json.loads(data))
