"""Shared-memory inputs through a real server and real stubs: regions in the real /dev/shm, every misuse.

Regions are made here with plain os.open/ftruncate/mmap in /dev/shm (what shm_open does on Linux), not with
the SDK, so the server is checked against the files themselves; tests/client/test_shared_memory.py covers
the SDK's side.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest
from conftest import RunningServer, start_server, wait_for
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from media import media
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import (
    inference_pb2,
    inference_pb2_grpc,
    shared_memory_pb2,
    shared_memory_pb2_grpc,
    types_pb2,
)

SHM = Path("/dev/shm")
MAX_REGION_BYTES = 4 * 1024 * 1024
MAX_REGIONS = 6
_names = itertools.count()


@pytest.fixture(scope="module")
def shm_server(server: RunningServer, base_config: ServerConfig) -> Iterator[RunningServer]:
    """A server with shared memory on (after the session server, which installed the model)."""
    config = replace(
        base_config,
        shared_memory=True,
        shared_memory_max_region_bytes=MAX_REGION_BYTES,
        shared_memory_max_regions=MAX_REGIONS,
        shared_memory_linger_s=0.0,  # a client that goes away loses its region at once (one test lingers)
    )
    running = start_server(config)
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=1.0)


@dataclass
class Channel:
    channel: grpc.Channel
    shm: shared_memory_pb2_grpc.SharedMemoryServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub


def connect(address: str) -> Channel:
    channel = grpc.insecure_channel(address)
    return Channel(
        channel,
        shared_memory_pb2_grpc.SharedMemoryServiceStub(channel),
        inference_pb2_grpc.InferenceServiceStub(channel),
    )


@pytest.fixture
def stubs(shm_server: RunningServer) -> Iterator[Channel]:
    channel = connect(shm_server.address)
    yield channel
    channel.channel.close()


class Regions:
    """Region files this test made in /dev/shm, unlinked at its end."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def name(self, prefix: str = "/visionrpc-test-") -> str:
        name = f"{prefix}{os.getpid()}-{next(_names)}"
        self.paths.append(SHM / name[1:])
        return name

    def make(self, data: bytes | int, prefix: str = "/visionrpc-test-", mode: int = 0o600) -> str:
        """A region holding `data` (or that many zero bytes); its name."""
        name = self.name(prefix)
        fd = os.open(SHM / name[1:], os.O_CREAT | os.O_EXCL | os.O_RDWR, mode)
        try:
            os.fchmod(fd, mode)  # past the umask
            if isinstance(data, int):
                os.ftruncate(fd, data)
            else:
                os.write(fd, data)
        finally:
            os.close(fd)
        return name

    def cleanup(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


@pytest.fixture
def regions() -> Iterator[Regions]:
    made = Regions()
    yield made
    made.cleanup()


class Holder:
    """An open RegisterSharedMemory call: the region is registered while it runs."""

    def __init__(self, stub: shared_memory_pb2_grpc.SharedMemoryServiceStub, name: str, size: int = 0):
        request = shared_memory_pb2.RegisterSharedMemoryRequest(
            region=shared_memory_pb2.SharedMemoryRegion(name=name, byte_size=size)
        )
        self.call = stub.RegisterSharedMemory(request, timeout=120)
        self.response: shared_memory_pb2.RegisterSharedMemoryResponse = next(self.call)

    def wait_ended(self) -> grpc.StatusCode:
        """The call's code once it ends (it sends nothing after its first answer)."""
        assert list(self.call) == []
        code: grpc.StatusCode = self.call.code()
        return code


def registered(stub: shared_memory_pb2_grpc.SharedMemoryServiceStub) -> dict[str, int]:
    response = stub.ListSharedMemory(shared_memory_pb2.ListSharedMemoryRequest(), timeout=30)
    return {r.name: r.byte_size for r in response.regions}


def bgr(name: str) -> npt.NDArray[np.uint8]:
    pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert pixels is not None
    return np.ascontiguousarray(pixels, dtype=np.uint8)


def shm_image(
    region: str,
    offset: int = 0,
    width: int = 4,
    height: int = 4,
    order: types_pb2.ChannelOrder.ValueType = types_pb2.CHANNEL_ORDER_BGR,
) -> types_pb2.Image:
    return types_pb2.Image(
        shared_memory=types_pb2.SharedMemoryImage(
            region=region, offset=offset, width=width, height=height, channel_order=order
        )
    )


def infer(
    stub: inference_pb2_grpc.InferenceServiceStub, *images: types_pb2.Image
) -> inference_pb2.InferResponse:
    response: inference_pb2.InferResponse = stub.Infer(inference_pb2.InferRequest(images=images), timeout=120)
    return response


def error_details(error: grpc.RpcError) -> tuple[str, list[str]]:
    """(ErrorInfo.reason, the BadRequest fields) of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "expected rich google.rpc.Status details"
    reason, fields = "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "visionrpc.dev"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def expect_error(
    call: Callable[[], object], code: grpc.StatusCode, reason: str, field: str | None = None
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, error.details()
    got_reason, fields = error_details(error)
    assert got_reason == reason, error.details()
    if field is not None:
        assert fields[:1] == [field]


def detections(response: inference_pb2.InferResponse) -> list[list[tuple[str, tuple[float, ...], float]]]:
    return [
        [
            (d.class_name, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max), d.confidence)
            for d in p.detections
        ]
        for p in response.predictions
    ]


def assert_same_detections(a: inference_pb2.InferResponse, b: inference_pb2.InferResponse) -> None:
    """Same classes, boxes within 0.01 px and confidences within 1e-4 (batches of other sizes may round
    differently in the engine)."""
    for image_a, image_b in zip(detections(a), detections(b), strict=True):
        assert [d[0] for d in image_a] == [d[0] for d in image_b]
        for (_, box_a, conf_a), (_, box_b, conf_b) in zip(image_a, image_b, strict=True):
            assert np.allclose(box_a, box_b, atol=0.01) and abs(conf_a - conf_b) < 1e-4


# ------------------------------------------------------------------------------------- off by default


@pytest.mark.parametrize(
    "call",
    ["register", "unregister", "list", "infer"],
)
def test_a_server_without_shared_memory_refuses_every_use(server: RunningServer, call: str) -> None:
    channel = connect(server.address)
    region = shared_memory_pb2.SharedMemoryRegion(name="/visionrpc-test-off", byte_size=16)
    calls: dict[str, Callable[[], object]] = {
        "register": lambda: next(
            channel.shm.RegisterSharedMemory(
                shared_memory_pb2.RegisterSharedMemoryRequest(region=region), timeout=30
            )
        ),
        "unregister": lambda: channel.shm.UnregisterSharedMemory(
            shared_memory_pb2.UnregisterSharedMemoryRequest(name=region.name), timeout=30
        ),
        "list": lambda: channel.shm.ListSharedMemory(shared_memory_pb2.ListSharedMemoryRequest(), timeout=30),
        "infer": lambda: infer(channel.inference, shm_image(region.name)),
    }
    with channel.channel:
        expect_error(calls[call], grpc.StatusCode.PERMISSION_DENIED, "SHARED_MEMORY_DISABLED")


# ------------------------------------------------------------------------------------- registration


@dataclass(frozen=True)
class BadRegion:
    """How to make a region (given the test's Regions), what to register, and the expected error."""

    make: Callable[[Regions], tuple[str, int]]  # -> (name, byte_size to register)
    code: grpc.StatusCode
    reason: str
    field: str | None = "region.name"


def _symlink(regions: Regions) -> tuple[str, int]:
    target = regions.make(64)
    link = regions.name()
    (SHM / link[1:]).symlink_to(SHM / target[1:])
    return link, 0


def _fifo(regions: Regions) -> tuple[str, int]:
    name = regions.name()
    os.mkfifo(SHM / name[1:], 0o600)
    return name, 0


def _other_owner(regions: Regions) -> tuple[str, int]:
    name = regions.make(64)
    os.chown(SHM / name[1:], 65534, 65534)  # nobody: the tests run as root here, or this is skipped
    return name, 0


INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
BAD_REGIONS = {
    "outside-the-prefix": BadRegion(lambda r: (r.make(64, prefix="/elsewhere-"), 0), DENIED,
                                    "SHARED_MEMORY_NAME_NOT_ALLOWED"),
    "no-leading-slash": BadRegion(lambda r: ("visionrpc-x", 0), INVALID, "INVALID_SHARED_MEMORY_NAME"),
    "slash-inside": BadRegion(lambda r: ("/visionrpc-a/../../etc/passwd", 0), INVALID,
                              "INVALID_SHARED_MEMORY_NAME"),
    "dot-dot": BadRegion(lambda r: ("/..", 0), INVALID, "INVALID_SHARED_MEMORY_NAME"),
    "too-long": BadRegion(lambda r: ("/visionrpc-" + "x" * 300, 0), INVALID, "INVALID_SHARED_MEMORY_NAME"),
    "missing-file": BadRegion(lambda r: (r.name(), 0), INVALID, "SHARED_MEMORY_REGION_MISSING"),
    "symlink": BadRegion(_symlink, INVALID, "SHARED_MEMORY_NOT_A_REGION"),
    "fifo": BadRegion(_fifo, INVALID, "SHARED_MEMORY_NOT_A_REGION"),
    "empty-region": BadRegion(lambda r: (r.make(0), 0), INVALID, "SHARED_MEMORY_OUT_OF_BOUNDS",
                              "region.byte_size"),
    "size-beyond-the-file": BadRegion(lambda r: (r.make(64), 65), INVALID, "SHARED_MEMORY_OUT_OF_BOUNDS",
                                      "region.byte_size"),
    "over-the-size-limit": BadRegion(lambda r: (r.make(MAX_REGION_BYTES + 1), 0), INVALID,
                                     "SHARED_MEMORY_REGION_TOO_LARGE", "region.byte_size"),
    "writable-by-others": BadRegion(lambda r: (r.make(64, mode=0o666), 0), DENIED,
                                    "SHARED_MEMORY_OWNER_NOT_ALLOWED", None),
    "another-users-file": BadRegion(_other_owner, DENIED, "SHARED_MEMORY_OWNER_NOT_ALLOWED", None),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REGIONS))
def test_a_bad_region_is_refused(stubs: Channel, regions: Regions, case: str) -> None:
    bad = BAD_REGIONS[case]
    if case == "another-users-file" and os.geteuid() != 0:
        pytest.skip("making a file another user owns needs root")
    name, size = bad.make(regions)
    expect_error(lambda: Holder(stubs.shm, name, size), bad.code, bad.reason, bad.field)
    assert name not in registered(stubs.shm)


def test_a_region_is_registered_while_its_call_is_open(stubs: Channel, regions: Regions) -> None:
    name = regions.make(4096)
    holder = Holder(stubs.shm, name)
    assert (holder.response.region.name, holder.response.region.byte_size) == (name, 4096)
    part = Holder(stubs.shm, regions.make(4096), 100)
    assert part.response.region.byte_size == 100
    assert registered(stubs.shm)[name] == 4096
    stubs.shm.UnregisterSharedMemory(shared_memory_pb2.UnregisterSharedMemoryRequest(name=name), timeout=30)
    assert holder.wait_ended() == grpc.StatusCode.OK  # unregistering ends the holding call OK
    assert name not in registered(stubs.shm)
    # Idempotent: unregistering again, or a name never registered, is fine.
    stubs.shm.UnregisterSharedMemory(shared_memory_pb2.UnregisterSharedMemoryRequest(name=name), timeout=30)
    part.call.cancel()


def test_unregister_refuses_names_outside_the_prefix(stubs: Channel) -> None:
    expect_error(
        lambda: stubs.shm.UnregisterSharedMemory(
            shared_memory_pb2.UnregisterSharedMemoryRequest(name="/elsewhere-1"), timeout=30
        ),
        DENIED,
        "SHARED_MEMORY_NAME_NOT_ALLOWED",
        "name",
    )


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_a_client_that_goes_away_loses_its_region(
    shm_server: RunningServer, stubs: Channel, regions: Regions, how: str
) -> None:
    name = regions.make(4096)
    other = connect(shm_server.address)
    holder = Holder(other.shm, name)
    assert name in registered(stubs.shm)
    if how == "cancel":
        holder.call.cancel()
    else:
        other.channel.close()  # the connection drops with the call still open
    assert wait_for(lambda: name not in registered(stubs.shm), timeout_s=30)
    expect_error(lambda: infer(stubs.inference, shm_image(name)), grpc.StatusCode.NOT_FOUND,
                 "SHARED_MEMORY_REGION_NOT_FOUND")  # fmt: skip
    other.channel.close()


def test_registering_a_name_again_replaces_the_registration(stubs: Channel, regions: Regions) -> None:
    name = regions.make(4096)
    first = Holder(stubs.shm, name)
    second = Holder(stubs.shm, name, 1024)
    assert first.wait_ended() == grpc.StatusCode.OK
    assert registered(stubs.shm)[name] == 1024
    second.call.cancel()


def test_too_many_regions_is_resource_exhausted(stubs: Channel, regions: Regions) -> None:
    holders = []
    while len(registered(stubs.shm)) < MAX_REGIONS:
        holders.append(Holder(stubs.shm, regions.make(64)))
    expect_error(lambda: Holder(stubs.shm, regions.make(64)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                 "TOO_MANY_SHARED_MEMORY_REGIONS")  # fmt: skip
    for holder in holders:
        holder.call.cancel()
    assert wait_for(lambda: not registered(stubs.shm), timeout_s=30)


def test_stopping_the_server_ends_the_holding_calls(base_config: ServerConfig, regions: Regions) -> None:
    running = start_server(replace(base_config, shared_memory=True, preload_default_model=False))
    channel = connect(running.address)
    holder = Holder(channel.shm, regions.make(64))
    ended: list[grpc.StatusCode] = []
    waiter = threading.Thread(target=lambda: ended.append(holder.wait_ended()))
    waiter.start()
    running.server.stop(grace_s=60.0)  # a holding call left open would keep this waiting for 60 s
    waiter.join(timeout=60)
    channel.channel.close()
    assert ended == [grpc.StatusCode.OK]


# ------------------------------------------------------------------------------------- inference


@pytest.fixture
def photos(stubs: Channel, regions: Regions) -> Iterator[tuple[str, list[npt.NDArray[np.uint8]], list[int]]]:
    """A registered region holding coffee.png then motorcycle_left.png (BGR): its name, the arrays, the
    offsets."""
    arrays = [bgr("coffee.png"), bgr("motorcycle_left.png")]
    offsets = [0, arrays[0].nbytes + 13]  # the second one deliberately unaligned
    name = regions.make(offsets[1] + arrays[1].nbytes + 100)
    fd = os.open(SHM / name[1:], os.O_RDWR)
    with mmap.mmap(fd, 0) as memory:
        for array, offset in zip(arrays, offsets, strict=True):
            memory[offset : offset + array.nbytes] = array.tobytes()
    os.close(fd)
    holder = Holder(stubs.shm, name)
    yield name, arrays, offsets
    holder.call.cancel()


def as_shm(name: str, array: npt.NDArray[np.uint8], offset: int) -> types_pb2.Image:
    return shm_image(name, offset, array.shape[1], array.shape[0])


def as_raw(array: npt.NDArray[np.uint8]) -> types_pb2.Image:
    return types_pb2.Image(
        raw=types_pb2.RawImage(
            data=array.tobytes(), width=array.shape[1], height=array.shape[0],
            channel_order=types_pb2.CHANNEL_ORDER_BGR,
        )
    )  # fmt: skip


def test_detections_from_shared_memory_equal_those_from_the_same_raw_pixels(
    stubs: Channel, photos: tuple[str, list[npt.NDArray[np.uint8]], list[int]]
) -> None:
    name, arrays, offsets = photos
    from_shm = infer(stubs.inference, *(as_shm(name, a, o) for a, o in zip(arrays, offsets, strict=True)))
    from_raw = infer(stubs.inference, *(as_raw(a) for a in arrays))
    assert_same_detections(from_shm, from_raw)
    assert "cup" in [d.class_name for d in from_shm.predictions[0].detections]
    assert "motorbike" in [d.class_name for d in from_shm.predictions[1].detections]
    size = from_shm.predictions[1].image_size
    assert (size.width, size.height) == (arrays[1].shape[1], arrays[1].shape[0])


def test_many_concurrent_requests_read_one_region(
    stubs: Channel, photos: tuple[str, list[npt.NDArray[np.uint8]], list[int]]
) -> None:
    name, arrays, offsets = photos
    expected = [infer(stubs.inference, as_shm(name, a, o)) for a, o in zip(arrays, offsets, strict=True)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda i: (i % 2, infer(stubs.inference, as_shm(name, arrays[i % 2], offsets[i % 2]))),
                     range(48))
        )  # fmt: skip
    for which, answer in answers:
        assert_same_detections(answer, expected[which])


@dataclass(frozen=True)
class BadImage:
    image: Callable[[str], types_pb2.Image]  # the registered region's name -> the image
    code: grpc.StatusCode
    reason: str
    field: str


SMALL = 4 * 4 * 3  # the bytes of the region in the image cases
BAD_IMAGES = {
    "unknown-region": BadImage(lambda n: shm_image(n + "-unknown"), grpc.StatusCode.NOT_FOUND,
                               "SHARED_MEMORY_REGION_NOT_FOUND", "images[0].shared_memory.region"),
    "offset-beyond-the-region": BadImage(lambda n: shm_image(n, offset=SMALL), INVALID,
                                         "SHARED_MEMORY_OUT_OF_BOUNDS", "images[0].shared_memory.offset"),
    "image-past-the-end": BadImage(lambda n: shm_image(n, offset=1), INVALID, "SHARED_MEMORY_OUT_OF_BOUNDS",
                                   "images[0].shared_memory.offset"),
    "too-wide": BadImage(lambda n: shm_image(n, width=5), INVALID, "SHARED_MEMORY_OUT_OF_BOUNDS",
                         "images[0].shared_memory.offset"),
    "offset-near-2**64": BadImage(lambda n: shm_image(n, offset=2**64 - 1), INVALID,
                                  "SHARED_MEMORY_OUT_OF_BOUNDS", "images[0].shared_memory.offset"),
    "zero-width": BadImage(lambda n: shm_image(n, width=0), INVALID, "INVALID_DIMENSIONS",
                           "images[0].shared_memory.width"),
    "no-channel-order": BadImage(lambda n: shm_image(n, order=types_pb2.CHANNEL_ORDER_UNSPECIFIED), INVALID,
                                 "INVALID_CHANNEL_ORDER", "images[0].shared_memory.channel_order"),
    "too-many-pixels": BadImage(lambda n: shm_image(n, width=100_000, height=100_000), INVALID,
                                "IMAGE_TOO_LARGE", "images[0].shared_memory"),
    "malformed-name": BadImage(lambda n: shm_image("no-slash"), grpc.StatusCode.NOT_FOUND,
                               "SHARED_MEMORY_REGION_NOT_FOUND", "images[0].shared_memory.region"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_shared_memory_image_is_refused(stubs: Channel, regions: Regions, case: str) -> None:
    bad = BAD_IMAGES[case]
    name = regions.make(SMALL)
    holder = Holder(stubs.shm, name)
    expect_error(lambda: infer(stubs.inference, bad.image(name)), bad.code, bad.reason, bad.field)
    holder.call.cancel()


def _truncate(path: Path) -> None:
    os.truncate(path, 10)


def _replace(path: Path) -> None:
    path.unlink()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.ftruncate(fd, 3 * mmap.PAGESIZE)
    os.close(fd)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (Path.unlink, "SHARED_MEMORY_REGION_GONE"),
        (_replace, "SHARED_MEMORY_REGION_GONE"),
        # A read past the end of a shrunk mapping would be SIGBUS: the server must refuse it and live on.
        (_truncate, "SHARED_MEMORY_REGION_TRUNCATED"),
    ],
    ids=["unlinked", "replaced", "truncated"],
)
def test_a_region_changed_after_registration_is_refused_and_the_server_lives(
    stubs: Channel, regions: Regions, change: Callable[[Path], None], reason: str
) -> None:
    # The image lies on the third page: once the file shrinks to 10 bytes, its page is past the end.
    name = regions.make(3 * mmap.PAGESIZE)
    holder = Holder(stubs.shm, name)
    infer(stubs.inference, shm_image(name, offset=2 * mmap.PAGESIZE))  # fine before the change
    change(SHM / name[1:])
    expect_error(lambda: infer(stubs.inference, shm_image(name, offset=2 * mmap.PAGESIZE)), INVALID, reason,
                 "images[0].shared_memory.region")  # fmt: skip
    assert infer(stubs.inference, as_raw(bgr("coffee.png"))).predictions  # still serving
    holder.call.cancel()
