"""Checks a stream's analytics before anything runs: names, geometry, class filters, limits.

Every problem is an InvalidArgumentError (reason INVALID_ANALYTICS) naming the field inside the request, e.g.
"stream_options.analytics.zones[1].polygon", so a client can point at exactly what it sent wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NoReturn

from ..errors import InvalidArgumentError
from .geometry import polygon_area, segments_intersect
from .types import ClassFilter, Point, StreamAnalytics

__all__ = ["MAX_CLASS_FILTER", "MAX_REGIONS", "MAX_VERTICES", "NAME_PATTERN", "validate_analytics"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Bounds on what one request may ask the analytics to do per frame (each zone tests every track).
MAX_REGIONS = 64  # zones and lines together
MAX_VERTICES = 256  # per polygon: the self-intersection check is quadratic in them
MAX_CLASS_FILTER = 1024  # ids plus names, per filter
# A coordinate further out than this is a mistake, not a frame (no source is a billion pixels wide).
_MAX_COORDINATE = 1e7
_REASON = "INVALID_ANALYTICS"


def validate_analytics(
    spec: StreamAnalytics, class_names: Sequence[str], field: str, *, sources: int | None = None
) -> None:
    """Raises InvalidArgumentError (reason INVALID_ANALYTICS) for the first problem found in `spec`.

    Args:
        class_names: the model's classes; empty when unknown (class filters are then checked later, against
            the model that runs the stream).
        field: the path of `spec` in the request, prefixed to each violation's field.
        sources: the stream's number of sources, when known: a source index past it is refused.

    Example:
        validate_analytics(spec, predictor.model.manifest.class_names, "stream_options.analytics")
    """
    regions = len(spec.zones) + len(spec.lines)
    if regions > MAX_REGIONS:
        _fail(field, f"expected at most {MAX_REGIONS} zones and lines together, got {regions}")
    seen: set[str] = set()
    for kind, index, name in [
        *(("zones", i, zone.name) for i, zone in enumerate(spec.zones)),
        *(("lines", i, line.name) for i, line in enumerate(spec.lines)),
    ]:
        path = f"{field}.{kind}[{index}].name"
        if NAME_PATTERN.fullmatch(name) is None:
            _fail(path, f"expected 1 to 64 letters, digits, '.', '_' or '-', got {name!r}")
        if name in seen:
            _fail(path, f"expected a name unique among the zones and lines, got {name!r} twice")
        seen.add(name)
    for index, zone in enumerate(spec.zones):
        path = f"{field}.zones[{index}]"
        _check_polygon(zone.polygon, f"{path}.polygon")
        _check_classes(zone.classes, class_names, f"{path}.classes")
        _check_sources(zone.source_indexes, sources, f"{path}.source_indexes")
    for index, line in enumerate(spec.lines):
        path = f"{field}.lines[{index}]"
        _check_point(line.start, f"{path}.start")
        _check_point(line.end, f"{path}.end")
        if line.start == line.end:
            _fail(f"{path}.end", f"expected an end other than the start, got {line.start} twice")
        _check_classes(line.classes, class_names, f"{path}.classes")
        _check_sources(line.source_indexes, sources, f"{path}.source_indexes")


def _check_point(point: Point, path: str) -> None:
    if not all(math.isfinite(v) and abs(v) <= _MAX_COORDINATE for v in (point.x, point.y)):
        _fail(path, f"expected finite coordinates within +-{_MAX_COORDINATE:g} pixels, got {point}")


def _check_polygon(polygon: Sequence[Point], path: str) -> None:
    if not 3 <= len(polygon) <= MAX_VERTICES:
        _fail(path, f"expected 3 to {MAX_VERTICES} vertices, got {len(polygon)}")
    for index, point in enumerate(polygon):
        _check_point(point, f"{path}[{index}]")
    count = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % count]) for i in range(count)]
    for i in range(count):
        # Adjacent edges share a vertex; every other pair must not meet at all.
        for j in range(i + 2, count):
            if i == 0 and j == count - 1:
                continue
            if segments_intersect(*edges[i], *edges[j]):
                _fail(path, f"expected a simple polygon, got edges {i} and {j} crossing or touching")
    if polygon_area(polygon) == 0.0:
        _fail(path, "expected a polygon with an area, got all vertices on one line")


def _check_classes(classes: ClassFilter, class_names: Sequence[str], path: str) -> None:
    size = len(classes.class_ids) + len(classes.class_names)
    if size > MAX_CLASS_FILTER:
        _fail(path, f"expected at most {MAX_CLASS_FILTER} class ids and names, got {size}")
    if not class_names:
        return
    unknown_ids = sorted(i for i in classes.class_ids if i >= len(class_names))
    if unknown_ids:
        _fail(
            f"{path}.class_ids",
            f"expected class ids below {len(class_names)} (the model's classes), got {unknown_ids[:5]}",
        )
    known = set(class_names)
    unknown_names = sorted(name for name in classes.class_names if name not in known)
    if unknown_names:
        _fail(f"{path}.class_names", f"expected the model's class names, got unknown {unknown_names[:5]}")


def _check_sources(indexes: frozenset[int], sources: int | None, path: str) -> None:
    if sources is not None and any(index >= sources for index in indexes):
        _fail(path, f"expected source indexes below {sources}, got {sorted(indexes)}")


def _fail(path: str, message: str) -> NoReturn:
    raise InvalidArgumentError.for_field(path, message, reason=_REASON)
