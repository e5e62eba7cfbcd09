"""A request's post-processing options, resolved against its model: defaults filled from the manifest, class
names turned into ids (unknown ones refused)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..domain import InferOptions
from ..errors import InvalidArgumentError
from ..manifest import Decoder, ModelManifest

__all__ = ["DecodeOptions", "resolve_options"]

_NAME_LIST_LIMIT = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class DecodeOptions:
    """Post-processing options with every default resolved (see `resolve_options`).

    `class_ids` None means every class; top_k applies to classifiers, max_detections and iou to detectors.
    """

    confidence: float
    iou: float
    max_detections: int
    class_ids: frozenset[int] | None = None
    top_k: int
    # NMS across classes (the manifest's agnostic_nms): a box suppresses overlapping boxes of any class.
    agnostic_nms: bool = False

    def __post_init__(self) -> None:
        for name in ("confidence", "iou"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"expected {name} in [0, 1], got {value}")
        if self.max_detections < 1 or self.top_k < 1:
            raise ValueError(
                f"expected max_detections and top_k >= 1, got {self.max_detections}, {self.top_k}"
            )


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_NAME_LIST_LIMIT])
    more = len(names) - _NAME_LIST_LIMIT
    return f"[{shown}, ... {more} more]" if more > 0 else f"[{shown}]"


def resolve_options(options: InferOptions, manifest: ModelManifest) -> DecodeOptions:
    """Fills the request's unset options from the model's defaults and turns class names into ids.

    `class_names` and `class_ids` combine as a union; both empty means every class. Classifiers apply a
    confidence threshold only when the request sets one: their answer is "the top_k classes", and a
    detector-style default threshold would silently shorten it.

    Raises:
        InvalidArgumentError: reason UNKNOWN_CLASS, with a field violation on options.class_names or
            options.class_ids, for a name the model does not know or an id outside [0, number of classes).
    """
    known = manifest.class_names
    wanted: set[int] = set()
    if options.class_names:
        index = {name: class_id for class_id, name in enumerate(known)}
        unknown = sorted(options.class_names - index.keys())
        if unknown:
            raise InvalidArgumentError.for_field(
                "options.class_names",
                f"expected one of the model's class names {_listing(known)}, got unknown {unknown}",
                reason="UNKNOWN_CLASS",
            )
        wanted.update(index[name] for name in options.class_names)
    if options.class_ids:
        # A model that declares no names has an unknown class count: only negative ids are certainly wrong.
        bad = sorted(i for i in options.class_ids if i < 0 or (known and i >= len(known)))
        if bad:
            expected = f"[0, {len(known)})" if known else "non-negative ids"
            raise InvalidArgumentError.for_field(
                "options.class_ids",
                f"expected class ids in {expected}, got {bad}",
                reason="UNKNOWN_CLASS",
            )
        wanted.update(options.class_ids)

    if manifest.decoder is Decoder.CLASSIFICATION:
        confidence = options.confidence_threshold if options.confidence_threshold is not None else 0.0
    else:
        confidence = (
            options.confidence_threshold
            if options.confidence_threshold is not None
            else manifest.default_confidence
        )
    return DecodeOptions(
        confidence=confidence,
        iou=options.iou_threshold if options.iou_threshold is not None else manifest.default_iou,
        max_detections=(
            options.max_detections if options.max_detections is not None else manifest.default_max_detections
        ),
        class_ids=frozenset(wanted) if wanted else None,
        top_k=options.top_k if options.top_k is not None else manifest.default_top_k,
        agnostic_nms=manifest.agnostic_nms,
    )
