"""The protobuf edge of the SDK: user inputs -> request messages, response messages -> `_types` values.

Nothing outside this module (and the thin RPC calls in `_client.py`) touches generated messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt
from visionrpc.v1 import inference_pb2, models_pb2, types_pb2

from ._shared_memory import SharedMemoryImage
from ._types import (
    BoundingBox,
    ChannelOrder,
    Classification,
    Detection,
    EngineBuild,
    EngineBuildState,
    EngineInfo,
    ImagePrediction,
    ImageSize,
    InferResult,
    Keypoint,
    Mask,
    ModelDefaults,
    ModelInfo,
    ModelInput,
    ModelState,
    ModelTask,
    Timings,
)

__all__ = [
    "ImageInput",
    "build_infer_request",
    "image_list",
    "image_to_proto",
    "infer_result_from_proto",
    "model_info_from_proto",
    "options_to_proto",
]

# One image as the SDK accepts it: encoded file bytes, a path to an image file, decoded 8-bit pixels, or
# pixels in a shared-memory region registered with the server (SharedMemoryRegion.write).
ImageInput: TypeAlias = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | npt.NDArray[np.uint8] | SharedMemoryImage
)

_PROTO_CHANNEL_ORDER = {
    "rgb": types_pb2.CHANNEL_ORDER_RGB,
    "bgr": types_pb2.CHANNEL_ORDER_BGR,
    "gray": types_pb2.CHANNEL_ORDER_GRAY,
    "rgba": types_pb2.CHANNEL_ORDER_RGBA,
    "bgra": types_pb2.CHANNEL_ORDER_BGRA,
}
_CHANNEL_ORDER_FROM_PROTO = {v: ChannelOrder(k) for k, v in _PROTO_CHANNEL_ORDER.items()}
_TASK_FROM_PROTO = {
    models_pb2.MODEL_TASK_DETECTION: ModelTask.DETECTION,
    models_pb2.MODEL_TASK_CLASSIFICATION: ModelTask.CLASSIFICATION,
}
_STATE_FROM_PROTO = {
    models_pb2.MODEL_STATE_AVAILABLE: ModelState.AVAILABLE,
    models_pb2.MODEL_STATE_LOADING: ModelState.LOADING,
    models_pb2.MODEL_STATE_READY: ModelState.READY,
    models_pb2.MODEL_STATE_FAILED: ModelState.FAILED,
}
_BUILD_STATE_FROM_PROTO = {
    models_pb2.ENGINE_BUILD_STATE_NOT_NEEDED: EngineBuildState.NOT_NEEDED,
    models_pb2.ENGINE_BUILD_STATE_BUILDING: EngineBuildState.BUILDING,
    models_pb2.ENGINE_BUILD_STATE_READY: EngineBuildState.READY,
    models_pb2.ENGINE_BUILD_STATE_FAILED: EngineBuildState.FAILED,
}


# ---------------------------------------------------------------------------------------------- requests


def image_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image or an iterable of images -> a list of images."""
    # bytes, str and arrays are iterable too, so "one image or many" is decided by type, not by iterability.
    if isinstance(
        images, bytes | bytearray | memoryview | str | os.PathLike | np.ndarray | SharedMemoryImage
    ):
        return [cast(ImageInput, images)]
    return list(images)  # pyright: ignore[reportUnknownArgumentType]


def image_to_proto(image: ImageInput, channel_order: Literal["bgr", "rgb"] = "bgr") -> types_pb2.Image:
    """Builds one request image.

    Args:
        image: encoded bytes (JPEG/PNG/BMP/WebP, sent as is), a path to such a file (read and sent as is,
            never decoded here), or a uint8 array of shape HxW, HxWx1, HxWx3 or HxWx4 sent as raw pixels.
        channel_order: the order of a 3- or 4-channel array: "bgr" (OpenCV's `cv2.imread`, the default) or
            "rgb" (PIL, imageio, matplotlib); 4 channels become "bgra"/"rgba". Ignored for encoded images.

    Raises:
        TypeError: for any other kind of value.
        ValueError: for an array of the wrong dtype or shape.
        OSError: when a path cannot be read (FileNotFoundError when it does not exist).
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return types_pb2.Image(encoded=bytes(image))
    if isinstance(image, str | os.PathLike):
        return types_pb2.Image(encoded=Path(image).read_bytes())
    if isinstance(image, np.ndarray):
        return types_pb2.Image(raw=_raw_image(image, channel_order))
    if isinstance(image, SharedMemoryImage):
        return types_pb2.Image(
            shared_memory=types_pb2.SharedMemoryImage(
                region=image.region,
                offset=image.offset,
                width=image.width,
                height=image.height,
                channel_order=_PROTO_CHANNEL_ORDER[image.channel_order.value],
            )
        )
    raise TypeError(
        f"expected an image as encoded bytes, a file path or a uint8 numpy array, got {type(image).__name__}"
    )


def _raw_image(array: npt.NDArray[np.uint8], channel_order: Literal["bgr", "rgb"]) -> types_pb2.RawImage:
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f'expected channel_order "bgr" or "rgb", got {channel_order!r}')
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {array.dtype}")
    channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else 0
    if channels not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            "expected an image array of shape HxW, HxWx1, HxWx3 or HxWx4 (a list for several images), "
            f"got shape {array.shape}"
        )
    order = {1: "gray", 3: channel_order, 4: channel_order + "a"}[channels]
    return types_pb2.RawImage(
        # tobytes() copies into C order, so views, slices and transposed arrays are all sent correctly.
        data=np.ascontiguousarray(array).tobytes(),
        width=array.shape[1],
        height=array.shape[0],
        channel_order=_PROTO_CHANNEL_ORDER[order],
    )


def options_to_proto(
    *,
    confidence: float | None = None,
    iou: float | None = None,
    max_detections: int | None = None,
    classes: Iterable[str | int] | None = None,
    top_k: int | None = None,
) -> types_pb2.InferOptions:
    """Builds InferOptions; unset (None) options stay unset so the server applies the model's defaults.

    Range checks are left to the server, which reports them as field violations; only types are checked here.
    """
    options = types_pb2.InferOptions()
    if confidence is not None:
        options.confidence_threshold = float(confidence)
    if iou is not None:
        options.iou_threshold = float(iou)
    if max_detections is not None:
        options.max_detections = _non_negative_int("max_detections", max_detections)
    if top_k is not None:
        options.top_k = _non_negative_int("top_k", top_k)
    if isinstance(classes, str):
        # A bare string is a class name, not an iterable of one-letter names.
        classes = [classes]
    for item in classes or ():
        if isinstance(item, str):
            options.class_names.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            options.class_ids.append(_non_negative_int("classes", item))
        else:
            raise TypeError(f"expected class names (str) or ids (int) in classes, got {type(item).__name__}")
    return options


def _non_negative_int(name: str, value: int) -> int:
    # uint32 fields: a negative value would raise deep inside protobuf with a message naming no option.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer for {name}, got {value!r}")
    return value


def build_infer_request(
    model_id: str, images: Sequence[types_pb2.Image], options: types_pb2.InferOptions
) -> inference_pb2.InferRequest:
    return inference_pb2.InferRequest(model_id=model_id, images=images, options=options)


# --------------------------------------------------------------------------------------------- responses


def infer_result_from_proto(response: inference_pb2.InferResponse) -> InferResult:
    return InferResult(
        model_name=response.model_name,
        model_version=response.model_version,
        engine=_engine(response.engine) if response.HasField("engine") else None,
        predictions=tuple(image_prediction_from_proto(p) for p in response.predictions),
        response=response,
    )


def image_prediction_from_proto(message: types_pb2.ImagePrediction) -> ImagePrediction:
    t = message.timings
    return ImagePrediction(
        image_size=ImageSize(message.image_size.width, message.image_size.height),
        detections=tuple(_detection(d) for d in message.detections),
        classifications=tuple(
            Classification(c.class_id, c.class_name, c.confidence) for c in message.classifications
        ),
        timings=Timings(
            t.decode_ms, t.queue_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms, t.total_ms
        ),
    )


def _detection(message: types_pb2.Detection) -> Detection:
    b = message.box
    return Detection(
        box=BoundingBox(b.x_min, b.y_min, b.x_max, b.y_max),
        class_id=message.class_id,
        class_name=message.class_name,
        confidence=message.confidence,
        keypoints=tuple(Keypoint(k.x, k.y, k.confidence, k.name) for k in message.keypoints),
        mask=_mask(message.mask) if message.HasField("mask") else None,
        track_id=message.track_id,
    )


def _mask(message: types_pb2.Mask) -> Mask:
    return Mask(message.left, message.top, message.width, message.height, tuple(message.counts))


def _engine(message: types_pb2.EngineInfo) -> EngineInfo:
    return EngineInfo(message.engine, message.provider, message.device, message.precision)


def _build(message: models_pb2.EngineBuild) -> EngineBuild:
    return EngineBuild(
        state=_BUILD_STATE_FROM_PROTO.get(message.state, EngineBuildState.UNSPECIFIED),
        progress=message.progress if message.HasField("progress") else None,
        reason=message.reason,
        target_engine=message.target_engine,
    )


def model_info_from_proto(message: models_pb2.Model) -> ModelInfo:
    has = message.HasField
    return ModelInfo(
        name=message.name,
        version=message.version,
        versions=tuple(message.versions),
        task=_TASK_FROM_PROTO.get(message.task, ModelTask.UNSPECIFIED),
        decoder=message.decoder,
        state=_STATE_FROM_PROTO.get(message.state, ModelState.UNSPECIFIED),
        state_reason=message.state_reason,
        # The server sets engine only while the model is loaded; an empty message means "not loaded".
        engine=_engine(message.engine) if has("engine") and message.engine.engine else None,
        input=ModelInput(
            message.input.width,
            message.input.height,
            _CHANNEL_ORDER_FROM_PROTO.get(message.input.channel_order, ChannelOrder.UNSPECIFIED),
            message.input.resize,
        )
        if has("input")
        else None,
        defaults=ModelDefaults(
            message.defaults.confidence_threshold,
            message.defaults.iou_threshold,
            message.defaults.max_detections,
            message.defaults.top_k,
        )
        if has("defaults")
        else None,
        class_names=tuple(message.class_names),
        keypoint_names=tuple(message.keypoint_names),
        builtin=message.builtin,
        description=message.description,
        build=_build(message.build) if has("build") else None,
        proto=message,
    )
