"""Turns a decoded image into the float tensor a model expects, and remembers how to map results back.

This runs once per image on the request path, so it is written around the few passes over memory it cannot
avoid:

1. one `cv2.resize` (the manifest's interpolation, INTER_LINEAR by default) on the 8-bit image, before any
   conversion, so that the later passes touch only model-input-sized data (for centre-crop, the input-sized
   window of the resized image: a view, no copy);
2. one `cv2.split` into planes (skipped for grey images);
3. one fused multiply-add per model channel (`cv2.addWeighted` with a zero second weight, which is OpenCV's
   `convertTo(alpha, beta)`) that reads an 8-bit plane and writes float32 straight into its place in the CHW
   output, letterbox offset included.

Colour conversion costs nothing extra: choosing which source plane feeds which model channel *is* the
conversion (BGR->RGB swaps planes, RGBA/BGRA drop the alpha plane, GRAY feeds one plane to all three). That is
exactly what `cv2.cvtColor` would compute for those conversions, without materialising another image.
Resizing before converting is exact too, because every one of these conversions is a per-pixel channel
selection and INTER_LINEAR works on each channel independently.

Example:
    >>> tensor, transform = preprocess(image, ChannelOrder.BGR, manifest)
    >>> boxes_in_original = transform.boxes_to_original(boxes_in_input)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ..domain import ChannelOrder, ImageSize
from ..manifest import Interpolation, ModelManifest, PadPosition, ResizeMode

__all__ = ["Transform", "preprocess", "stack_batch"]

FloatArray = npt.NDArray[np.float32]

# For each (image order, model order): the source plane feeding model channel 0, 1, 2.
_SOURCE_PLANES: dict[tuple[ChannelOrder, ChannelOrder], tuple[int, int, int]] = {
    (ChannelOrder.RGB, ChannelOrder.RGB): (0, 1, 2),
    (ChannelOrder.RGB, ChannelOrder.BGR): (2, 1, 0),
    (ChannelOrder.BGR, ChannelOrder.RGB): (2, 1, 0),
    (ChannelOrder.BGR, ChannelOrder.BGR): (0, 1, 2),
    (ChannelOrder.RGBA, ChannelOrder.RGB): (0, 1, 2),
    (ChannelOrder.RGBA, ChannelOrder.BGR): (2, 1, 0),
    (ChannelOrder.BGRA, ChannelOrder.RGB): (2, 1, 0),
    (ChannelOrder.BGRA, ChannelOrder.BGR): (0, 1, 2),
    (ChannelOrder.GRAY, ChannelOrder.RGB): (0, 0, 0),
    (ChannelOrder.GRAY, ChannelOrder.BGR): (0, 0, 0),
}


@dataclass(frozen=True, slots=True)
class Transform:
    """How model-input pixel coordinates relate to the original image: `input = original * scale + pad`.

    Coordinates are continuous pixel-edge coordinates (a 640-wide image spans x in [0, 640]); with those,
    cv2.resize's half-pixel-centre convention maps edges by a pure scale, so the mapping is exact. The pad is
    negative for centre-crop (the input starts inside the resized image).
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    original: ImageSize

    def boxes_to_original(self, boxes: npt.ArrayLike) -> FloatArray:
        """Maps (K, 4) xyxy boxes from model-input pixels to the original image, clipped to its bounds.

        Clipping keeps boxes that straddle the letterbox padding inside the image; a box lying entirely in
        the padding collapses to zero width or height, which callers drop.
        """
        array = np.asarray(boxes, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(f"expected boxes of shape (K, 4), got {array.shape}")
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        inverse = np.array(
            [1.0 / self.scale_x, 1.0 / self.scale_y, 1.0 / self.scale_x, 1.0 / self.scale_y], dtype=np.float32
        )
        upper = np.array(
            [self.original.width, self.original.height, self.original.width, self.original.height],
            dtype=np.float32,
        )
        mapped: FloatArray = (array - offset) * inverse
        return np.clip(mapped, np.float32(0.0), upper, out=mapped)

    def points_to_original(self, points: npt.ArrayLike) -> FloatArray:
        """Maps (..., 2) xy points from model-input pixels to the original image, clipped to its bounds."""
        array = np.asarray(points, dtype=np.float32)
        if array.ndim < 1 or array.shape[-1] != 2:
            raise ValueError(f"expected points of shape (..., 2), got {array.shape}")
        offset = np.array([self.pad_x, self.pad_y], dtype=np.float32)
        inverse = np.array([1.0 / self.scale_x, 1.0 / self.scale_y], dtype=np.float32)
        upper = np.array([self.original.width, self.original.height], dtype=np.float32)
        mapped: FloatArray = (array - offset) * inverse
        return np.clip(mapped, np.float32(0.0), upper, out=mapped)

    def boxes_to_input(self, boxes: npt.ArrayLike) -> FloatArray:
        """The inverse of `boxes_to_original`, unclipped: original-image xyxy boxes to input pixels."""
        array = np.asarray(boxes, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != 4:
            raise ValueError(f"expected boxes of shape (K, 4), got {array.shape}")
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        result: FloatArray = array * scale + offset
        return result


_INTERPOLATION = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.LINEAR: cv2.INTER_LINEAR,
    Interpolation.CUBIC: cv2.INTER_CUBIC,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}


def _geometry(width: int, height: int, manifest: ModelManifest) -> tuple[int, int, int, int]:
    """Returns (resized width, resized height, left, top): where the resized image's top-left corner lands
    in the input. Negative for centre-crop, whose resized image is larger than the input."""
    in_w, in_h = manifest.input_width, manifest.input_height
    if manifest.resize is ResizeMode.STRETCH:
        return in_w, in_h, 0, 0
    if manifest.resize is ResizeMode.CENTRE_CROP:
        return _centre_crop(width, height, in_w, in_h, manifest.crop_fraction)
    ratio = min(in_w / width, in_h / height)
    # Rounding (not truncating) keeps the aspect error under half a pixel; clamping keeps a 1 px wide sliver
    # of a panorama alive instead of resizing it to nothing.
    new_w = min(in_w, max(1, round(width * ratio)))
    new_h = min(in_h, max(1, round(height * ratio)))
    if manifest.pad_position is PadPosition.TOP_LEFT:
        return new_w, new_h, 0, 0
    # An odd leftover pixel goes to the right/bottom, as in YOLOv5's letterbox().
    return new_w, new_h, (in_w - new_w) // 2, (in_h - new_h) // 2


def _centre_crop(width: int, height: int, in_w: int, in_h: int, fraction: float) -> tuple[int, int, int, int]:
    """torchvision's Resize(size) + CenterCrop(input), size = floor(input / fraction) on the binding side.

    The side that needs the larger scale to cover the input is resized to floor(its input size / fraction)
    and the other follows truncated, as torchvision's Resize(int) does; the crop offsets are
    round((resized - input) / 2), as its CenterCrop computes them.
    """
    if in_w / width >= in_h / height:
        new_w = max(in_w, math.floor(in_w / fraction))
        new_h = max(in_h, int(new_w * height / width))
    else:
        new_h = max(in_h, math.floor(in_h / fraction))
        new_w = max(in_w, int(new_h * width / height))
    return new_w, new_h, -round((new_w - in_w) / 2.0), -round((new_h - in_h) / 2.0)


def preprocess(
    image: npt.NDArray[np.uint8],
    image_order: ChannelOrder,
    manifest: ModelManifest,
    *,
    out: FloatArray | None = None,
) -> tuple[FloatArray, Transform]:
    """Resizes, converts and normalises one HxWxC uint8 image into a (3, H_in, W_in) float32 tensor.

    Args:
        image: HxWxC (or HxW for grey) uint8 pixels in `image_order`.
        image_order: the channel order of `image`.
        manifest: the model's input contract (size, channel order, resize mode, pad value, normalisation).
        out: optional C-contiguous (3, H_in, W_in) float32 destination, typically `batch[i]` of a batch
            buffer, so that batching needs no extra copy. A fresh array is allocated when omitted.

    Returns:
        The tensor (`out` when given) and the `Transform` mapping model-input coordinates back to `image`.

    Raises:
        ValueError: if the array does not match `image_order` (the servicer validates request images, so
            this is a caller bug rather than a bad request).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array, got {getattr(image, 'dtype', type(image).__name__)}")
    channels = image_order.channels
    if image.ndim == 3 and image.shape[2] == 1 and channels == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 and channels == 1) and not (image.ndim == 3 and image.shape[2] == channels):
        raise ValueError(f"expected an HxWx{channels} image for {image_order.value}, got shape {image.shape}")
    height, width = image.shape[:2]
    original = ImageSize(width, height)

    in_w, in_h = manifest.input_width, manifest.input_height
    if out is None:
        out = np.empty((3, in_h, in_w), dtype=np.float32)
    elif out.shape != (3, in_h, in_w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(
            f"expected out as C-contiguous float32 (3, {in_h}, {in_w}), got {out.dtype} {out.shape}"
        )

    new_w, new_h, left, top = _geometry(width, height, manifest)
    # The map back to the original is fixed by the resize and where it lands, crop or padding alike.
    transform = Transform(
        scale_x=new_w / width, scale_y=new_h / height, pad_x=float(left), pad_y=float(top), original=original
    )
    if (new_w, new_h) != (width, height):
        resized = cv2.resize(image, (new_w, new_h), interpolation=_INTERPOLATION[manifest.interpolation])
    else:
        resized = np.ascontiguousarray(image)
    if left < 0 or top < 0:  # centre-crop: the input is a window into the resized image, nothing to pad
        resized = resized[-top : in_h - top, -left : in_w - left]
        new_w, new_h, left, top = in_w, in_h, 0, 0
    planes = [resized] if resized.ndim == 2 else cv2.split(resized)

    # (pixel * scale - mean) / std == pixel * multiplier + offset, folded once per call (six floats).
    multipliers = [manifest.scale / s for s in manifest.std]
    offsets = [-m / s for m, s in zip(manifest.mean, manifest.std, strict=True)]
    sources = _SOURCE_PLANES[(image_order, manifest.channel_order)]
    bottom, right = top + new_h, left + new_w
    for channel, source in enumerate(sources):
        plane_out = out[channel]
        if (new_w, new_h) != (in_w, in_h):
            pad = manifest.pad_value * multipliers[channel] + offsets[channel]
            plane_out[:top] = pad
            plane_out[bottom:] = pad
            plane_out[top:bottom, :left] = pad
            plane_out[top:bottom, right:] = pad
        region = plane_out[top:bottom, left:right]
        plane = planes[source]
        written = cv2.addWeighted(
            plane, multipliers[channel], plane, 0.0, offsets[channel], dst=region, dtype=cv2.CV_32F
        )
        if (
            written is not region
        ):  # OpenCV reallocates rather than fail when dst does not fit; never expected.
            region[...] = written
    return out, transform


def stack_batch(tensors: Sequence[npt.NDArray[np.float32]]) -> FloatArray:
    """Stacks (3, H, W) tensors into one C-contiguous (N, 3, H, W) float32 batch.

    A single tensor becomes a batch of one without a copy (a leading axis on a contiguous array stays
    contiguous), which is the common case for unary requests.
    """
    if not tensors:
        raise ValueError("expected at least one tensor, got none")
    shape = tensors[0].shape
    for index, tensor in enumerate(tensors):
        if tensor.ndim != 3 or tensor.shape != shape:
            raise ValueError(
                f"expected tensors of one (C, H, W) shape {shape}, got {tensor.shape} at {index}"
            )
    if len(tensors) == 1:
        return np.ascontiguousarray(tensors[0][np.newaxis], dtype=np.float32)
    return np.stack(tensors).astype(np.float32, copy=False)
