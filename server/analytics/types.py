"""Protobuf-free values of stream analytics: what a stream declares (tracking, zones, lines) and what it
reports per frame (zone and line state, events). The contract's analytics.proto says what each field means;
the names here are the contract's.

Coordinates are pixels of the source frame as decoded (x right, y down).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..domain import BoundingBox

__all__ = [
    "AnalyticsEvent",
    "AnalyticsEventKind",
    "Anchor",
    "ClassFilter",
    "CrossingDirection",
    "FrameAnalytics",
    "Line",
    "LineState",
    "Point",
    "StreamAnalytics",
    "Tracking",
    "Zone",
    "ZoneOccupant",
    "ZoneState",
]


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Tracking:
    """ByteTrack's settings; `enabled` is implied by any zone or line (StreamAnalytics.active)."""

    enabled: bool = False
    activation_threshold: float = 0.25
    lost_track_frames: int = 30
    minimum_iou: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.activation_threshold <= 1.0:
            raise ValueError(f"expected activation_threshold in [0, 1], got {self.activation_threshold}")
        if self.lost_track_frames < 1:
            raise ValueError(f"expected lost_track_frames >= 1, got {self.lost_track_frames}")
        if not 0.0 <= self.minimum_iou <= 1.0:
            raise ValueError(f"expected minimum_iou in [0, 1], got {self.minimum_iou}")


@dataclass(frozen=True, slots=True)
class ClassFilter:
    """The union of ids and names; empty counts every class."""

    class_ids: frozenset[int] = frozenset()
    class_names: frozenset[str] = frozenset()

    def admits(self, class_id: int, class_name: str) -> bool:
        if not self.class_ids and not self.class_names:
            return True
        return class_id in self.class_ids or class_name in self.class_names


class Anchor(enum.Enum):
    BOTTOM_CENTER = "bottom_center"
    CENTER = "center"
    TOP_CENTER = "top_center"

    def of(self, box: BoundingBox) -> Point:
        x = (box.x_min + box.x_max) / 2.0
        if self is Anchor.CENTER:
            return Point(x, (box.y_min + box.y_max) / 2.0)
        return Point(x, box.y_min if self is Anchor.TOP_CENTER else box.y_max)


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    polygon: tuple[Point, ...]
    source_indexes: frozenset[int] = frozenset()  # empty: every source
    classes: ClassFilter = ClassFilter()
    anchor: Anchor = Anchor.BOTTOM_CENTER

    def watches(self, source_index: int) -> bool:
        return not self.source_indexes or source_index in self.source_indexes


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    start: Point
    end: Point
    source_indexes: frozenset[int] = frozenset()
    classes: ClassFilter = ClassFilter()
    anchor: Anchor = Anchor.BOTTOM_CENTER

    def watches(self, source_index: int) -> bool:
        return not self.source_indexes or source_index in self.source_indexes


@dataclass(frozen=True, slots=True)
class StreamAnalytics:
    """What a stream declares. Hashable: it is part of what makes two stream requests the same pipeline."""

    tracking: Tracking = Tracking()
    zones: tuple[Zone, ...] = ()
    lines: tuple[Line, ...] = ()

    @property
    def active(self) -> bool:
        """Whether the stream tracks at all: zones and lines follow objects, so they turn tracking on."""
        return self.tracking.enabled or bool(self.zones) or bool(self.lines)


class AnalyticsEventKind(enum.Enum):
    ZONE_ENTERED = "zone_entered"
    ZONE_EXITED = "zone_exited"
    LINE_CROSSED = "line_crossed"


class CrossingDirection(enum.Enum):
    """Seen from the line's start facing its end, on the frame as displayed (y down)."""

    LEFT_TO_RIGHT = "left_to_right"
    RIGHT_TO_LEFT = "right_to_left"


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    kind: AnalyticsEventKind
    name: str  # the zone's or line's
    source_index: int
    sequence_number: int
    source_timestamp_ms: float
    capture_time: float  # wall clock, time.time()
    track_id: int
    class_id: int
    class_name: str
    box: BoundingBox
    direction: CrossingDirection | None = None  # LINE_CROSSED
    dwell_ms: float = 0.0  # ZONE_EXITED


@dataclass(frozen=True, slots=True)
class ZoneOccupant:
    track_id: int
    class_id: int
    dwell_ms: float


@dataclass(frozen=True, slots=True)
class ZoneState:
    name: str
    source_index: int
    occupants: tuple[ZoneOccupant, ...] = ()
    entered_total: int = 0
    exited_total: int = 0

    @property
    def count(self) -> int:
        return len(self.occupants)


@dataclass(frozen=True, slots=True)
class LineState:
    name: str
    source_index: int
    left_to_right: int = 0
    right_to_left: int = 0


@dataclass(frozen=True, slots=True)
class FrameAnalytics:
    """One frame's analytics: the zones and lines watching its source, and the events it caused in order."""

    zones: tuple[ZoneState, ...] = ()
    lines: tuple[LineState, ...] = ()
    events: tuple[AnalyticsEvent, ...] = field(default=())
