"""Object tracking of one source: Roboflow's `trackers` ByteTrack behind a small domain-typed face.

`trackers` (with supervision, scipy and their imports) is imported on the first Tracker built, not when this
module is: only streams that track pay its ~125 MB of resident memory and its ~1 s import. docs/analytics.md
says why ByteTrackTracker rather than supervision.ByteTrack.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..domain import Detection
from .types import Tracking

if TYPE_CHECKING:
    from trackers import ByteTrackTracker

__all__ = ["Tracker"]

# ByteTrack's lost-track buffer is given in frames of a 30 fps video and scaled by the frame rate it is told;
# telling it 30 fps makes `lost_track_frames` mean processed frames, whatever the source's rate (a max_fps cap
# or a slow model make frames further apart in time, and the Kalman filter steps once per processed frame).
_NOMINAL_FPS = 30.0
# A track gets its id on its second consecutive frame: one-frame flickers (a detector's false positive) never
# get an id nor touch a zone or line. That is ByteTrack's original rule.
_CONFIRM_FRAMES = 2


class Tracker:
    """ByteTrack over one source's frames, in order. Not thread-safe: one caller at a time.

    Example:
        tracker = Tracker(Tracking(enabled=True))
        ids, alive = tracker.update(prediction.detections)   # ids[i]: detections[i]'s track, 0 untracked
    """

    def __init__(self, settings: Tracking) -> None:
        module = importlib.import_module("trackers")  # lazily: see the module docstring
        self._tracker: ByteTrackTracker = module.ByteTrackTracker(
            lost_track_buffer=settings.lost_track_frames,
            frame_rate=_NOMINAL_FPS,
            # The contract's single threshold: at least this confident starts a track (and is matched first),
            # weaker detections only continue one (ByteTrack's second, low-confidence association).
            track_activation_threshold=settings.activation_threshold,
            high_conf_det_threshold=settings.activation_threshold,
            minimum_consecutive_frames=_CONFIRM_FRAMES,
            minimum_iou_threshold=settings.minimum_iou,
        )
        self._detections_type = importlib.import_module("supervision").Detections

    def update(self, detections: Sequence[Detection]) -> tuple[tuple[int, ...], frozenset[int]]:
        """Feeds one frame's detections (the next frame of this source).

        Returns:
            Each detection's track id (from 1; 0 when it starts no track or continues none), and the ids of
            the tracks still alive after this frame (seen now, or lost for at most `lost_track_frames`).
        """
        count = len(detections)
        xyxy = np.array(
            [(d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max) for d in detections], dtype=np.float32
        ).reshape(count, 4)
        frame = self._detections_type(
            xyxy=xyxy,
            confidence=np.array([d.confidence for d in detections], dtype=np.float32),
            class_id=np.array([d.class_id for d in detections], dtype=int),
            # Survives ByteTrack's reordering of its output: maps each output row back to our detection.
            data={"index": np.arange(count)},
        )
        result = self._tracker.update(frame)
        ids = [0] * count
        if count and len(result) and result.tracker_id is not None:
            for index, tracker_id in zip(result.data["index"], result.tracker_id, strict=True):
                if tracker_id >= 0:  # -1: not (yet) a confirmed track
                    ids[int(index)] = int(tracker_id) + 1  # ByteTrack counts from 0, the contract from 1
        alive = frozenset(t.tracker_id + 1 for t in self._tracker.tracks if t.tracker_id >= 0)
        return tuple(ids), alive
