"""Face detection with five landmarks (eyes, nose tip, mouth corners: the ArcFace template's points).

Detectors are registered by name (``create_detector``). The default, ``retinaface``, is RetinaFace-MobileNet0.25 as
ONNX on onnxruntime: the very detector that aligned the CelebA pack the models are trained on (its ``meta_json``), so
a crop cut here has the training crops' geometry. Its weights are a file (../shared/data/weights); nothing is ever
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

RETINAFACE_FILE = "retinaface_mnet025_photo_analyze.onnx"


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


def create_detector(name: str, **options) -> Detector:
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; valid names: {', '.join(sorted(_DETECTORS))}")
    return _DETECTORS[name](**options)


def default_weights_dir() -> Path | None:
    """Where the detector weights lie: $EQFACE_DETECTOR_WEIGHTS, else ../shared/data/weights beside the checkout."""
    env = os.environ.get("EQFACE_DETECTOR_WEIGHTS")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "weights"
    return beside if beside.is_dir() else None


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first."""
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
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def retinaface_priors(size: int, steps=(8, 16, 32), min_sizes=((16, 32), (64, 128), (256, 512))) -> np.ndarray:
    """Anchor boxes (cx, cy, w, h), relative to the square input, in the network's output order."""
    priors = []
    for step, sizes in zip(steps, min_sizes):
        cells = int(np.ceil(size / step))
        for i, j in product(range(cells), range(cells)):
            for m in sizes:
                priors.append([(j + 0.5) * step / size, (i + 0.5) * step / size, m / size, m / size])
    return np.asarray(priors, dtype=np.float32)


@register_detector("retinaface")
class RetinaFace:
    """RetinaFace-MobileNet0.25 (biubug6/Pytorch_Retinaface as ONNX): square BGR input minus (104, 117, 123).

    The frame is scaled so its longer side fills the input and padded with zeros (the mean colour after
    subtraction); boxes and landmarks are decoded against the anchors with variances (0.1, 0.2) and mapped back.
    """

    INPUT_SIZE = 640
    MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    VARIANCES = (0.1, 0.2)

    def __init__(self, weights: str | Path | None = None, score_threshold: float = 0.8, iou_threshold: float = 0.4,
                 min_size: float = 24.0, threads: int = 1) -> None:
        import onnxruntime as ort

        path = Path(weights) if weights else _default_file(RETINAFACE_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"RetinaFace weights not found: {path} (see ../shared/data/README.md, weights/)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._priors = retinaface_priors(self.INPUT_SIZE)
        self.score_threshold, self.iou_threshold, self.min_size = score_threshold, iou_threshold, min_size

    def detect(self, frame: np.ndarray) -> list[Detection]:
        x, scale = self._input_tensor(frame)
        loc, conf, landmarks = self._outputs(self._session.run(None, {self._input: x}))
        scores = conf[:, 1]
        keep = np.flatnonzero(scores > self.score_threshold)
        boxes, points = self._decode(loc[keep], landmarks[keep], self._priors[keep])
        boxes, points = boxes * self.INPUT_SIZE / scale, points * self.INPUT_SIZE / scale
        chosen = nms(boxes, scores[keep], self.iou_threshold)
        found = [Detection(boxes[i], float(scores[keep][i]), points[i]) for i in chosen]
        return [d for d in found if d.size >= self.min_size]

    def _input_tensor(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        scale = self.INPUT_SIZE / max(h, w)
        resized = Image.fromarray(frame).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        rgb = np.asarray(resized, dtype=np.float32)
        x = np.zeros((self.INPUT_SIZE, self.INPUT_SIZE, 3), dtype=np.float32)
        x[: rgb.shape[0], : rgb.shape[1]] = rgb[:, :, ::-1] - self.MEAN_BGR
        return x.transpose(2, 0, 1)[None], scale

    @staticmethod
    def _outputs(outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loc [A, 4], conf [A, 2], landmarks [A, 10]), told apart by their last axis (the ONNX names are
        numbers)."""
        by_width = {o.shape[-1]: o[0] for o in outputs}
        return by_width[4], by_width[2], by_width[10]

    def _decode(self, loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v0, v1 = self.VARIANCES
        centre = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
        wh = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
        boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)
        points = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * v0 * priors[:, None, 2:]
        return boxes, points


def _default_file(name: str) -> Path:
    folder = default_weights_dir()
    if folder is None:
        raise FileNotFoundError(f"no weights folder for {name}: set EQFACE_DETECTOR_WEIGHTS or pass the file")
    return folder / name
