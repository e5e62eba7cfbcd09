"""The SDK's shared-memory regions against real servers (one with shared memory on, the session's without):
real regions in /dev/shm, real models, the holding call kept and renewed by the SDK's thread."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest
from conftest import RunningServer, start_server, wait_for
from media import media
from visionrpc.client import (
    ChannelOrder,
    Client,
    InferResult,
    PermissionDeniedError,
    SharedMemoryImage,
    SharedMemoryRegion,
)
from visionrpc.server.config import ServerConfig
from visionrpc.v1 import shared_memory_pb2, shared_memory_pb2_grpc

SHM = Path("/dev/shm")
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def shm_server(server: RunningServer, base_config: ServerConfig) -> Iterator[RunningServer]:
    """Shared memory on (after the session server, which installed the model)."""
    running = start_server(dataclasses.replace(base_config, shared_memory=True))
    running.server.wait_until_ready(timeout_s=300)
    yield running
    running.server.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def client(shm_server: RunningServer) -> Iterator[Client]:
    with Client(shm_server.address, timeout_s=120) as c:
        yield c


def photo(name: str) -> npt.NDArray[np.uint8]:
    pixels = cv2.imread(str(media(name)), cv2.IMREAD_COLOR)
    assert pixels is not None
    return np.asarray(pixels, dtype=np.uint8)


def same_detections(a: InferResult, b: InferResult) -> bool:
    """Same classes, boxes within 0.01 px, confidences within 1e-4, image by image."""
    for pa, pb in zip(a.predictions, b.predictions, strict=True):
        if [d.class_name for d in pa.detections] != [d.class_name for d in pb.detections]:
            return False
        for da, db in zip(pa.detections, pb.detections, strict=True):
            if not np.allclose(da.box.as_tuple(), db.box.as_tuple(), atol=0.01):
                return False
            if abs(da.confidence - db.confidence) > 1e-4:
                return False
    return True


def test_images_written_to_a_region_infer_like_the_same_arrays(client: Client) -> None:
    coffee, motorbike = photo("coffee.png"), photo("motorcycle_left.png")
    with client.create_shared_memory(8 * MIB) as region:
        first = region.write(coffee)
        second = region.write(motorbike, offset=first.byte_size)
        assert (second.width, second.height, second.channel_order) == (
            motorbike.shape[1], motorbike.shape[0], ChannelOrder.BGR,
        )  # fmt: skip
        from_shm = client.infer([first, second])
        assert same_detections(from_shm, client.infer([coffee, motorbike]))
        assert "cup" in [d.class_name for d in from_shm.predictions[0].detections]
        # One reference alone is one image, as an array is.
        assert len(client.infer(second).predictions) == 1


@pytest.mark.parametrize(
    ("layout", "channel_order"),
    [("rgb", "rgb"), ("gray", "bgr"), ("bgra", "bgr"), ("transposed-view", "bgr")],
)
def test_write_takes_any_image_array_the_sdk_takes(client: Client, layout: str, channel_order: str) -> None:
    bgr = photo("coffee.png")
    arrays: dict[str, npt.NDArray[np.uint8]] = {
        "rgb": np.ascontiguousarray(bgr[:, :, ::-1]),
        "gray": np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), dtype=np.uint8),
        "bgra": np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), dtype=np.uint8),
        "transposed-view": bgr.transpose(1, 0, 2),
    }
    array = arrays[layout]
    with client.create_shared_memory(4 * MIB) as region:
        image = region.write(array, channel_order=channel_order)  # type: ignore[arg-type]
        assert np.array_equal(region.array(image).reshape(array.shape), array)
        assert same_detections(client.infer(image), client.infer(array, channel_order=channel_order))  # type: ignore[arg-type]


def test_pixels_can_be_decoded_straight_into_the_region(client: Client) -> None:
    coffee = photo("coffee.png")
    with client.create_shared_memory(coffee.nbytes) as region:
        image = region.image(coffee.shape[1], coffee.shape[0], "bgr")
        view = region.array(image)
        view[...] = coffee  # e.g. a video decoder writing its frame here
        del view
        assert same_detections(client.infer(image), client.infer(coffee))


def test_a_region_is_listed_while_open_and_gone_when_closed(client: Client) -> None:
    region = client.create_shared_memory(4096)
    assert region.registered
    assert client.list_shared_memory()[region.name] == 4096
    path = SHM / region.name[1:]
    assert path.stat().st_mode & 0o777 == 0o600
    region.close()
    assert region.name not in client.list_shared_memory()  # unregistered before close returns
    assert not path.exists()
    region.close()  # idempotent
    with pytest.raises(RuntimeError):
        region.write(np.zeros((4, 4, 3), np.uint8))


def test_closing_the_client_first_leaves_the_region_to_close_cleanly(shm_server: RunningServer) -> None:
    c = Client(shm_server.address, timeout_s=60)
    region = c.create_shared_memory(4096)
    c.close()  # the holding call breaks; the thread finds the channel closed and stops
    with pytest.raises(RuntimeError):
        c.create_shared_memory(4096)
    region.close()
    assert not (SHM / region.name[1:]).exists()
    with Client(shm_server.address, timeout_s=60) as other:
        assert wait_for(lambda: region.name not in other.list_shared_memory(), timeout_s=30)


def test_the_region_is_registered_again_when_the_server_drops_it(
    client: Client, shm_server: RunningServer
) -> None:
    with client.create_shared_memory(4096) as region, grpc.insecure_channel(shm_server.address) as channel:
        # Another client unregisters it: the holding call ends and the SDK's thread registers it again.
        shared_memory_pb2_grpc.SharedMemoryServiceStub(channel).UnregisterSharedMemory(
            shared_memory_pb2.UnregisterSharedMemoryRequest(name=region.name), timeout=30
        )
        assert wait_for(lambda: region.name in client.list_shared_memory(), timeout_s=30)
        assert wait_for(lambda: region.registered, timeout_s=30)


def test_requests_never_miss_a_region_while_connections_are_recycled(
    server: RunningServer, base_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The server cuts the holding call at each connection's max age; the SDK registers the region again on
    a new connection, and the server's linger keeps the old registration meanwhile: no request in between
    finds the region unknown."""
    caplog.set_level(logging.INFO, logger="visionrpc.server.shared_memory")
    config = dataclasses.replace(
        base_config, shared_memory=True, max_connection_age_s=1.0, max_connection_age_grace_s=0.2
    )
    running = start_server(config)
    try:
        running.server.wait_until_ready(timeout_s=300)
        coffee = photo("coffee.png")
        with Client(running.address, timeout_s=60) as c, c.create_shared_memory(coffee.nbytes) as region:
            image = region.write(coffee)

            def registrations() -> int:
                text = f"registered shared-memory region {region.name} "
                return sum(r.getMessage().startswith(text) for r in caplog.records)

            deadline = time.monotonic() + 120  # a bound on the loop, not a timing under test
            while registrations() < 3:  # the first and two after cuts
                assert c.infer(image).predictions[0].detections
                assert time.monotonic() < deadline, "the holding call was not cut and renewed twice"
    finally:
        running.server.stop(grace_s=0.5)


def test_many_threads_infer_from_their_own_slots_of_one_region(client: Client) -> None:
    """The benchmark's pattern: one region, one slot per concurrent caller."""
    photos = [photo("coffee.png"), photo("motorcycle_left.png")]
    slot = max(p.nbytes for p in photos)
    expected = [client.infer(p) for p in photos]
    with client.create_shared_memory(16 * slot) as region:

        def one(index: int) -> bool:
            image = region.write(photos[index % 2], offset=(index % 16) * slot)
            return same_detections(client.infer(image), expected[index % 2])

        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(one, range(16)))


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda r: r.write(np.zeros((4, 4, 3), np.float32)), ValueError),  # type: ignore[arg-type]
        (lambda r: r.write(np.zeros((4, 4, 2), np.uint8)), ValueError),
        (lambda r: r.write(np.zeros((64, 64, 3), np.uint8)), ValueError),  # 12 KiB into 4 KiB
        (lambda r: r.write(np.zeros((4, 4, 3), np.uint8), offset=4090), ValueError),
        (lambda r: r.image(4, 4, "bgr", offset=-1), ValueError),
        (lambda r: r.image(0, 4), ValueError),
        (lambda r: r.array(SharedMemoryImage("/visionrpc-other", 0, 4, 4)), ValueError),
    ],
    ids=[
        "float-array",
        "two-channels",
        "too-big",
        "past-the-end",
        "negative-offset",
        "zero-width",
        "other-region",
    ],
)
def test_misuse_of_a_region_is_refused_before_any_call(
    client: Client, make: Callable[[SharedMemoryRegion], Any], error: type[Exception]
) -> None:
    with client.create_shared_memory(4096) as region, pytest.raises(error):
        make(region)


@pytest.mark.parametrize(
    ("which", "prefix", "reason"),
    [
        ("session", "/visionrpc-", "SHARED_MEMORY_DISABLED"),
        ("shm", "/elsewhere-", "SHARED_MEMORY_NAME_NOT_ALLOWED"),
    ],
    ids=["server-without-shared-memory", "prefix-not-the-servers"],
)
def test_a_refused_region_raises_and_leaves_nothing_behind(
    request: pytest.FixtureRequest, which: str, prefix: str, reason: str
) -> None:
    running: RunningServer = request.getfixturevalue("server" if which == "session" else "shm_server")
    before = {p.name for p in SHM.iterdir()}
    with Client(running.address, timeout_s=60) as c, pytest.raises(PermissionDeniedError) as info:
        c.create_shared_memory(4096, prefix=prefix)
    assert info.value.reason == reason
    assert {p.name for p in SHM.iterdir()} <= before  # the region the SDK made is unlinked again
