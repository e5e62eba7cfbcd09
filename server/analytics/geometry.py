"""Plane geometry of zones and lines, in pixels with y down (the frame as displayed).

Plain floats rather than numpy: a stream has a handful of zones, lines and tracks per frame, and per-call
numpy overhead would cost more than the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Point

__all__ = ["cross", "point_in_polygon", "polygon_area", "segments_intersect", "side"]


def cross(origin: Point, a: Point, b: Point) -> float:
    """(a - origin) x (b - origin): positive when b lies to the right of origin->a on a y-down frame."""
    return (a.x - origin.x) * (b.y - origin.y) - (a.y - origin.y) * (b.x - origin.x)


def side(start: Point, end: Point, point: Point) -> int:
    """Which side of the line start->end `point` is on: +1 right, -1 left, 0 on it (analytics.proto's
    CrossingDirection: seen from start facing end, y down)."""
    value = cross(start, end, point)
    return (value > 0) - (value < 0)


def segments_intersect(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether the closed segments ab and cd share a point (touching and collinear overlap count)."""
    d1, d2 = cross(c, d, a), cross(c, d, b)
    d3, d4 = cross(a, b, c), cross(a, b, d)
    if ((d1 > 0 and d2 < 0) or (d1 < 0 and d2 > 0)) and ((d3 > 0 and d4 < 0) or (d3 < 0 and d4 > 0)):
        return True
    return (
        (d1 == 0 and _on_segment(c, d, a))
        or (d2 == 0 and _on_segment(c, d, b))
        or (d3 == 0 and _on_segment(a, b, c))
        or (d4 == 0 and _on_segment(a, b, d))
    )


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    """`p`, known to be collinear with ab, lies within its bounding box."""
    return min(a.x, b.x) <= p.x <= max(a.x, b.x) and min(a.y, b.y) <= p.y <= max(a.y, b.y)


def polygon_area(polygon: Sequence[Point]) -> float:
    """The unsigned area (shoelace)."""
    total = 0.0
    for i, p in enumerate(polygon):
        q = polygon[(i + 1) % len(polygon)]
        total += p.x * q.y - q.x * p.y
    return abs(total) / 2.0


def point_in_polygon(point: Point, polygon: Sequence[Point]) -> bool:
    """Even-odd rule (a ray to the right). Points exactly on an edge may fall either way; anchors are
    floats taken from detector boxes, so that case does not decide anything in practice."""
    inside = False
    x, y = point.x, point.y
    j = len(polygon) - 1
    for i, p in enumerate(polygon):
        q = polygon[j]
        if (p.y > y) != (q.y > y) and x < (q.x - p.x) * (y - p.y) / (q.y - p.y) + p.x:
            inside = not inside
        j = i
    return inside
