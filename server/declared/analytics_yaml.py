"""The `analytics:` section of a declared pipeline, read into server/analytics/types.py values.

    analytics:
      tracking: true      # or {activation_threshold: 0.25, lost_track_frames: 30, minimum_iou: 0.2}
      zones:
        - name: crossing
          polygon: [[0, 180], [640, 180], [640, 272], [0, 272]]
          sources: [0]                     # optional: source indexes (default: every source)
          classes: [person, 2]             # optional: names and ids (default: every class)
          anchor: bottom_center            # bottom_center (default), center, top_center
      lines:
        - name: gate
          start: [320, 0]
          end: [320, 272]

The same rules as a StreamPredictions request's StreamAnalytics (analytics.proto): names unique among zones
and lines (letters, digits, '-', '_', '.'; at most 64), polygons of at least 3 vertices that do not cross
themselves, lines of two distinct points.
"""

from __future__ import annotations

from ..analytics.types import Anchor, ClassFilter, Line, Point, StreamAnalytics, Tracking, Zone
from ..analytics.validation import validate_analytics
from ..errors import InvalidArgumentError
from .fields import FieldError, FieldReader, as_list, as_mapping, number

__all__ = ["analytics_from_yaml"]

_ANCHORS = {anchor.value: anchor for anchor in Anchor}


def analytics_from_yaml(value: object, where: str) -> StreamAnalytics:
    if value is None:
        return StreamAnalytics()
    fields = FieldReader(as_mapping(value, where), where)
    tracking = _tracking(fields.raw("tracking"), fields.path("tracking"))
    zones = tuple(
        _zone(item, f"{fields.path('zones')}[{i}]") for i, item in enumerate(_items(fields, "zones"))
    )
    lines = tuple(
        _line(item, f"{fields.path('lines')}[{i}]") for i, item in enumerate(_items(fields, "lines"))
    )
    fields.finish()
    spec = StreamAnalytics(tracking=tracking, zones=zones, lines=lines)
    try:  # the rules of a StreamPredictions request's analytics, checked by the same code
        validate_analytics(spec, (), where)
    except InvalidArgumentError as exc:
        raise FieldError(exc.violations[0].field if exc.violations else where, exc.message) from None
    return spec


def _items(fields: FieldReader, key: str) -> list[object]:
    value = fields.raw(key)
    return [] if value is None else as_list(value, fields.path(key))


def _tracking(value: object, where: str) -> Tracking:
    if value is None or value is False:
        return Tracking()
    if value is True:
        return Tracking(enabled=True)
    fields = FieldReader(as_mapping(value, where), where)
    enabled = fields.boolean("enabled", True)
    activation = fields.number("activation_threshold", 0.25, minimum=0.0, maximum=1.0)
    lost = fields.integer("lost_track_frames", 30, minimum=1)
    iou = fields.number("minimum_iou", 0.2, minimum=0.0, maximum=1.0)
    fields.finish()
    assert activation is not None and lost is not None and iou is not None
    return Tracking(enabled=enabled, activation_threshold=activation, lost_track_frames=lost, minimum_iou=iou)


def _common(fields: FieldReader) -> tuple[str, frozenset[int], ClassFilter, Anchor]:
    name = fields.text("name")
    sources = frozenset(
        _index(item, f"{fields.path('sources')}[{i}]") for i, item in enumerate(_items(fields, "sources"))
    )
    classes = class_filter(fields.raw("classes"), fields.path("classes"))
    anchor = fields.choice("anchor", _ANCHORS, Anchor.BOTTOM_CENTER)
    return name, sources, classes, anchor


def class_filter(value: object, where: str) -> ClassFilter:
    """`[person, 2]`: names and ids mixed; absent or empty admits every class."""
    if value is None:
        return ClassFilter()
    ids: set[int] = set()
    names: set[str] = set()
    for index, item in enumerate(as_list(value, where)):
        if isinstance(item, bool) or not isinstance(item, int | str) or item == "":
            raise FieldError(f"{where}[{index}]", f"expected a class name or id, got {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise FieldError(f"{where}[{index}]", f"expected a class id >= 0, got {item}")
            ids.add(item)
        else:
            names.add(item)
    return ClassFilter(frozenset(ids), frozenset(names))


def _index(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FieldError(where, f"expected a source index >= 0, got {value!r}")
    return value


def _point(value: object, where: str) -> Point:
    items = as_list(value, where)
    if len(items) != 2:
        raise FieldError(where, f"expected a point [x, y], got {len(items)} value(s)")
    return Point(number(items[0], f"{where}[0]"), number(items[1], f"{where}[1]"))


def _zone(value: object, where: str) -> Zone:
    fields = FieldReader(as_mapping(value, where), where)
    name, sources, classes, anchor = _common(fields)
    polygon_where = fields.path("polygon")
    raw = fields.raw("polygon")
    if raw is None:
        raise FieldError(polygon_where, "is required")
    polygon = tuple(
        _point(item, f"{polygon_where}[{i}]") for i, item in enumerate(as_list(raw, polygon_where))
    )
    fields.finish()
    return Zone(name, polygon, sources, classes, anchor)


def _line(value: object, where: str) -> Line:
    fields = FieldReader(as_mapping(value, where), where)
    name, sources, classes, anchor = _common(fields)
    if not fields.has("start") or not fields.has("end"):
        raise FieldError(fields.path("start" if not fields.has("start") else "end"), "is required")
    start = _point(fields.raw("start"), fields.path("start"))
    end = _point(fields.raw("end"), fields.path("end"))
    fields.finish()
    return Line(name, start, end, sources, classes, anchor)
