"""What a face detector returns (``Detection``: box, score, five landmarks in the ArcFace template's order), the
``Detector`` interface, and the non-maximum suppression the detectors share. It imports no detector: they are
chosen by name in ``eqface.camera.detectors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One face in frame pixels: box (x1, y1, x2, y2), confidence in [0, 1], landmarks [5, 2] as (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def size(self) -> float:
        """The face's scale in pixels: the geometric mean of the box's sides."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


class Detector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 frame [H, W, 3], best first."""


class Refiner(Protocol):
    """A detector that can also look for faces only where they are expected (a cheap step between two full
    detections)."""

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 frame [H, W, 3], best first."""

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> list[Detection | None]:
        """For each box [N, 4] of ``frame``, the face found there, or None when there is none."""


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, over: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first. A box goes when its intersection
    with a better one, over their union (``over="union"``, the IoU) or over the smaller box (``"min"``), exceeds
    ``iou_threshold``."""
    if over not in ("union", "min"):
        raise ValueError(f"nms over must be 'union' or 'min', not {over!r}")
    order = np.argsort(-scores)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        denominator = area[i] + area[rest] - inter if over == "union" else np.minimum(area[i], area[rest])
        order = rest[inter / np.maximum(denominator, 1e-9) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
