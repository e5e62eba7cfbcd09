"""validate_analytics: each mistake is refused with reason INVALID_ANALYTICS and the field that holds it."""

from __future__ import annotations

import math

import pytest
from visionrpc.server.analytics.types import ClassFilter, Line, Point, StreamAnalytics, Zone
from visionrpc.server.analytics.validation import MAX_REGIONS, MAX_VERTICES, validate_analytics
from visionrpc.server.errors import InvalidArgumentError

FIELD = "stream_options.analytics"
CLASSES = ("person", "bicycle", "car")
SQUARE = (Point(0, 0), Point(10, 0), Point(10, 10), Point(0, 10))
LINE = Line("gate", Point(0, 5), Point(10, 5))


def zone(name: str = "room", polygon: tuple[Point, ...] = SQUARE, **kwargs: object) -> Zone:
    return Zone(name, polygon, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        (StreamAnalytics(zones=(zone("a b"),)), "zones[0].name", "letters, digits"),
        (StreamAnalytics(zones=(zone(""),)), "zones[0].name", "1 to 64"),
        (StreamAnalytics(zones=(zone("x" * 65),)), "zones[0].name", "1 to 64"),
        (StreamAnalytics(zones=(zone("gate"),), lines=(LINE,)), "lines[0].name", "unique"),
        (StreamAnalytics(zones=(zone(), zone(polygon=SQUARE[:2]))), "zones[1].name", "unique"),
        (StreamAnalytics(zones=(zone(), zone("b", SQUARE[:2]))), "zones[1].polygon", "3 to"),
        (
            StreamAnalytics(zones=(zone(polygon=(Point(0, 0), Point(10, 10), Point(10, 0), Point(0, 10))),)),
            "zones[0].polygon",
            "simple polygon",
        ),
        (
            StreamAnalytics(zones=(zone(polygon=(Point(0, 0), Point(5, 5), Point(10, 10))),)),
            "zones[0].polygon",
            "area",
        ),
        (
            StreamAnalytics(zones=(zone(polygon=(Point(0, 0), Point(math.nan, 0), Point(0, 10))),)),
            "zones[0].polygon[1]",
            "finite",
        ),
        (
            StreamAnalytics(zones=(zone(polygon=(Point(0, 0), Point(math.inf, 0), Point(0, 10))),)),
            "zones[0].polygon[1]",
            "finite",
        ),
        (
            StreamAnalytics(zones=(zone(polygon=tuple(Point(i, i % 2) for i in range(MAX_VERTICES + 1))),)),
            "zones[0].polygon",
            f"3 to {MAX_VERTICES}",
        ),
        (
            StreamAnalytics(lines=(Line("gate", Point(1, 1), Point(1, 1)),)),
            "lines[0].end",
            "other than the start",
        ),
        (StreamAnalytics(lines=(Line("gate", Point(1, 1), Point(1, math.nan)),)), "lines[0].end", "finite"),
        (
            StreamAnalytics(zones=(zone(classes=ClassFilter(class_names=frozenset({"unicorn"}))),)),
            "zones[0].classes.class_names",
            "unicorn",
        ),
        (
            StreamAnalytics(
                lines=(Line("gate", LINE.start, LINE.end, classes=ClassFilter(class_ids=frozenset({3}))),)
            ),
            "lines[0].classes.class_ids",
            "below 3",
        ),
        (
            StreamAnalytics(lines=tuple(Line(f"l{i}", LINE.start, LINE.end) for i in range(MAX_REGIONS + 1))),
            "",
            f"at most {MAX_REGIONS}",
        ),
        (StreamAnalytics(zones=(zone(source_indexes=frozenset({2})),)), "zones[0].source_indexes", "below 2"),
    ],
)
def test_mistakes_are_refused_with_their_field(spec: StreamAnalytics, field: str, words: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_analytics(spec, CLASSES, FIELD, sources=2)
    error = caught.value
    assert error.reason == "INVALID_ANALYTICS"
    assert [v.field for v in error.violations] == [f"{FIELD}.{field}" if field else FIELD]
    assert words in error.violations[0].description


@pytest.mark.parametrize(
    ("spec", "class_names"),
    [
        (StreamAnalytics(), CLASSES),
        (StreamAnalytics(zones=(zone(),), lines=(LINE,)), CLASSES),
        # A concave polygon is fine; only crossing edges are not.
        (
            StreamAnalytics(
                zones=(zone(polygon=(Point(0, 0), Point(10, 0), Point(5, 2), Point(10, 10), Point(0, 10))),)
            ),
            CLASSES,
        ),
        (StreamAnalytics(zones=(zone(classes=ClassFilter(frozenset({2}), frozenset({"person"}))),)), CLASSES),
        # Model classes unknown (the servicer's first pass): names and ids are checked later.
        (StreamAnalytics(zones=(zone(classes=ClassFilter(frozenset({99}), frozenset({"unicorn"}))),)), ()),
    ],
)
def test_sound_analytics_pass(spec: StreamAnalytics, class_names: tuple[str, ...]) -> None:
    validate_analytics(spec, class_names, FIELD)
