"""Frames pushed to the server on one call: `Client.infer_stream(...)` returns an `InferStream`.

Example:
    import cv2
    from visionrpc.client import Client

    capture = cv2.VideoCapture("bikes.mp4")
    frames = iter(lambda: capture.read()[1], None)  # BGR arrays, sent raw

    with Client() as client, client.infer_stream(frames, max_in_flight=4) as results:
        for result in results:
            if result.prediction is not None:
                print(result.sequence_number, [d.class_name for d in result.prediction.detections])
            elif result.error is not None:
                print(result.sequence_number, "refused:", result.error.reason)

One result per frame, in the order sent. A frame the server refuses (an undecodable image) comes back with
`error` set (a VisionRpcError, not raised: the call goes on); with `drop=True` a frame that arrives while
`max_in_flight` frames are being inferred comes back `dropped`. With the default (wait), the server stops
reading while `max_in_flight` frames are unanswered, so the frames iterable is consumed no faster than the
server infers. Errors of the call itself (unknown model, bad options) are raised from iteration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from visionrpc.v1 import analytics_pb2, inference_pb2

from ._analytics import FrameAnalytics, frame_analytics_from_proto
from ._convert import ImageInput, image_prediction_from_proto, image_to_proto
from ._exceptions import VisionRpcError, from_status, map_rpc_errors
from ._types import ImagePrediction

__all__ = ["FrameResult", "InferStream", "InputFrame", "build_infer_stream_config"]


@dataclass(frozen=True, slots=True)
class InputFrame:
    """A frame with its own numbering: `sequence_number` must increase per `source_index` (None: one more
    than the previous frame of that source, from 0); `timestamp_ms` is its time in the source (0: the time
    the server receives it), which dwell times use."""

    image: ImageInput
    sequence_number: int | None = None
    source_index: int = 0
    timestamp_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The answer to one frame: exactly one of `prediction`, `dropped` or `error`.

    `analytics`: with analytics configured, the zones and lines watching this source and the events this
    frame caused, else None.
    """

    sequence_number: int
    source_index: int
    model_name: str
    model_version: str
    prediction: ImagePrediction | None = None
    dropped: bool = False
    error: VisionRpcError | None = None
    analytics: FrameAnalytics | None = None


def build_infer_stream_config(
    *,
    model: str | None,
    options: Any,
    analytics: analytics_pb2.StreamAnalytics | None,
    max_in_flight: int | None,
    drop: bool,
) -> inference_pb2.InferStreamRequest:
    if max_in_flight is not None and not 1 <= max_in_flight <= 64:
        raise ValueError(f"expected max_in_flight in [1, 64] or None, got {max_in_flight}")
    config = inference_pb2.InferStreamConfig(
        model_id=model or "",
        options=options,
        max_in_flight=max_in_flight or 0,
        backpressure=inference_pb2.BACKPRESSURE_DROP if drop else inference_pb2.BACKPRESSURE_WAIT,
    )
    if analytics is not None:
        config.analytics.CopyFrom(analytics)
    return inference_pb2.InferStreamRequest(config=config)


def result_from_proto(message: inference_pb2.InferStreamResponse) -> FrameResult:
    outcome = message.WhichOneof("outcome")
    return FrameResult(
        sequence_number=message.sequence_number,
        source_index=message.source_index,
        model_name=message.model_name,
        model_version=message.model_version,
        prediction=image_prediction_from_proto(message.prediction) if outcome == "prediction" else None,
        dropped=outcome == "dropped" and message.dropped,
        error=from_status(message.error) if outcome == "error" else None,
        analytics=frame_analytics_from_proto(message.analytics) if message.HasField("analytics") else None,
    )


class InferStream:
    """An InferStream call: iterate it for one `FrameResult` per frame sent; a context manager, or call
    `cancel()`. Frames are read from the caller's iterable on gRPC's sending thread as the server asks."""

    def __init__(
        self,
        start: Callable[[Iterator[inference_pb2.InferStreamRequest]], Any],
        config: inference_pb2.InferStreamRequest,
        frames: Iterable[ImageInput | InputFrame],
        channel_order: Literal["bgr", "rgb"],
    ) -> None:
        self._config = config
        self._frames = frames
        self._channel_order: Literal["bgr", "rgb"] = channel_order
        self._lock = threading.Lock()
        self._failure: BaseException | None = None  # raised by the caller's iterable or a frame's conversion
        self._call = start(self._requests())

    def _requests(self) -> Iterator[inference_pb2.InferStreamRequest]:
        yield self._config
        next_numbers: dict[int, int] = {}
        try:
            for item in self._frames:
                frame = item if isinstance(item, InputFrame) else InputFrame(item)
                number = frame.sequence_number
                if number is None:
                    number = next_numbers.get(frame.source_index, 0)
                next_numbers[frame.source_index] = number + 1
                yield inference_pb2.InferStreamRequest(
                    frame=inference_pb2.InputFrame(
                        sequence_number=number,
                        image=image_to_proto(frame.image, self._channel_order),
                        source_index=frame.source_index,
                        timestamp_ms=frame.timestamp_ms,
                    )
                )
        except Exception as exc:  # grpc would only log it: end the frames here and raise it to the reader
            with self._lock:
                self._failure = exc

    def __iter__(self) -> Iterator[FrameResult]:
        with map_rpc_errors():
            for message in self._call:
                yield result_from_proto(message)
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise failure

    def cancel(self) -> None:
        """Cancels the call (idempotent); iteration then raises CancelledError."""
        self._call.cancel()

    def __enter__(self) -> InferStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()
