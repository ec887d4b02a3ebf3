"""Tracking faces across frames with norfair (a Kalman filter per track, global nearest-neighbour matching).

A track is matched on its five landmarks: the distance between a detection and a track is the mean distance of the
landmarks to the track's predicted ones, divided by the detection's size, so one threshold fits near and far faces.
A track is confirmed after ``confirm_frames`` matched frames (a lone false detection never becomes a subject; the
frames seen while it was unconfirmed are handed out when it is confirmed) and ends after ``max_missed_frames``
frames without a match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqface.camera.detection import Detection


@dataclass(frozen=True)
class Observation:
    """A detection assigned to a confirmed track, with what the caller attached to it."""

    track_id: int
    frame_index: int
    detection: Detection
    payload: Any


@dataclass
class TrackUpdate:
    observations: list[Observation] = field(default_factory=list)  # in frame order, per track
    ended: list[int] = field(default_factory=list)  # track ids that ended with this frame


def landmark_distance(detection, tracked_object) -> float:
    """Norfair distance: mean landmark distance to the track's prediction, in units of the detection's size."""
    gap = np.linalg.norm(detection.points - tracked_object.estimate, axis=1).mean()
    return float(gap / max(detection.data[1].size, 1.0))


class FaceTracker:
    def __init__(self, max_distance: float = 0.5, max_missed_frames: int = 12, confirm_frames: int = 2) -> None:
        import logging

        from norfair import Tracker

        if confirm_frames < 1 or max_missed_frames < 1:
            raise ValueError("confirm_frames and max_missed_frames must be at least 1")
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # norfair logs a speed hint for any custom distance; a few
        try:  # faces a frame need no vectorised distance
            self._tracker = Tracker(
                distance_function=landmark_distance,
                distance_threshold=max_distance,
                hit_counter_max=max_missed_frames,
                initialization_delay=confirm_frames - 1,
                past_detections_length=confirm_frames + 1,
            )
        finally:
            root.level = level
        self._open: set[int] = set()
        self._last_sent: dict[int, int] = {}  # track id -> frame index of its last handed-out observation

    def update(self, frame_index: int, detections: list[Detection], payloads: list[Any]) -> TrackUpdate:
        from norfair import Detection as NorfairDetection

        candidates = [
            NorfairDetection(points=d.landmarks.astype(np.float64), data=(frame_index, d, p))
            for d, p in zip(detections, payloads)
        ]
        active = self._tracker.update(detections=candidates)
        update = TrackUpdate()
        for obj in sorted(active, key=lambda o: o.id):
            self._open.add(obj.id)
            for past in self._unsent(obj, frame_index):
                past_index, detection, payload = past.data
                update.observations.append(Observation(obj.id, past_index, detection, payload))
                self._last_sent[obj.id] = past_index
        alive = {obj.id for obj in self._tracker.tracked_objects if obj.id is not None}
        update.ended = sorted(self._open - alive)
        self._open -= set(update.ended)
        for track_id in update.ended:  # an ended track never comes back: keep the map as small as the open tracks
            self._last_sent.pop(track_id, None)
        return update

    def _unsent(self, obj, frame_index: int) -> list:
        """The track's detections not yet handed out: this frame's (if it was matched now) and, for a track just
        confirmed, those of the frames before."""
        last = self._last_sent.get(obj.id, -1)
        past = [d for d in obj.past_detections if last < d.data[0] < frame_index]
        current = [obj.last_detection] if obj.last_detection.data[0] == frame_index and last < frame_index else []
        return (past if obj.id not in self._last_sent else []) + current

    def finish(self) -> list[int]:
        """Ends every open track (the video is over)."""
        ended, self._open = sorted(self._open), set()
        self._last_sent.clear()
        return ended
