"""Memory budgets for decoded pixels: one per request, one for the whole server.

An encoded image is small on the wire and large in memory: a 105 KB single-colour 6000x6000 PNG decodes to
108 MB of BGR pixels, so `--max-image-pixels` (per image) alone lets one 16 MiB request hold gigabytes. Both
budgets here are counted in pixels read from the images' headers (`imaging.read_image_header`) *before*
anything is decoded:

- a request whose images add up to more than `max_request_pixels` can never be served: INVALID_ARGUMENT,
  reason REQUEST_TOO_LARGE (retrying cannot help);
- the server holds at most `max_inflight_pixels` decoded pixels across all calls at once; a call that would
  exceed it waits for nobody and is answered RESOURCE_EXHAUSTED, reason PIXEL_BUDGET_EXHAUSTED, with
  RetryInfo (the same call fits once others finish).

Raw images count too: their pixels are already in the request (zero-copy) but pre-processing reads and copies
them like decoded ones. The budget is released when the call ends.

Example:
    >>> budget = PixelBudget(max_request_pixels=80_000_000, max_inflight_pixels=320_000_000)
    >>> reservation = budget.reserve(36_000_000)
    >>> budget.in_use
    36000000
    >>> reservation.release()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import InvalidArgumentError, ResourceExhaustedError

__all__ = ["PixelBudget", "Reservation"]

logger = logging.getLogger(__name__)

# Clients that honour RetryInfo come back after this long; a big call usually takes a few hundred ms.
_RETRY_AFTER_S = 0.5


class Reservation:
    """Pixels held for one call; `release()` is idempotent and thread-safe (a call may end on any thread)."""

    def __init__(self, pixels: int, give_back: Callable[[int], None]) -> None:
        self.pixels = pixels
        self._give_back = give_back
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._give_back(self.pixels)


class PixelBudget:
    """Thread-safe counter of decoded pixels in flight, bounded per call and per server."""

    def __init__(self, *, max_request_pixels: int, max_inflight_pixels: int) -> None:
        if max_request_pixels < 1 or max_inflight_pixels < max_request_pixels:
            raise ValueError(
                f"expected 1 <= max_request_pixels <= max_inflight_pixels, got {max_request_pixels} and "
                f"{max_inflight_pixels}"
            )
        self.max_request_pixels = max_request_pixels
        self.max_inflight_pixels = max_inflight_pixels
        self._in_use = 0
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def reserve(self, pixels: int) -> Reservation:
        """Holds `pixels` for one call or refuses it.

        Raises:
            InvalidArgumentError: REQUEST_TOO_LARGE, more than one call may ever hold (field "images").
            ResourceExhaustedError: PIXEL_BUDGET_EXHAUSTED, the server holds too many pixels right now.
        """
        if pixels > self.max_request_pixels:
            error = InvalidArgumentError.for_field(
                "images",
                f"the request's images add up to {pixels} pixels, over the limit of "
                f"{self.max_request_pixels} pixels per request; send fewer or smaller images per call",
                reason="REQUEST_TOO_LARGE",
            )
            error.metadata.update(pixels=str(pixels), max_request_pixels=str(self.max_request_pixels))
            raise error
        with self._lock:
            if self._in_use + pixels > self.max_inflight_pixels:
                in_use = self._in_use
            else:
                self._in_use += pixels
                return Reservation(pixels, self._give_back)
        logger.debug("pixel budget exhausted: %d in use, %d asked", in_use, pixels)
        raise ResourceExhaustedError(
            f"the server is decoding {in_use} pixels for other calls; {pixels} more would pass its limit of "
            f"{self.max_inflight_pixels}: retry shortly",
            reason="PIXEL_BUDGET_EXHAUSTED",
            retry_after_s=_RETRY_AFTER_S,
            metadata={"pixels": str(pixels), "max_inflight_pixels": str(self.max_inflight_pixels)},
        )

    def _give_back(self, pixels: int) -> None:
        with self._lock:
            self._in_use -= pixels
