"""Shared-memory inputs for the served side: the same images, written once into a POSIX shared-memory region
registered through the SDK (`Client.create_shared_memory`), sent as references instead of pixels.

The requests are serialised once, like the raw ones (`unary.raw_requests`), so the load generator and the
paired measures send them unchanged; only the pixels no longer travel through HTTP/2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
from visionrpc.client import Client
from visionrpc.v1 import inference_pb2, types_pb2

__all__ = ["shared_memory_requests"]


@contextmanager
def shared_memory_requests(
    address: str, images: Sequence[npt.NDArray[np.uint8]], model: str = ""
) -> Iterator[list[bytes]]:
    """One serialised InferRequest per image (BGR) referencing its pixels in a region registered with the
    server at `address` (which needs `--shared-memory`); the region is removed on exit."""
    sizes = [int(image.nbytes) for image in images]
    with Client(address) as client, client.create_shared_memory(sum(sizes)) as region:
        requests, offset = [], 0
        for image, size in zip(images, sizes, strict=True):
            ref = region.write(np.ascontiguousarray(image), offset=offset)
            offset += size
            requests.append(
                inference_pb2.InferRequest(
                    model_id=model,
                    images=[
                        types_pb2.Image(
                            shared_memory=types_pb2.SharedMemoryImage(
                                region=ref.region,
                                offset=ref.offset,
                                width=ref.width,
                                height=ref.height,
                                channel_order=types_pb2.CHANNEL_ORDER_BGR,
                            )
                        )
                    ],
                ).SerializeToString()
            )
        yield requests
