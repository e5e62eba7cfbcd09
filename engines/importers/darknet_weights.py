"""Reading Darknet `.weights` files, with an exact account of every value.

Layout: int32 major, minor, revision; then `seen` (images seen in training) as int64 when
major * 10 + minor >= 2 (and both are < 1000, Darknet's guard against byte-swapped files), else int32; then
little-endian float32 values, layer by layer in cfg order. The file has no per-layer framing, so the only
way to know a cfg and a weights file belong together is to count: the cfg must ask for exactly the values the
file holds. `WeightCursor` counts every request and `check_exhausted` turns any difference into an error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DarknetWeightsError", "WeightCursor", "WeightsHeader", "open_weights", "read_weights_header"]

Floats = npt.NDArray[np.float32]


class DarknetWeightsError(ValueError):
    """The weights file does not match the cfg (too short, too long, or not float32 after the header)."""


@dataclass(frozen=True, slots=True)
class WeightsHeader:
    """The header Darknet writes before the weights; `size` is its length in bytes (16 or 20)."""

    major: int
    minor: int
    revision: int
    seen: int
    size: int


def read_weights_header(data: bytes) -> WeightsHeader:
    """Reads major, minor, revision and `seen` (int64 from format 0.2 on, int32 before, as Darknet does)."""
    if len(data) < 16:
        raise DarknetWeightsError(f"expected a Darknet weights file of at least 16 bytes, got {len(data)}")
    major, minor, revision = struct.unpack_from("<3i", data, 0)
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    if wide and len(data) < 20:
        raise DarknetWeightsError(
            f"weights format {major}.{minor} needs a 20-byte header, got {len(data)} bytes"
        )
    (seen,) = struct.unpack_from("<q" if wide else "<i", data, 12)
    return WeightsHeader(major, minor, revision, seen, 20 if wide else 16)


class WeightCursor:
    """Hands out consecutive float32 runs and counts every request, so a mismatch is reported exactly."""

    def __init__(self, values: Floats) -> None:
        self._values = values
        self.available = int(values.size)
        self.requested = 0

    def take(self, count: int) -> Floats:
        start, self.requested = self.requested, self.requested + count
        if self.requested > self.available:
            # Keep walking the cfg (with zeros) so the final error can state the cfg's full need.
            return np.zeros(count, dtype=np.float32)
        return self._values[start : self.requested].astype(np.float32)

    def check_exhausted(self, header: WeightsHeader) -> None:
        """Raises unless the cfg asked for exactly the values the file holds."""
        if self.requested == self.available:
            return
        delta = self.available - self.requested
        problem = f"{delta:,} left over" if delta > 0 else f"{-delta:,} missing"
        raise DarknetWeightsError(
            f"the cfg needs {self.requested:,} float32 weights but the file has {self.available:,} "
            f"after its {header.size}-byte header ({problem}); cfg and weights do not belong together"
        )


def open_weights(data: bytes) -> tuple[WeightsHeader, WeightCursor]:
    """Parses the header and returns a cursor over the float32 values that follow it."""
    header = read_weights_header(data)
    body = len(data) - header.size
    if body % 4:
        raise DarknetWeightsError(
            f"{body} bytes follow the {header.size}-byte header, not a whole number of float32 values"
        )
    return header, WeightCursor(np.frombuffer(data, dtype="<f4", offset=header.size))
