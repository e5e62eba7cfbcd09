import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionrpc.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Anchor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANCHOR_UNSPECIFIED: _ClassVar[Anchor]
    ANCHOR_BOTTOM_CENTER: _ClassVar[Anchor]
    ANCHOR_CENTER: _ClassVar[Anchor]
    ANCHOR_TOP_CENTER: _ClassVar[Anchor]

class AnalyticsEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANALYTICS_EVENT_KIND_UNSPECIFIED: _ClassVar[AnalyticsEventKind]
    ANALYTICS_EVENT_KIND_ZONE_ENTERED: _ClassVar[AnalyticsEventKind]
    ANALYTICS_EVENT_KIND_ZONE_EXITED: _ClassVar[AnalyticsEventKind]
    ANALYTICS_EVENT_KIND_LINE_CROSSED: _ClassVar[AnalyticsEventKind]

class CrossingDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CROSSING_DIRECTION_UNSPECIFIED: _ClassVar[CrossingDirection]
    CROSSING_DIRECTION_LEFT_TO_RIGHT: _ClassVar[CrossingDirection]
    CROSSING_DIRECTION_RIGHT_TO_LEFT: _ClassVar[CrossingDirection]
ANCHOR_UNSPECIFIED: Anchor
ANCHOR_BOTTOM_CENTER: Anchor
ANCHOR_CENTER: Anchor
ANCHOR_TOP_CENTER: Anchor
ANALYTICS_EVENT_KIND_UNSPECIFIED: AnalyticsEventKind
ANALYTICS_EVENT_KIND_ZONE_ENTERED: AnalyticsEventKind
ANALYTICS_EVENT_KIND_ZONE_EXITED: AnalyticsEventKind
ANALYTICS_EVENT_KIND_LINE_CROSSED: AnalyticsEventKind
CROSSING_DIRECTION_UNSPECIFIED: CrossingDirection
CROSSING_DIRECTION_LEFT_TO_RIGHT: CrossingDirection
CROSSING_DIRECTION_RIGHT_TO_LEFT: CrossingDirection

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Tracking(_message.Message):
    __slots__ = ("enabled", "activation_threshold", "lost_track_frames", "minimum_iou")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LOST_TRACK_FRAMES_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_IOU_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    activation_threshold: float
    lost_track_frames: int
    minimum_iou: float
    def __init__(self, enabled: _Optional[bool] = ..., activation_threshold: _Optional[float] = ..., lost_track_frames: _Optional[int] = ..., minimum_iou: _Optional[float] = ...) -> None: ...

class ClassFilter(_message.Message):
    __slots__ = ("class_ids", "class_names")
    CLASS_IDS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    class_ids: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, class_ids: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Zone(_message.Message):
    __slots__ = ("name", "polygon", "source_indexes", "classes", "anchor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLYGON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    polygon: _containers.RepeatedCompositeFieldContainer[Point]
    source_indexes: _containers.RepeatedScalarFieldContainer[int]
    classes: ClassFilter
    anchor: Anchor
    def __init__(self, name: _Optional[str] = ..., polygon: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., source_indexes: _Optional[_Iterable[int]] = ..., classes: _Optional[_Union[ClassFilter, _Mapping]] = ..., anchor: _Optional[_Union[Anchor, str]] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ("name", "start", "end", "source_indexes", "classes", "anchor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    start: Point
    end: Point
    source_indexes: _containers.RepeatedScalarFieldContainer[int]
    classes: ClassFilter
    anchor: Anchor
    def __init__(self, name: _Optional[str] = ..., start: _Optional[_Union[Point, _Mapping]] = ..., end: _Optional[_Union[Point, _Mapping]] = ..., source_indexes: _Optional[_Iterable[int]] = ..., classes: _Optional[_Union[ClassFilter, _Mapping]] = ..., anchor: _Optional[_Union[Anchor, str]] = ...) -> None: ...

class StreamAnalytics(_message.Message):
    __slots__ = ("tracking", "zones", "lines")
    TRACKING_FIELD_NUMBER: _ClassVar[int]
    ZONES_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    tracking: Tracking
    zones: _containers.RepeatedCompositeFieldContainer[Zone]
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    def __init__(self, tracking: _Optional[_Union[Tracking, _Mapping]] = ..., zones: _Optional[_Iterable[_Union[Zone, _Mapping]]] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ...) -> None: ...

class AnalyticsEvent(_message.Message):
    __slots__ = ("kind", "name", "source_index", "sequence_number", "source_timestamp_ms", "capture_time", "track_id", "class_id", "class_name", "box", "direction", "dwell_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    kind: AnalyticsEventKind
    name: str
    source_index: int
    sequence_number: int
    source_timestamp_ms: float
    capture_time: _timestamp_pb2.Timestamp
    track_id: int
    class_id: int
    class_name: str
    box: _types_pb2.BoundingBox
    direction: CrossingDirection
    dwell_ms: float
    def __init__(self, kind: _Optional[_Union[AnalyticsEventKind, str]] = ..., name: _Optional[str] = ..., source_index: _Optional[int] = ..., sequence_number: _Optional[int] = ..., source_timestamp_ms: _Optional[float] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., track_id: _Optional[int] = ..., class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., box: _Optional[_Union[_types_pb2.BoundingBox, _Mapping]] = ..., direction: _Optional[_Union[CrossingDirection, str]] = ..., dwell_ms: _Optional[float] = ...) -> None: ...

class ZoneOccupant(_message.Message):
    __slots__ = ("track_id", "class_id", "dwell_ms")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    DWELL_MS_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    class_id: int
    dwell_ms: float
    def __init__(self, track_id: _Optional[int] = ..., class_id: _Optional[int] = ..., dwell_ms: _Optional[float] = ...) -> None: ...

class ZoneState(_message.Message):
    __slots__ = ("name", "source_index", "count", "occupants", "entered_total", "exited_total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    OCCUPANTS_FIELD_NUMBER: _ClassVar[int]
    ENTERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXITED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    source_index: int
    count: int
    occupants: _containers.RepeatedCompositeFieldContainer[ZoneOccupant]
    entered_total: int
    exited_total: int
    def __init__(self, name: _Optional[str] = ..., source_index: _Optional[int] = ..., count: _Optional[int] = ..., occupants: _Optional[_Iterable[_Union[ZoneOccupant, _Mapping]]] = ..., entered_total: _Optional[int] = ..., exited_total: _Optional[int] = ...) -> None: ...

class LineState(_message.Message):
    __slots__ = ("name", "source_index", "left_to_right", "right_to_left")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEFT_TO_RIGHT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_TO_LEFT_FIELD_NUMBER: _ClassVar[int]
    name: str
    source_index: int
    left_to_right: int
    right_to_left: int
    def __init__(self, name: _Optional[str] = ..., source_index: _Optional[int] = ..., left_to_right: _Optional[int] = ..., right_to_left: _Optional[int] = ...) -> None: ...

class FrameAnalytics(_message.Message):
    __slots__ = ("zones", "lines", "events")
    ZONES_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    zones: _containers.RepeatedCompositeFieldContainer[ZoneState]
    lines: _containers.RepeatedCompositeFieldContainer[LineState]
    events: _containers.RepeatedCompositeFieldContainer[AnalyticsEvent]
    def __init__(self, zones: _Optional[_Iterable[_Union[ZoneState, _Mapping]]] = ..., lines: _Optional[_Iterable[_Union[LineState, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[AnalyticsEvent, _Mapping]]] = ...) -> None: ...

class AnalyticsEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AnalyticsEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AnalyticsEvent, _Mapping]]] = ...) -> None: ...
