"""Real-time detection: the whole detector runs on every ``detect_every``-th frame (a key frame) only; in between, the
faces it found are followed by the detector's cheap refinement step (MTCNN: its last network alone on a box where the
face is expected from its last two positions), which returns a box, a score and five landmarks like a detection, so
alignment and tracking downstream do not change. A face that the refinement no longer finds makes the frame a key
frame at once (re-detection on loss); a face entering the scene is found at the next key frame.

``KeyframeDetector`` is itself a ``Detector``: the stream session uses it in place of the detector it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqface.camera.detection import Detection, Refiner


@dataclass(frozen=True)
class KeyframeConfig:
    """How often the whole detector runs.

    Args:
        detect_every: a key frame every this many frames (1: the whole detector on every frame); at 25 frames/s the
            default finds a new face within 0.16 s.
        follow_min_iou: a face of a key frame inherits the motion of the followed face it overlaps this much.
        merge_iou: two followed faces whose refined boxes overlap this much have converged on one face (people
            crossing): the frame becomes a key frame, whose suppression keeps one.
        recentre: when the refined box's centre lies farther than this fraction of its size from the predicted one
            (a face that moved unlike predicted, e.g. just after it was first found), it is refined once more on a
            crop centred on it: the landmarks of an off-centre crop are less precise.
    """

    detect_every: int = 5
    follow_min_iou: float = 0.3
    merge_iou: float = 0.5
    recentre: float = 0.1

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be at least 1, got {self.detect_every}")
        for name in ("follow_min_iou", "merge_iou"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.recentre < 0:
            raise ValueError(f"recentre must be >= 0, got {self.recentre}")


@dataclass
class KeyframeStats:
    frames: int = 0
    key_frames: int = 0  # frames the whole detector ran on (scheduled + re-detections)
    redetections: int = 0  # key frames forced by a face the refinement lost
    refined_faces: int = 0  # faces followed by refinement alone


def predict_box(box: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
    """Where a face's box [4] is expected in the next frame: moved and resized by as much as it changed since the
    frame before (constant velocity); unchanged without a previous box."""
    box = np.asarray(box, dtype=np.float64)
    return box if previous is None else box + (box - np.asarray(previous, dtype=np.float64))


def centre_shift(box: np.ndarray, reference: np.ndarray) -> float:
    """How far the centre of ``box`` lies from that of ``reference``, in units of the size of ``box``."""
    size = np.sqrt(max(box[2] - box[0], 1e-9) * max(box[3] - box[1], 1e-9))
    return float(
        np.hypot(
            (box[0] + box[2] - reference[0] - reference[2]) / 2, (box[1] + box[3] - reference[1] - reference[3]) / 2
        )
        / size
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class KeyframeDetector:
    """The whole ``detector`` on key frames, its ``refine`` on the faces in between (see the module docstring)."""

    def __init__(self, detector: Refiner, config: KeyframeConfig = KeyframeConfig()) -> None:
        if not callable(getattr(detector, "refine", None)):
            raise ValueError(
                f"{type(detector).__name__} cannot follow faces between key frames (it has no refine step); "
                "use detect_every = 1 (--pipeline full) or the mtcnn detector"
            )
        self.detector, self.config = detector, config
        self.stats = KeyframeStats()
        self._faces: list[tuple[Detection, np.ndarray | None]] = []  # (face, its box one frame earlier)
        self._since_key = config.detect_every  # frames since the last key frame: the first frame is one

    def detect(self, frame: np.ndarray) -> list[Detection]:
        self.stats.frames += 1
        if self._since_key + 1 < self.config.detect_every:
            followed = self._follow(frame)
            if followed is not None:
                self._since_key += 1
                return followed
            self.stats.redetections += 1
        return self._key_frame(frame)

    def _follow(self, frame: np.ndarray) -> list[Detection] | None:
        """The followed faces refined in ``frame``; None when one of them is lost or two became one."""
        if not self._faces:
            return []
        predicted = np.stack([predict_box(face.box, previous) for face, previous in self._faces])
        refined = self.detector.refine(frame, predicted)
        if any(face is None for face in refined):
            return None
        off = [i for i, face in enumerate(refined) if centre_shift(face.box, predicted[i]) > self.config.recentre]
        if off:
            again = self.detector.refine(frame, np.stack([refined[i].box for i in off]))
            for i, face in zip(off, again):
                refined[i] = face if face is not None else refined[i]
        if any(iou(a.box, b.box) > self.config.merge_iou for i, a in enumerate(refined) for b in refined[i + 1 :]):
            return None
        self.stats.refined_faces += len(refined)
        self._faces = [(new, old.box) for new, (old, _) in zip(refined, self._faces)]
        return list(refined)

    def _key_frame(self, frame: np.ndarray) -> list[Detection]:
        self.stats.key_frames += 1
        self._since_key = 0
        found = self.detector.detect(frame)
        previous = [face for face, _ in self._faces]
        self._faces = [(face, self._motion_source(face, previous)) for face in found]
        return found

    def _motion_source(self, face: Detection, previous: list[Detection]) -> np.ndarray | None:
        """The box a key frame's face had one frame earlier: that of the followed face overlapping it most."""
        best = max(previous, key=lambda p: iou(face.box, p.box), default=None)
        if best is None or iou(face.box, best.box) < self.config.follow_min_iou:
            return None
        return best.box
