"""The pipelines file (`visionrpc serve --pipelines FILE`): named pipelines that run with the server.

    pipelines:
      - name: bikes-gate                 # letters, digits, '-', '_', '.'; unique
        model: yolov3-tiny-coco          # default: the server's default model
        sources:                         # as StreamPredictions: files below the media root, URLs, devices
          - path: bikes.mp4
        options: {confidence: 0.3, iou: 0.45, max_detections: 100, classes: [person, bicycle]}
        stream: {max_fps: 10, frame_policy: auto}          # auto | every_frame | newest_frame
        analytics: {...}                 # analytics_yaml.py
        face_redaction: none             # none | blur | pixelate
        sinks: [{kind: webhook, url: ...}]                 # sinks/config.py reads each entry
        autostart: true
        loop: false                      # files: start again at the end instead of ENDED
        restart: {initial_backoff_s: 1, max_backoff_s: 30, max_attempts: 0}

Every error names the file, the pipeline and the field (`pipelines.yaml: pipelines[0] (bikes-gate).stream.
max_fps: expected ...`); the server refuses to start on any of them. Sources go through the same source policy
as a StreamPredictions request (media root, URL allow-list, devices), checked when the file is loaded.
docs/pipelines.md describes every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..domain import InferOptions
from ..errors import VisionRpcError
from ..models.repository import ModelId
from ..sinks.config import SinkConfig, sink_config_from_mapping
from ..streams.source_policy import SourcePolicy, redact_url, resolve_source
from ..streams.types import FaceRedaction, FramePolicy, SourceSpec, StreamOptions
from .analytics_yaml import analytics_from_yaml, class_filter
from .fields import FieldError, FieldReader, as_list, as_mapping

__all__ = [
    "DeclaredPipeline",
    "DeclaredSource",
    "PipelinesFileError",
    "RestartPolicy",
    "load_pipelines_file",
    "parse_pipelines",
]

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_SOURCES = 16  # as StreamPredictions
_FRAME_POLICIES = {policy.value: policy for policy in FramePolicy}
_REDACTIONS = {redaction.value: redaction for redaction in FaceRedaction}


class PipelinesFileError(ValueError):
    """The pipelines file cannot be used; the message names the file, the pipeline and the field."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Backoff between restarts after failures: initial, initial*multiplier, ... capped at max_backoff_s.
    After `max_attempts` failures in a row the pipeline gives up (STOPPED, with its last error); 0: never."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    max_attempts: int = 0

    def delay(self, attempt: int) -> float:
        """Backoff before restart `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, attempt - 1))


@dataclass(frozen=True, slots=True)
class DeclaredSource:
    """A source as declared, for status: one of path (as written, below the media root), url (credentials
    hidden) or device."""

    path: str | None = None
    url: str | None = None
    device: int | None = None


@dataclass(frozen=True, slots=True)
class DeclaredPipeline:
    name: str
    model_id: ModelId
    sources: tuple[SourceSpec, ...]  # resolved by the source policy
    declared_sources: tuple[DeclaredSource, ...]  # as written (status shows these)
    options: InferOptions = field(default_factory=InferOptions)
    stream_options: StreamOptions = field(default_factory=StreamOptions)
    sinks: tuple[SinkConfig, ...] = ()
    autostart: bool = True
    loop: bool = False
    restart: RestartPolicy = field(default_factory=RestartPolicy)


def load_pipelines_file(path: Path, policy: SourcePolicy, default_model: str) -> tuple[DeclaredPipeline, ...]:
    """Reads and checks the whole file.

    Raises:
        PipelinesFileError: the message names the file, the pipeline and the field.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelinesFileError(f"{path}: cannot read the pipelines file: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PipelinesFileError(f"{path}: not valid YAML: {exc}") from exc
    return parse_pipelines(document, policy, default_model, source=str(path))


def parse_pipelines(
    document: object, policy: SourcePolicy, default_model: str, *, source: str = "<pipelines>"
) -> tuple[DeclaredPipeline, ...]:
    """The pipelines of a parsed YAML document: `{pipelines: [...]}` (or the bare list)."""
    try:
        if isinstance(document, dict) and set(document) <= {"pipelines"}:
            document = document.get("pipelines")
        if document is None:
            return ()
        items = as_list(document, "pipelines")
        pipelines: list[DeclaredPipeline] = []
        names: set[str] = set()
        for index, item in enumerate(items):
            pipeline = _pipeline(item, index, policy, default_model)
            if pipeline.name in names:
                raise FieldError(
                    f"pipelines[{index}].name", f"expected a unique name, got {pipeline.name!r} twice"
                )
            names.add(pipeline.name)
            pipelines.append(pipeline)
        return tuple(pipelines)
    except FieldError as exc:
        raise PipelinesFileError(f"{source}: {exc}") from None


def _pipeline(value: object, index: int, policy: SourcePolicy, default_model: str) -> DeclaredPipeline:
    where = f"pipelines[{index}]"
    mapping = as_mapping(value, where)
    raw_name = mapping.get("name")
    if isinstance(raw_name, str) and raw_name:
        where = f"{where} ({raw_name})"
    fields = FieldReader(mapping, where)
    name = fields.text("name")
    if not _NAME.fullmatch(name):
        raise FieldError(
            fields.path("name"), f"expected letters, digits, '-', '_' or '.' (at most 64), got {name!r}"
        )
    model_text = fields.text("model", default_model)
    try:
        model_id = ModelId.parse(model_text, field="model")
    except VisionRpcError as exc:
        raise FieldError(fields.path("model"), exc.message) from None
    sources, declared = _sources(fields, policy)
    options = _infer_options(fields.raw("options"), fields.path("options"))
    stream = _stream_options(fields)
    sinks = _sinks(fields)
    autostart = fields.boolean("autostart", True)
    loop = fields.boolean("loop", False)
    restart = _restart(fields.raw("restart"), fields.path("restart"))
    fields.finish()
    return DeclaredPipeline(
        name=name,
        model_id=model_id,
        sources=sources,
        declared_sources=declared,
        options=options,
        stream_options=stream,
        sinks=sinks,
        autostart=autostart,
        loop=loop,
        restart=restart,
    )


def _sinks(fields: FieldReader) -> tuple[SinkConfig, ...]:
    where = fields.path("sinks")
    configs: list[SinkConfig] = []
    for index, item in enumerate(_list_or_empty(fields, "sinks")):
        item_where = f"{where}[{index}]"
        try:
            configs.append(sink_config_from_mapping(as_mapping(item, item_where), item_where))
        except FieldError:
            raise
        except ValueError as exc:  # the sinks' parser names the field itself
            raise FieldError("", str(exc)) from None
    names = [config.name for config in configs]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise FieldError(
                f"{where}[{index}].name", f"expected a name unique among the sinks, got {name!r}"
            )
    return tuple(configs)


def _list_or_empty(fields: FieldReader, key: str) -> list[object]:
    value = fields.raw(key)
    return [] if value is None else as_list(value, fields.path(key))


def _sources(
    fields: FieldReader, policy: SourcePolicy
) -> tuple[tuple[SourceSpec, ...], tuple[DeclaredSource, ...]]:
    where = fields.path("sources")
    items = _list_or_empty(fields, "sources")
    if not 1 <= len(items) <= _MAX_SOURCES:
        raise FieldError(where, f"expected 1 to {_MAX_SOURCES} sources, got {len(items)}")
    specs: list[SourceSpec] = []
    declared: list[DeclaredSource] = []
    for index, item in enumerate(items):
        item_where = f"{where}[{index}]"
        source = FieldReader(as_mapping(item, item_where), item_where)
        path = source.raw("path")
        url = source.raw("url")
        device = source.raw("device")
        source.finish()
        given = [
            key for key, value in (("path", path), ("url", url), ("device", device)) if value is not None
        ]
        if len(given) != 1:
            raise FieldError(
                item_where, f"expected one of path, url or device, got {' and '.join(given) or 'none'}"
            )
        if path is not None and not isinstance(path, str):
            raise FieldError(f"{item_where}.path", "expected text")
        if url is not None and not isinstance(url, str):
            raise FieldError(f"{item_where}.url", "expected text")
        if device is not None and (isinstance(device, bool) or not isinstance(device, int)):
            raise FieldError(f"{item_where}.device", "expected a device index")
        try:
            specs.append(resolve_source(index, path=path, url=url, device=device, policy=policy))
        except VisionRpcError as exc:
            raise FieldError(f"{item_where}.{given[0]}", exc.message) from None
        declared.append(
            DeclaredSource(path=path, url=redact_url(url) if url is not None else None, device=device)
        )
    return tuple(specs), tuple(declared)


def _infer_options(value: object, where: str) -> InferOptions:
    if value is None:
        return InferOptions()
    fields = FieldReader(as_mapping(value, where), where)
    confidence = fields.number("confidence", None, minimum=0.0, maximum=1.0)
    iou = fields.number("iou", None, minimum=0.0, maximum=1.0)
    max_detections = fields.integer("max_detections", None, minimum=1)
    classes = class_filter(fields.raw("classes"), fields.path("classes"))
    fields.finish()
    return InferOptions(
        confidence_threshold=confidence,
        iou_threshold=iou,
        max_detections=max_detections,
        class_ids=classes.class_ids,
        class_names=classes.class_names,
    )


def _stream_options(fields: FieldReader) -> StreamOptions:
    where = fields.path("stream")
    value = fields.raw("stream")
    analytics = analytics_from_yaml(fields.raw("analytics"), fields.path("analytics"))
    redaction = fields.choice("face_redaction", _REDACTIONS, FaceRedaction.NONE)
    if value is None:
        return StreamOptions(analytics=analytics, face_redaction=redaction)
    stream = FieldReader(as_mapping(value, where), where)
    max_fps = stream.number("max_fps", None, minimum=0.0)
    policy = stream.choice("frame_policy", _FRAME_POLICIES, FramePolicy.AUTO)
    stream.finish()
    return StreamOptions(
        max_fps=max_fps or None, frame_policy=policy, analytics=analytics, face_redaction=redaction
    )


def _restart(value: object, where: str) -> RestartPolicy:
    if value is None:
        return RestartPolicy()
    fields = FieldReader(as_mapping(value, where), where)
    initial = fields.number("initial_backoff_s", 1.0, minimum=0.01)
    maximum = fields.number("max_backoff_s", 30.0, minimum=0.01)
    multiplier = fields.number("multiplier", 2.0, minimum=1.0)
    attempts = fields.integer("max_attempts", 0, minimum=0)
    fields.finish()
    assert initial is not None and maximum is not None and multiplier is not None and attempts is not None
    if maximum < initial:
        raise FieldError(
            f"{where}.max_backoff_s", f"expected at least initial_backoff_s ({initial}), got {maximum}"
        )
    return RestartPolicy(initial, maximum, multiplier, attempts)
