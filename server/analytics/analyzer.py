"""A stream's analytics: per source, a tracker and the zones and lines watching that source.

Sources are independent: each has its own tracker (track ids count from 1 per source) and its own zone and
line state, so a zone watching two cameras reports two ZoneStates. Frames of a source must come in order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..domain import Prediction
from .counters import FrameRef, LineCounter, ZoneCounter
from .tracker import Tracker
from .types import AnalyticsEvent, FrameAnalytics, StreamAnalytics
from .validation import validate_analytics

__all__ = ["StreamAnalyzer", "validate_analytics"]


@dataclass(slots=True)
class _Source:
    tracker: Tracker
    zones: tuple[ZoneCounter, ...]
    lines: tuple[LineCounter, ...]


class StreamAnalyzer:
    """Tracking, zones and lines of one stream, per source. One caller at a time.

    Example:
        analyzer = StreamAnalyzer(options.analytics)
        prediction, analytics = analyzer.analyze(0, frame.sequence_number, frame.timestamp_ms,
                                                 frame.capture_time, prediction)
    """

    def __init__(self, spec: StreamAnalytics) -> None:
        self.spec = spec
        self._sources: dict[int, _Source] = {}  # built on a source's first frame

    def analyze(
        self,
        source_index: int,
        sequence_number: int,
        timestamp_ms: float,
        capture_time: float,
        prediction: Prediction,
    ) -> tuple[Prediction, FrameAnalytics]:
        """The next frame of `source_index`: its prediction with track ids, and what its zones and lines saw.

        Events come zones first (in declared order), then lines, each counter's ordered by track id.
        """
        source = self._sources.get(source_index)
        if source is None:
            source = self._sources[source_index] = self._new_source(source_index)
        ids, alive = source.tracker.update(prediction.detections)
        if any(ids):
            prediction = dataclasses.replace(
                prediction,
                detections=tuple(
                    dataclasses.replace(det, track_id=track_id) if track_id else det
                    for det, track_id in zip(prediction.detections, ids, strict=True)
                ),
            )
        if not source.zones and not source.lines:
            return prediction, FrameAnalytics()
        tracked = sorted((d for d in prediction.detections if d.track_id), key=lambda d: d.track_id)
        frame = FrameRef(source_index, sequence_number, timestamp_ms, capture_time)
        events: list[AnalyticsEvent] = []
        zone_states = []
        for zone in source.zones:
            zone_state, zone_events = zone.update(frame, tracked, alive)
            zone_states.append(zone_state)
            events.extend(zone_events)
        line_states = []
        for line in source.lines:
            line_state, line_events = line.update(frame, tracked, alive)
            line_states.append(line_state)
            events.extend(line_events)
        return prediction, FrameAnalytics(tuple(zone_states), tuple(line_states), tuple(events))

    def _new_source(self, source_index: int) -> _Source:
        spec = self.spec
        return _Source(
            tracker=Tracker(spec.tracking),
            zones=tuple(ZoneCounter(z, source_index) for z in spec.zones if z.watches(source_index)),
            lines=tuple(LineCounter(line, source_index) for line in spec.lines if line.watches(source_index)),
        )
