"""Zones and lines of one source: what each tracked detection's anchor did on a frame, as state and events.

Each counter sees only the detections its class filter admits, and only tracked ones (track id > 0). The
definitions (docs/analytics.md):
- Zone: a track is inside while its last admitted anchor is inside the polygon (even-odd rule). It ENTERS on
  the frame its anchor is first seen inside, EXITS on the frame it is seen outside (dwell: entering frame to
  that frame, in source time) or on the frame its track is retired while inside (dwell: entering frame to the
  last frame it was seen).
- Line: with s = sign((end - start) x (anchor - start)) (y down; + is the right of start->end), a track
  CROSSES when s changes sign between two of its appearances and the segment between those anchors meets the
  line segment: -1 -> +1 is LEFT_TO_RIGHT. An anchor exactly on the line (s = 0) is skipped, so touching the
  line and going back is no crossing, and touching it and going on is one.
Events of one counter on one frame are ordered by track id, retired tracks first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..domain import BoundingBox, Detection
from .geometry import point_in_polygon, segments_intersect, side
from .types import (
    AnalyticsEvent,
    AnalyticsEventKind,
    CrossingDirection,
    Line,
    LineState,
    Point,
    Zone,
    ZoneOccupant,
    ZoneState,
)

__all__ = ["FrameRef", "LineCounter", "ZoneCounter"]


@dataclass(frozen=True, slots=True)
class FrameRef:
    """The frame being analysed, as events name it."""

    source_index: int
    sequence_number: int
    timestamp_ms: float
    capture_time: float

    def event(
        self,
        kind: AnalyticsEventKind,
        name: str,
        track_id: int,
        class_id: int,
        class_name: str,
        box: BoundingBox,
        *,
        direction: CrossingDirection | None = None,
        dwell_ms: float = 0.0,
    ) -> AnalyticsEvent:
        return AnalyticsEvent(
            kind=kind,
            name=name,
            source_index=self.source_index,
            sequence_number=self.sequence_number,
            source_timestamp_ms=self.timestamp_ms,
            capture_time=self.capture_time,
            track_id=track_id,
            class_id=class_id,
            class_name=class_name,
            box=box,
            direction=direction,
            dwell_ms=dwell_ms,
        )


@dataclass(slots=True)
class _Occupant:
    entered_ms: float
    last_seen_ms: float
    class_id: int
    class_name: str
    box: BoundingBox


class ZoneCounter:
    """One zone on one source."""

    def __init__(self, zone: Zone, source_index: int) -> None:
        self.zone = zone
        self._source_index = source_index
        self._inside: dict[int, _Occupant] = {}  # by track id
        self._entered = 0
        self._exited = 0

    def update(
        self, frame: FrameRef, detections: Sequence[Detection], alive: frozenset[int]
    ) -> tuple[ZoneState, list[AnalyticsEvent]]:
        """`detections`: the frame's tracked ones, by track id; `alive`: the tracks not retired."""
        zone = self.zone
        events: list[AnalyticsEvent] = []
        for track_id in sorted(set(self._inside) - alive):
            gone = self._inside.pop(track_id)
            events.append(self._exit(frame, track_id, gone, gone.box, gone.last_seen_ms - gone.entered_ms))
        for det in detections:
            if not zone.classes.admits(det.class_id, det.class_name):
                continue
            inside = point_in_polygon(zone.anchor.of(det.box), zone.polygon)
            occupant = self._inside.get(det.track_id)
            if inside and occupant is None:
                self._inside[det.track_id] = _Occupant(
                    frame.timestamp_ms, frame.timestamp_ms, det.class_id, det.class_name, det.box
                )
                self._entered += 1
                events.append(
                    frame.event(
                        AnalyticsEventKind.ZONE_ENTERED, zone.name, det.track_id,
                        det.class_id, det.class_name, det.box,
                    )
                )  # fmt: skip
            elif inside and occupant is not None:
                occupant.last_seen_ms = frame.timestamp_ms
                occupant.class_id, occupant.class_name, occupant.box = det.class_id, det.class_name, det.box
            elif occupant is not None:
                del self._inside[det.track_id]
                occupant.class_id, occupant.class_name = det.class_id, det.class_name
                events.append(
                    self._exit(
                        frame, det.track_id, occupant, det.box, frame.timestamp_ms - occupant.entered_ms
                    )
                )
        occupants = tuple(
            ZoneOccupant(track_id, o.class_id, max(0.0, frame.timestamp_ms - o.entered_ms))
            for track_id, o in sorted(self._inside.items())
        )
        state = ZoneState(zone.name, self._source_index, occupants, self._entered, self._exited)
        return state, events

    def _exit(
        self, frame: FrameRef, track_id: int, occupant: _Occupant, box: BoundingBox, dwell_ms: float
    ) -> AnalyticsEvent:
        self._exited += 1
        return frame.event(
            AnalyticsEventKind.ZONE_EXITED, self.zone.name, track_id, occupant.class_id, occupant.class_name,
            box, dwell_ms=max(0.0, dwell_ms),
        )  # fmt: skip


class LineCounter:
    """One line on one source."""

    def __init__(self, line: Line, source_index: int) -> None:
        self.line = line
        self._source_index = source_index
        self._last: dict[
            int, tuple[int, Point]
        ] = {}  # track id -> (side, anchor) of its last off-line anchor
        self._counts = {CrossingDirection.LEFT_TO_RIGHT: 0, CrossingDirection.RIGHT_TO_LEFT: 0}

    def update(
        self, frame: FrameRef, detections: Sequence[Detection], alive: frozenset[int]
    ) -> tuple[LineState, list[AnalyticsEvent]]:
        """`detections`: the frame's tracked ones, by track id; `alive`: the tracks not retired."""
        line = self.line
        for track_id in set(self._last) - alive:
            del self._last[track_id]
        events: list[AnalyticsEvent] = []
        for det in detections:
            if not line.classes.admits(det.class_id, det.class_name):
                continue
            anchor = line.anchor.of(det.box)
            now = side(line.start, line.end, anchor)
            if now == 0:
                continue
            before = self._last.get(det.track_id)
            self._last[det.track_id] = (now, anchor)
            if before is None or before[0] == now:
                continue
            if not segments_intersect(before[1], anchor, line.start, line.end):
                continue  # crossed the line's extension, beyond its ends
            direction = CrossingDirection.LEFT_TO_RIGHT if now > 0 else CrossingDirection.RIGHT_TO_LEFT
            self._counts[direction] += 1
            events.append(
                frame.event(
                    AnalyticsEventKind.LINE_CROSSED, line.name, det.track_id, det.class_id, det.class_name,
                    det.box, direction=direction,
                )
            )  # fmt: skip
        state = LineState(
            line.name,
            self._source_index,
            self._counts[CrossingDirection.LEFT_TO_RIGHT],
            self._counts[CrossingDirection.RIGHT_TO_LEFT],
        )
        return state, events
