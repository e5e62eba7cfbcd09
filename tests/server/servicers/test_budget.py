"""Pixel budgets through a real server (issue 11, finding 1): one small request could take gigabytes.

A 105 KB single-colour 6000x6000 PNG decodes to 108 MB; 16 of them in one 1.7 MB request raised the server's
RSS by 1.74 GB before the budget. Now the request is refused from the headers, and the server's peak RSS
(VmHWM, measured from /proc on a server process of its own) barely moves.
"""

from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from server_process import ServerProcess
from visionrpc.server.budget import PixelBudget
from visionrpc.server.errors import InvalidArgumentError, ResourceExhaustedError
from visionrpc.v1 import inference_pb2, inference_pb2_grpc, types_pb2

# The peak RSS may grow by the request's own bytes (a few copies of 1.7 MB) and the call's bookkeeping.
MAX_PEAK_GROWTH_MB = 100.0


def single_colour_png(width: int, height: int) -> bytes:
    """A real 8-bit RGB PNG of one colour: 6000x6000 is ~105 KB and decodes to 108 MB of BGR pixels."""
    row = b"\x00" + b"\x80\x40\x20" * width
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def details(error: grpc.RpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "expected rich google.rpc.Status details"
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


@pytest.fixture(scope="module")
def png_6000() -> bytes:
    return single_colour_png(6000, 6000)


def test_the_amplification_request_is_refused_before_decoding_with_bounded_memory(
    tmp_path: Path, png_6000: bytes
) -> None:
    request = inference_pb2.InferRequest(images=[types_pb2.Image(encoded=png_6000)] * 16)
    assert request.ByteSize() < 2 * 1024 * 1024
    with ServerProcess(tmp_path) as server, grpc.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        before = server.usage()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Infer(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            found = details(caught.value)
            info = found["ErrorInfo"]
            assert isinstance(info, error_details_pb2.ErrorInfo)
            assert info.reason == "REQUEST_TOO_LARGE"
            assert info.metadata["pixels"] == str(16 * 36_000_000)
        after = server.usage()
        print(f"peak RSS {before.peak_rss_mb:.0f} MB -> {after.peak_rss_mb:.0f} MB after 3 refused calls")
        assert after.peak_rss_mb - before.peak_rss_mb < MAX_PEAK_GROWTH_MB
        # One such image alone fits and is served.
        response = stub.Infer(
            inference_pb2.InferRequest(images=[types_pb2.Image(encoded=png_6000)]), timeout=120
        )
        assert response.predictions[0].image_size.width == 6000


def test_calls_over_the_in_flight_budget_are_resource_exhausted_with_retry_info(
    tmp_path: Path, png_6000: bytes
) -> None:
    # Room for one 36 Mpx image at a time: eight sent at once cannot all be decoded together.
    flags = (
        "--no-preload-default-model",
        "--max-request-pixels",
        "40000000",
        "--max-inflight-pixels",
        "40000000",
    )
    request = inference_pb2.InferRequest(images=[types_pb2.Image(encoded=png_6000)])
    with (
        ServerProcess(tmp_path, *flags, ready_service="") as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        stub.Infer(request, timeout=300)  # loads the model, so the calls below only decode and infer

        def call(_: int) -> str:
            try:
                stub.Infer(request, timeout=120)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                found = details(error)
                info, retry = found["ErrorInfo"], found["RetryInfo"]
                assert isinstance(info, error_details_pb2.ErrorInfo)
                assert isinstance(retry, error_details_pb2.RetryInfo)
                assert retry.retry_delay.ToMilliseconds() > 0
                return info.reason
            return "OK"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(call, range(8)))
        print("outcomes:", {o: outcomes.count(o) for o in set(outcomes)})
        assert set(outcomes) == {"OK", "PIXEL_BUDGET_EXHAUSTED"}
        # Every reservation was given back: the same call fits again.
        stub.Infer(request, timeout=120)


# -- the budget itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked", "outcome"),
    [
        ((), 100, "OK"),
        ((), 101, "REQUEST_TOO_LARGE"),
        ((100, 100), 100, "OK"),
        ((100, 100, 100), 1, "PIXEL_BUDGET_EXHAUSTED"),
        ((100, 100, 99), 1, "OK"),
    ],
)
def test_pixel_budget(held: tuple[int, ...], asked: int, outcome: str) -> None:
    budget = PixelBudget(max_request_pixels=100, max_inflight_pixels=300)
    reservations = [budget.reserve(pixels) for pixels in held]
    try:
        reservation = budget.reserve(asked)
    except (InvalidArgumentError, ResourceExhaustedError) as error:
        assert error.reason == outcome
        assert budget.in_use == sum(held)
    else:
        assert outcome == "OK"
        reservation.release()
        reservation.release()  # idempotent
    for held_one in reservations:
        held_one.release()
    assert budget.in_use == 0
