"""The frame images a stream may return with its results: JPEG, raw or with the predictions drawn on it."""

from __future__ import annotations

import logging

import cv2
from visionrpc.common.annotate import annotate

from ..domain import ImageArray, Prediction
from .types import FrameImage, StreamOptions

__all__ = ["frame_jpeg"]

logger = logging.getLogger(__name__)


def frame_jpeg(pixels: ImageArray, prediction: Prediction, options: StreamOptions) -> bytes:
    """The frame as the stream's options ask: b"" (no image), JPEG, or annotated JPEG."""
    if options.frame_image is FrameImage.NONE:
        return b""
    if options.frame_image is FrameImage.ANNOTATED:
        pixels = annotate(pixels, prediction)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    if not ok:
        logger.warning("JPEG encoding failed for a %s frame", pixels.shape)
        return b""
    return bytes(encoded.tobytes())
