"""Stream analytics in the SDK: what a stream declares (tracking, zones, lines) and what it reports.

    gate = Analytics(lines=[Line("gate", start=(320, 0), end=(320, 272), classes=["person"])])
    for message in client.stream(["clips/bikes.mp4"], analytics=gate):
        if isinstance(message, StreamFrame) and message.analytics is not None:
            print(message.analytics.lines, message.analytics.events)

Coordinates are pixels of the source frame (x right, y down). A line's LEFT_TO_RIGHT crossing is seen from its
start facing its end, on the frame as displayed (analytics.proto says so in full).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from visionrpc.v1 import analytics_pb2

from ._types import BoundingBox

__all__ = [
    "Analytics",
    "AnalyticsEvent",
    "FrameAnalytics",
    "Line",
    "LineState",
    "Tracking",
    "Zone",
    "ZoneOccupant",
    "ZoneState",
]

AnchorName = Literal["bottom_center", "center", "top_center"]
EventKind = Literal["zone_entered", "zone_exited", "line_crossed"]
Direction = Literal["left_to_right", "right_to_left"]

_ANCHORS = {
    "bottom_center": analytics_pb2.ANCHOR_BOTTOM_CENTER,
    "center": analytics_pb2.ANCHOR_CENTER,
    "top_center": analytics_pb2.ANCHOR_TOP_CENTER,
}
_KINDS: dict[int, EventKind] = {
    analytics_pb2.ANALYTICS_EVENT_KIND_ZONE_ENTERED: "zone_entered",
    analytics_pb2.ANALYTICS_EVENT_KIND_ZONE_EXITED: "zone_exited",
    analytics_pb2.ANALYTICS_EVENT_KIND_LINE_CROSSED: "line_crossed",
}
_DIRECTIONS: dict[int, Direction] = {
    analytics_pb2.CROSSING_DIRECTION_LEFT_TO_RIGHT: "left_to_right",
    analytics_pb2.CROSSING_DIRECTION_RIGHT_TO_LEFT: "right_to_left",
}


# -- what a stream declares ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tracking:
    """ByteTrack's settings; None keeps the server's default."""

    activation_threshold: float | None = None
    lost_track_frames: int | None = None
    minimum_iou: float | None = None


@dataclass(frozen=True, slots=True)
class Zone:
    """A polygon zone: counts tracked objects inside, reports entries and exits and the time spent inside."""

    name: str
    polygon: Sequence[tuple[float, float]]
    classes: Sequence[str | int] = ()  # names or ids; empty: every class
    sources: Sequence[int] = ()  # source indexes; empty: every source
    anchor: AnchorName = "bottom_center"


@dataclass(frozen=True, slots=True)
class Line:
    """A counting line from `start` to `end`: reports each tracked object crossing it, and which way."""

    name: str
    start: tuple[float, float]
    end: tuple[float, float]
    classes: Sequence[str | int] = ()
    sources: Sequence[int] = ()
    anchor: AnchorName = "bottom_center"


@dataclass(frozen=True, slots=True)
class Analytics:
    """Tracking, zones and lines for a stream (`Client.stream`) or pushed frames (`Client.infer_stream`).
    Zones and lines turn tracking on; `tracking=True` (or a Tracking) tracks without them."""

    tracking: bool | Tracking = False
    zones: Sequence[Zone] = ()
    lines: Sequence[Line] = ()

    def to_proto(self) -> analytics_pb2.StreamAnalytics:
        message = analytics_pb2.StreamAnalytics()
        if self.tracking:
            message.tracking.enabled = True
            if isinstance(self.tracking, Tracking):
                settings = self.tracking
                if settings.activation_threshold is not None:
                    message.tracking.activation_threshold = settings.activation_threshold
                if settings.lost_track_frames is not None:
                    message.tracking.lost_track_frames = settings.lost_track_frames
                if settings.minimum_iou is not None:
                    message.tracking.minimum_iou = settings.minimum_iou
        for zone in self.zones:
            message.zones.append(
                analytics_pb2.Zone(
                    name=zone.name,
                    polygon=[analytics_pb2.Point(x=x, y=y) for x, y in zone.polygon],
                    source_indexes=list(zone.sources),
                    classes=_class_filter(zone.classes),
                    anchor=_ANCHORS[zone.anchor],
                )
            )
        for line in self.lines:
            message.lines.append(
                analytics_pb2.Line(
                    name=line.name,
                    start=analytics_pb2.Point(x=line.start[0], y=line.start[1]),
                    end=analytics_pb2.Point(x=line.end[0], y=line.end[1]),
                    source_indexes=list(line.sources),
                    classes=_class_filter(line.classes),
                    anchor=_ANCHORS[line.anchor],
                )
            )
        return message


def _class_filter(classes: Iterable[str | int]) -> analytics_pb2.ClassFilter:
    ids = [c for c in classes if isinstance(c, int)]
    names = [c for c in classes if isinstance(c, str)]
    return analytics_pb2.ClassFilter(class_ids=ids, class_names=names)


# -- what a stream reports -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalyticsEvent:
    kind: EventKind
    name: str  # the zone's or line's
    source_index: int
    sequence_number: int
    source_timestamp_ms: float
    capture_time: float  # seconds since the epoch
    track_id: int
    class_id: int
    class_name: str
    box: BoundingBox
    direction: Direction | None = None  # line_crossed
    dwell_ms: float = 0.0  # zone_exited: time inside, in source time


@dataclass(frozen=True, slots=True)
class ZoneOccupant:
    track_id: int
    class_id: int
    dwell_ms: float


@dataclass(frozen=True, slots=True)
class ZoneState:
    name: str
    source_index: int
    count: int
    occupants: tuple[ZoneOccupant, ...] = ()
    entered_total: int = 0
    exited_total: int = 0


@dataclass(frozen=True, slots=True)
class LineState:
    name: str
    source_index: int
    left_to_right: int = 0
    right_to_left: int = 0


@dataclass(frozen=True, slots=True)
class FrameAnalytics:
    """The zones and lines watching a frame's source after it, and the events it caused, in order."""

    zones: tuple[ZoneState, ...] = ()
    lines: tuple[LineState, ...] = ()
    events: tuple[AnalyticsEvent, ...] = field(default=())


def analytics_event_from_proto(message: analytics_pb2.AnalyticsEvent) -> AnalyticsEvent:
    b = message.box
    return AnalyticsEvent(
        kind=_KINDS.get(message.kind, "line_crossed"),
        name=message.name,
        source_index=message.source_index,
        sequence_number=message.sequence_number,
        source_timestamp_ms=message.source_timestamp_ms,
        capture_time=message.capture_time.ToNanoseconds() / 1e9,
        track_id=message.track_id,
        class_id=message.class_id,
        class_name=message.class_name,
        box=BoundingBox(b.x_min, b.y_min, b.x_max, b.y_max),
        direction=_DIRECTIONS.get(message.direction),
        dwell_ms=message.dwell_ms,
    )


def frame_analytics_from_proto(message: analytics_pb2.FrameAnalytics) -> FrameAnalytics:
    return FrameAnalytics(
        zones=tuple(
            ZoneState(
                name=z.name,
                source_index=z.source_index,
                count=z.count,
                occupants=tuple(ZoneOccupant(o.track_id, o.class_id, o.dwell_ms) for o in z.occupants),
                entered_total=z.entered_total,
                exited_total=z.exited_total,
            )
            for z in message.zones
        ),
        lines=tuple(
            LineState(ln.name, ln.source_index, ln.left_to_right, ln.right_to_left) for ln in message.lines
        ),
        events=tuple(analytics_event_from_proto(e) for e in message.events),
    )


def analytics_to_proto(analytics: Analytics | analytics_pb2.StreamAnalytics) -> analytics_pb2.StreamAnalytics:
    """Accepts the SDK's Analytics or the generated message as it is."""
    return analytics if isinstance(analytics, analytics_pb2.StreamAnalytics) else analytics.to_proto()
