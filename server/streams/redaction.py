"""Face redaction for streams: faces found by the built-in `centerface` model, blurred or pixelated.

A pipeline whose StreamOptions.face_redaction is BLUR or PIXELATE holds one `Redactor` (made by the stream
manager with a lease of `centerface`) and runs it once per frame, after inference and before any pixels leave:
the frame JPEG (raw or annotated) and FrameResult.pixels (recorded video). The predictions come from the
unredacted frame. Choices (docs/privacy.md says why):

- confidence 0.2, not centerface's 0.5: a face missed is a privacy failure, a blurred patch of wall is not;
- each face box grows by 30% of its width and height on every side (`FACE_MARGIN`): centerface's box runs
  from brow to chin, while hair, ears and jaw line identify people too, and a box one frame late on a moving
  head still covers the face;
- blur: a Gaussian whose sigma is a quarter of the grown box's larger side, so features go at any size;
- pixelate: about 8 blocks across the grown box (the face itself ~5), each the mean of its pixels;
- fail closed: a frame whose faces cannot be found (queue full for long, engine failure) is redacted whole.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import cast

import cv2

from ..domain import BoundingBox, ChannelOrder, ImageArray, InferOptions, Prediction
from ..errors import ResourceExhaustedError, VisionRpcError
from ..models.manager import ModelLease, ModelManager
from ..models.repository import ModelId
from ..predictor import InputImage, Predictor
from ..processing import DecodeOptions
from ..scheduler import Origin
from .types import FaceRedaction

__all__ = [
    "FACE_CONFIDENCE",
    "FACE_MARGIN",
    "FACE_MODEL",
    "Redactor",
    "check_face_model",
    "grow_box",
    "redact_faces",
    "redact_region",
    "redactor_for",
]

logger = logging.getLogger(__name__)

FACE_MODEL = "centerface"
FACE_CONFIDENCE = 0.2
FACE_MARGIN = 0.3  # of the box's width (height) added left and right (above and below)
_BLUR_SIGMA_SHARE = 0.25  # sigma as a share of the grown box's larger side
_PIXELATE_BLOCKS = 8  # blocks across the grown box's larger side
# How long a frame waits for the face model's queue before it is redacted whole instead.
_QUEUE_PATIENCE_S = 2.0


def grow_box(
    box: BoundingBox, width: int, height: int, margin: float = FACE_MARGIN
) -> tuple[int, int, int, int]:
    """The box grown by `margin` of its size on every side, in whole pixels, clipped to the image:
    (x0, y0, x1, y1) with x1, y1 exclusive; empty (x0 == x1 or y0 == y1) when nothing is left inside."""
    dx, dy = (box.x_max - box.x_min) * margin, (box.y_max - box.y_min) * margin
    x0 = min(max(math.floor(box.x_min - dx), 0), width)
    y0 = min(max(math.floor(box.y_min - dy), 0), height)
    x1 = min(max(math.ceil(box.x_max + dx), x0), width)
    y1 = min(max(math.ceil(box.y_max + dy), y0), height)
    return x0, y0, x1, y1


def redact_region(region: ImageArray, mode: FaceRedaction) -> ImageArray:
    """The region (HxWxC uint8) blurred or pixelated, sized to the region itself; NONE returns it as is."""
    height, width = region.shape[:2]
    if mode is FaceRedaction.NONE or height == 0 or width == 0:
        return region
    side = max(height, width)
    if mode is FaceRedaction.BLUR:
        sigma = max(1.0, side * _BLUR_SIGMA_SHARE)
        # Replicated borders: reflecting would pull the face's own pixels back in at the region's edges.
        blurred = cv2.GaussianBlur(
            region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE
        )
        return cast("ImageArray", blurred)
    block = max(1, math.ceil(side / _PIXELATE_BLOCKS))
    small = cv2.resize(
        region, (max(1, round(width / block)), max(1, round(height / block))), interpolation=cv2.INTER_AREA
    )
    return cast("ImageArray", cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST))


def redact_faces(
    pixels: ImageArray,
    boxes: Sequence[BoundingBox],
    mode: FaceRedaction,
    margin: float = FACE_MARGIN,
) -> ImageArray:
    """A copy of `pixels` with every box (grown by `margin`) blurred or pixelated; `pixels` itself when there
    is nothing to hide. The input is never changed (frames are shared values).

    Example:
        hidden = redact_faces(frame, [d.box for d in faces.detections], FaceRedaction.BLUR)
    """
    if mode is FaceRedaction.NONE or not boxes:
        return pixels
    height, width = pixels.shape[:2]
    regions = [grow_box(box, width, height, margin) for box in boxes]
    regions = [(x0, y0, x1, y1) for x0, y0, x1, y1 in regions if x1 > x0 and y1 > y0]
    if not regions:
        return pixels
    out = pixels.copy()
    # Each region is redacted from the original pixels, so overlapping faces never blur an already blurred
    # neighbour into a weaker result; where they overlap, the later one wins and is just as strong.
    for x0, y0, x1, y1 in regions:
        out[y0:y1, x0:x1] = redact_region(pixels[y0:y1, x0:x1], mode)
    return out


class Redactor:
    """Finds faces with the face model and hides them; one per pipeline, used by its inference thread.

    The model is leased at the first frame that needs redacting, so a stream that returns no pixels never
    runs (nor holds) it; the stream manager checks that it loads when the stream is asked for. `release()`
    (idempotent) gives the lease back when the pipeline stops.

    Example:
        redactor = Redactor.for_models(models, FaceRedaction.BLUR)
        shown = redactor.redact([frame.pixels for frame in frames])
        redactor.release()
    """

    def __init__(
        self,
        lease_model: Callable[[], ModelLease],
        mode: FaceRedaction,
        *,
        confidence: float = FACE_CONFIDENCE,
        margin: float = FACE_MARGIN,
    ) -> None:
        if mode is FaceRedaction.NONE:
            raise ValueError("expected BLUR or PIXELATE, got NONE")
        self.mode = mode
        self.margin = margin
        self._lease_model = lease_model
        self._confidence = confidence
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._lease: ModelLease | None = None
        self._options: DecodeOptions | None = None
        self._frames = 0
        self._faces = 0
        self._whole_frames = 0

    @classmethod
    def for_models(cls, models: ModelManager, mode: FaceRedaction) -> Redactor:
        """A redactor on the built-in face model of `models`."""
        return cls(functools.partial(models.lease, ModelId.parse(FACE_MODEL)), mode)

    @property
    def frames_redacted(self) -> int:
        """Frames that went through the redactor (with or without faces)."""
        with self._lock:
            return self._frames

    @property
    def faces_hidden(self) -> int:
        with self._lock:
            return self._faces

    @property
    def whole_frames_hidden(self) -> int:
        """Frames redacted whole because their faces could not be looked for (fail closed)."""
        with self._lock:
            return self._whole_frames

    def redact(self, frames: Sequence[ImageArray]) -> list[ImageArray]:
        """The frames (HxWx3 BGR) with their faces hidden, in order; one face-model submission for all.

        Raises:
            NotFoundError / FailedPreconditionError: the face model cannot be loaded (first call only).
        """
        if not frames:
            return []
        predictions = self._find_faces(frames)
        if predictions is None:
            shown = [redact_region(pixels, self.mode) for pixels in frames]
            faces = 0
        else:
            shown = [
                redact_faces(pixels, [d.box for d in prediction.detections], self.mode, self.margin)
                for pixels, prediction in zip(frames, predictions, strict=True)
            ]
            faces = sum(len(prediction.detections) for prediction in predictions)
        with self._lock:
            self._frames += len(frames)
            self._faces += faces
            self._whole_frames += 0 if predictions is not None else len(frames)
        return shown

    def release(self) -> None:
        """Gives the face model back; a redact() still waiting for its queue gives up (and fails closed)."""
        self._released.set()
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _leased(self) -> tuple[Predictor, DecodeOptions] | None:
        """The face model and its options, leased on first use; None once released."""
        with self._lock:
            if self._released.is_set():
                return None
            if self._lease is None:
                lease = self._lease_model()
                try:
                    options = lease.predictor.resolve_options(
                        InferOptions(confidence_threshold=self._confidence)
                    )
                except BaseException:
                    lease.release()
                    raise
                self._lease, self._options = lease, options
            assert self._options is not None
            return self._lease.predictor, self._options

    def _find_faces(self, frames: Sequence[ImageArray]) -> list[Prediction] | None:
        """The face model's predictions, or None when they cannot be had (then everything is hidden)."""
        leased = self._leased()
        if leased is None:
            return None
        predictor, options = leased
        images = [InputImage(pixels, ChannelOrder.BGR) for pixels in frames]
        waited = 0.0
        while not self._released.is_set():
            try:
                return predictor.infer(images, options, origin=Origin.STREAM).predictions
            except ResourceExhaustedError as exc:
                # Shared with unary requests: a burst may fill the queue for a moment. Waiting keeps the
                # pipeline's pace honest; giving up after a while keeps it live, and the frame still hidden.
                if waited >= _QUEUE_PATIENCE_S:
                    logger.warning("face model queue full for %.1f s: hiding whole frames", waited)
                    return None
                delay = max(0.01, min(exc.retry_after_s or 0.05, _QUEUE_PATIENCE_S - waited))
                waited += delay
                self._released.wait(delay)
            except VisionRpcError as exc:
                logger.warning("face model failed (%s): hiding whole frames", exc.message)
                return None
        return None


def redactor_for(models: ModelManager, mode: FaceRedaction) -> Redactor | None:
    """The redactor a pipeline with this face_redaction needs; None for NONE. Cheap: leases nothing yet."""
    return None if mode is FaceRedaction.NONE else Redactor.for_models(models, mode)


def check_face_model(models: ModelManager, mode: FaceRedaction) -> None:
    """Loads the face model when `mode` needs it: a stream asking for redaction is refused at once
    (NotFoundError, FailedPreconditionError) rather than ended at its first frame when it cannot load."""
    if mode is not FaceRedaction.NONE:
        models.lease(ModelId.parse(FACE_MODEL)).release()
