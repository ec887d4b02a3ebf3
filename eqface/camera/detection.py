"""Face detection with five landmarks (eyes, nose tip, mouth corners: the ArcFace template's points, in its order).

Detectors are registered by name (``create_detector``); each entry point imports its implementation when called, so
importing this module loads neither torch nor onnxruntime. The default, ``mtcnn``, runs on the MTCNN weights that
the facenet-pytorch wheel ships (installed by ``python -m eqface.camera.weights``); ``retinaface`` is the detector
that aligned the CelebA pack, on weights of unknown terms (internal tests only). Nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

DEFAULT_DETECTOR = "mtcnn"


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


_DETECTORS: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    def add(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        _DETECTORS[name] = factory
        return factory

    return add


def create_detector(name: str = DEFAULT_DETECTOR, **options) -> Detector:
    """The detector registered as ``name``, built with ``options`` (``weights``, ``min_size``, …)."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid names: {', '.join(sorted(_DETECTORS))}")
    return _DETECTORS[name](**options)


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


@register_detector("mtcnn")
def mtcnn(**options) -> Detector:
    """MTCNN on the weights from the facenet-pytorch wheel (MIT): ``weights`` is their folder."""
    from eqface.camera.mtcnn import MTCNN

    return MTCNN(**options)


@register_detector("retinaface")
def retinaface(**options) -> Detector:
    """RetinaFace-MobileNet0.25 on onnxruntime: ``weights`` is its ONNX file."""
    from eqface.camera.retinaface import RetinaFace

    return RetinaFace(**options)
