"""Protobuf <-> domain conversion: the only code besides the servicers that touches generated messages.

Request fields are validated here, each problem reported as a field violation with the field's path in the
request (e.g. "images[2].raw.width"), so a client can point at exactly what it sent wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from visionrpc.engines import EngineInfo
from visionrpc.v1 import inference_pb2, models_pb2, types_pb2

from ..domain import ChannelOrder, ImageSize, InferOptions, Mask, Prediction, Task
from ..errors import FieldViolation, InvalidArgumentError, NotFoundError, PermissionDeniedError
from ..imaging import DecodedImage, decode_image, encoded_pixels, raw_image
from ..models.builds import BuildState, BuildStatus
from ..models.manager import ModelState, ModelStatus
from ..shared_memory import SharedMemoryRegistry

__all__ = [
    "build_to_proto",
    "decode_request_image",
    "infer_options_from_proto",
    "infer_response",
    "model_to_proto",
    "prediction_to_proto",
    "request_pixels",
]

_CHANNEL_ORDERS = {
    types_pb2.CHANNEL_ORDER_RGB: ChannelOrder.RGB,
    types_pb2.CHANNEL_ORDER_BGR: ChannelOrder.BGR,
    types_pb2.CHANNEL_ORDER_GRAY: ChannelOrder.GRAY,
    types_pb2.CHANNEL_ORDER_RGBA: ChannelOrder.RGBA,
    types_pb2.CHANNEL_ORDER_BGRA: ChannelOrder.BGRA,
}
_CHANNEL_ORDER_TO_PROTO = {order: value for value, order in _CHANNEL_ORDERS.items()}
_MODEL_STATES = {
    ModelState.AVAILABLE: models_pb2.MODEL_STATE_AVAILABLE,
    ModelState.LOADING: models_pb2.MODEL_STATE_LOADING,
    ModelState.READY: models_pb2.MODEL_STATE_READY,
    ModelState.FAILED: models_pb2.MODEL_STATE_FAILED,
}
_BUILD_STATES = {
    BuildState.NOT_NEEDED: models_pb2.ENGINE_BUILD_STATE_NOT_NEEDED,
    BuildState.BUILDING: models_pb2.ENGINE_BUILD_STATE_BUILDING,
    BuildState.READY: models_pb2.ENGINE_BUILD_STATE_READY,
    BuildState.FAILED: models_pb2.ENGINE_BUILD_STATE_FAILED,
}
_TASKS = {
    Task.DETECTION: models_pb2.MODEL_TASK_DETECTION,
    Task.CLASSIFICATION: models_pb2.MODEL_TASK_CLASSIFICATION,
}


def decode_request_image(
    image: types_pb2.Image,
    index: int,
    *,
    max_pixels: int,
    shared_memory: SharedMemoryRegistry | None = None,
    min_size: ImageSize | None = None,
) -> DecodedImage:
    """Decodes `images[index]` of a request; errors name the field inside the request.

    `shared_memory`: the server's registry, for images in shared memory (None: refused as disabled).
    `min_size`: a JPEG at least twice as large may be decoded at 1/2, 1/4 or 1/8 (`decode_image`).
    """
    prefix = f"images[{index}]"
    try:
        source = image.WhichOneof("source")
        if source == "encoded":
            return decode_image(image.encoded, max_pixels=max_pixels, min_size=min_size)
        if source == "raw":
            raw = image.raw
            order = _CHANNEL_ORDERS.get(
                raw.channel_order
            )  # None: unspecified or unknown, refused by raw_image
            return raw_image(raw.data, raw.width, raw.height, order, max_pixels=max_pixels)
        if source == "shared_memory":
            shm = image.shared_memory
            if shared_memory is None:
                raise PermissionDeniedError("shared-memory inputs are off", reason="SHARED_MEMORY_DISABLED")
            return shared_memory.image(
                shm.region, shm.offset, shm.width, shm.height, _CHANNEL_ORDERS.get(shm.channel_order),
                max_pixels=max_pixels,
            )  # fmt: skip
        raise InvalidArgumentError.for_field(
            "", "expected 'encoded', 'raw' or 'shared_memory' to be set", reason="EMPTY_IMAGE"
        )
    except (InvalidArgumentError, NotFoundError) as exc:
        raise exc.with_field_prefix(prefix) from None


def request_pixels(images: Sequence[types_pb2.Image], *, max_pixels: int) -> int:
    """The pixels a request's images will occupy once decoded, from their headers alone (nothing is decoded).

    Each image is held to `max_pixels` here already, so a single oversized image is reported as
    IMAGE_TOO_LARGE on its own field rather than as a request over its budget. An image that is malformed in
    a way its header does not show counts 0 and is reported when it is decoded.

    Raises:
        InvalidArgumentError: a header that is missing, unsupported, malformed or over `max_pixels`, on
            "images[i]...".
    """
    total = 0
    for index, image in enumerate(images):
        try:
            source = image.WhichOneof("source")
            if source == "encoded":
                total += encoded_pixels(image.encoded, max_pixels=max_pixels)
            elif source == "raw" and image.raw.width > 0 and image.raw.height > 0:
                raw = image.raw
                if raw.width * raw.height > max_pixels:  # raw_image gives this case its error
                    raw_image(raw.data, raw.width, raw.height, _CHANNEL_ORDERS.get(raw.channel_order),
                              max_pixels=max_pixels)  # fmt: skip
                total += raw.width * raw.height
            elif source == "shared_memory":  # its width and height are all there is to its header
                pixels = image.shared_memory.width * image.shared_memory.height
                if pixels > max_pixels:
                    raise InvalidArgumentError.for_field(
                        "shared_memory", f"expected at most {max_pixels} pixels, got {pixels}",
                        reason="IMAGE_TOO_LARGE",
                    )  # fmt: skip
                total += pixels
        except InvalidArgumentError as exc:
            raise exc.with_field_prefix(f"images[{index}]") from None
    return total


# A class filter longer than any real model's class list is a mistake or an attack: refused before the
# names are compared with the model's (each compared name costs a set lookup, each unknown one an echo).
MAX_CLASS_FILTER = 1000
MAX_CLASS_NAME_CHARS = 256


def infer_options_from_proto(options: types_pb2.InferOptions, field: str = "options") -> InferOptions:
    violations: list[FieldViolation] = []
    for name, values in (("class_ids", options.class_ids), ("class_names", options.class_names)):
        if len(values) > MAX_CLASS_FILTER:
            violations.append(
                FieldViolation(
                    f"{field}.{name}", f"expected at most {MAX_CLASS_FILTER} entries, got {len(values)}"
                )
            )
    longest = max((len(n) for n in options.class_names), default=0)
    if longest > MAX_CLASS_NAME_CHARS:
        violations.append(
            FieldViolation(
                f"{field}.class_names",
                f"expected class names of at most {MAX_CLASS_NAME_CHARS} characters, got one of {longest}",
            )
        )
    for name in ("confidence_threshold", "iou_threshold"):
        if options.HasField(name):
            value = getattr(options, name)
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                violations.append(
                    FieldViolation(f"{field}.{name}", f"expected a value in [0, 1], got {value}")
                )
    if options.HasField("max_detections") and options.max_detections < 1:
        violations.append(FieldViolation(f"{field}.max_detections", "expected at least 1, got 0"))
    if options.HasField("top_k") and options.top_k < 1:
        violations.append(FieldViolation(f"{field}.top_k", "expected at least 1, got 0"))
    if violations:
        raise InvalidArgumentError(
            "; ".join(f"{v.field}: {v.description}" for v in violations),
            reason="INVALID_OPTION",
            violations=tuple(violations),
        )
    return InferOptions(
        confidence_threshold=options.confidence_threshold
        if options.HasField("confidence_threshold")
        else None,
        iou_threshold=options.iou_threshold if options.HasField("iou_threshold") else None,
        max_detections=options.max_detections if options.HasField("max_detections") else None,
        class_ids=frozenset(options.class_ids),
        class_names=frozenset(options.class_names),
        top_k=options.top_k if options.HasField("top_k") else None,
    )


def engine_to_proto(info: EngineInfo) -> types_pb2.EngineInfo:
    return types_pb2.EngineInfo(
        engine=info.engine, provider=info.provider, device=info.device, precision=info.precision
    )


def build_to_proto(build: BuildStatus) -> models_pb2.EngineBuild:
    message = models_pb2.EngineBuild(
        state=_BUILD_STATES[build.state], reason=build.reason, target_engine=build.target_engine
    )
    if build.progress is not None:  # unset (not 0) when unknown
        message.progress = build.progress
    return message


def prediction_to_proto(prediction: Prediction) -> types_pb2.ImagePrediction:
    message = types_pb2.ImagePrediction(
        image_size=types_pb2.ImageSize(
            width=prediction.image_size.width, height=prediction.image_size.height
        ),
        timings=types_pb2.Timings(
            decode_ms=prediction.timings.decode_ms,
            queue_ms=prediction.timings.queue_ms,
            preprocess_ms=prediction.timings.preprocess_ms,
            inference_ms=prediction.timings.inference_ms,
            postprocess_ms=prediction.timings.postprocess_ms,
            total_ms=prediction.timings.total_ms,
        ),
    )
    for det in prediction.detections:
        message.detections.append(
            types_pb2.Detection(
                box=types_pb2.BoundingBox(
                    x_min=det.box.x_min, y_min=det.box.y_min, x_max=det.box.x_max, y_max=det.box.y_max
                ),
                class_id=det.class_id,
                class_name=det.class_name,
                confidence=det.confidence,
                keypoints=[
                    types_pb2.Keypoint(x=k.x, y=k.y, confidence=k.confidence, name=k.name)
                    for k in det.keypoints
                ],
                mask=_mask_to_proto(det.mask) if det.mask is not None else None,
                track_id=det.track_id,
            )
        )
    for cls in prediction.classifications:
        message.classifications.append(
            types_pb2.Classification(
                class_id=cls.class_id, class_name=cls.class_name, confidence=cls.confidence
            )
        )
    return message


def _mask_to_proto(mask: Mask) -> types_pb2.Mask:
    return types_pb2.Mask(
        left=mask.left, top=mask.top, width=mask.width, height=mask.height, counts=mask.counts
    )


def infer_response(
    name: str, version: str, engine: EngineInfo, predictions: Sequence[Prediction]
) -> inference_pb2.InferResponse:
    return inference_pb2.InferResponse(
        model_name=name,
        model_version=version,
        engine=engine_to_proto(engine),
        predictions=[prediction_to_proto(p) for p in predictions],
    )


def model_to_proto(status: ModelStatus) -> models_pb2.Model:
    message = models_pb2.Model(
        name=status.name,
        version=status.version,
        versions=status.versions,
        state=_MODEL_STATES[status.state],
        state_reason=status.reason,
        builtin=status.builtin,
    )
    if status.engine is not None:
        message.engine.CopyFrom(engine_to_proto(status.engine))
    if status.build is not None:
        message.build.CopyFrom(build_to_proto(status.build))
    manifest = status.manifest
    if manifest is not None:
        message.task = _TASKS[manifest.task]
        message.decoder = manifest.decoder.value
        message.description = manifest.description
        message.input.CopyFrom(
            models_pb2.ModelInput(
                width=manifest.input_width,
                height=manifest.input_height,
                channel_order=_CHANNEL_ORDER_TO_PROTO[manifest.channel_order],
                resize=manifest.resize.value,
            )
        )
        message.defaults.CopyFrom(
            models_pb2.ModelDefaults(
                confidence_threshold=manifest.default_confidence,
                iou_threshold=manifest.default_iou,
                max_detections=manifest.default_max_detections,
                top_k=manifest.default_top_k,
            )
        )
        message.class_names.extend(manifest.class_names)
        message.keypoint_names.extend(manifest.keypoint_names)
    return message
