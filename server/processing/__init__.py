"""Pre- and post-processing around the engine: image -> tensor, raw outputs -> domain results.

preprocess      letterbox, stretch or centre-crop, channel order, scaling -> (3, H, W) float32 + Transform
nms             greedy class-agnostic and class-aware non-maximum suppression
decoders        YOLOv5, YOLOv8 (pose, seg), classification, CenterFace outputs -> detections, classifications
masks           YOLOv8-seg prototypes -> run-length encoded masks over each box
"""

from .decoders import Decoded, DecodeOptions, decode_batch, resolve_options
from .nms import batched_nms, box_iou, nms
from .preprocess import Transform, preprocess, stack_batch

__all__ = [
    "DecodeOptions",
    "Decoded",
    "Transform",
    "batched_nms",
    "box_iou",
    "decode_batch",
    "nms",
    "preprocess",
    "resolve_options",
    "stack_batch",
]
