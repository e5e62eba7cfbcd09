"""The stream affinity key: a deterministic hash of what decides a server-side pipeline.

Identical subscriptions share one pipeline on a server (decoded and inferred once), but only if they reach the
same replica. The SDKs send this key as the `x-visionrpc-pipeline-key` request header on StreamPredictions,
so a proxy hashing on it (nginx `hash $http_x_visionrpc_pipeline_key consistent`, an Istio DestinationRule's
consistentHash on the header) sends identical subscriptions to one replica. docs/deploying.md shows both.

The key mirrors the server's `PipelineKey` (server/streams/manager.py): the sources in order, the model, the
inference options and the stream options; not the delivery mode, the resume point or anything else that
leaves the pipeline the same. What the client cannot resolve (a model's newest version, option defaults)
is taken as written: two requests the server would share but that spell it differently may get different
keys, which only costs them the sharing.

Every SDK builds the same text and hashes it the same way, checked by tests/mesh/pipeline_key_cases.json:

    visionrpc-pipeline-key/v1
    model=<string>
    source=path:<string> | source=url:<string> | source=device:<n>   (one line per source, in order)
    confidence=<float> iou=<float> max_detections=<n> top_k=<n>      (one line each; empty when unset)
    class_ids=<n>,<n>...      (sorted, without repeats)
    class_names=<string>,...  (sorted by their UTF-8 bytes, without repeats)
    max_fps=<float>           (0 is unset, as the server reads it)
    frame_policy=<enum number> frame_image=<enum number, UNSPECIFIED as NONE> jpeg_quality=<n, empty for 0>

A <string> is its UTF-8 length in bytes, ":", then the text (so no text can fake a line); a <float> is the
float32's IEEE-754 bits as 8 lowercase hex digits (float32 is what travels). The key is the first 32 hex
digits of the text's SHA-256.
"""

from __future__ import annotations

import hashlib
import struct

from visionrpc.v1 import inference_pb2

__all__ = ["PIPELINE_KEY_HEADER", "canonical_pipeline_text", "pipeline_key", "pipeline_metadata"]

PIPELINE_KEY_HEADER = "x-visionrpc-pipeline-key"
_VERSION = "visionrpc-pipeline-key/v1"


def pipeline_key(request: inference_pb2.StreamPredictionsRequest) -> str | None:
    """The request's affinity key, or None for a join by stream id (the server ignores the rest of it)."""
    if request.stream_id:
        return None
    text = canonical_pipeline_text(request)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def pipeline_metadata(request: inference_pb2.StreamPredictionsRequest) -> tuple[tuple[str, str], ...]:
    """The request metadata carrying the request's key (none for a join by stream id)."""
    key = pipeline_key(request)
    return () if key is None else ((PIPELINE_KEY_HEADER, key),)


def canonical_pipeline_text(request: inference_pb2.StreamPredictionsRequest) -> str:
    """The text the key hashes (module docstring); exposed for the cross-language test cases."""
    options = request.options
    stream = request.stream_options
    lines = [_VERSION, f"model={_string(request.model_id)}"]
    lines += [f"source={_source(source)}" for source in request.sources]
    lines += [
        "confidence="
        + _float(options.confidence_threshold if options.HasField("confidence_threshold") else None),
        "iou=" + _float(options.iou_threshold if options.HasField("iou_threshold") else None),
        "max_detections=" + _int(options.max_detections if options.HasField("max_detections") else None),
        "top_k=" + _int(options.top_k if options.HasField("top_k") else None),
        "class_ids=" + ",".join(str(i) for i in sorted(set(options.class_ids))),
        "class_names=" + ",".join(_string(n) for n in sorted(set(options.class_names), key=str.encode)),
        "max_fps=" + _float(stream.max_fps if stream.max_fps != 0 else None),
        f"frame_policy={stream.frame_policy}",
        f"frame_image={stream.frame_image or inference_pb2.FRAME_IMAGE_NONE}",
        "jpeg_quality=" + _int(stream.jpeg_quality or None),
    ]
    return "\n".join(lines) + "\n"


def _source(source: inference_pb2.VideoSource) -> str:
    kind = source.WhichOneof("source")
    if kind == "path":
        return "path:" + _string(source.path)
    if kind == "url":
        return "url:" + _string(source.url)
    if kind == "device":
        return f"device:{source.device}"
    return "none:"


def _string(text: str) -> str:
    return f"{len(text.encode('utf-8'))}:{text}"


def _float(value: float | None) -> str:
    return "" if value is None else struct.pack(">f", value).hex()


def _int(value: int | None) -> str:
    return "" if value is None else str(value)
