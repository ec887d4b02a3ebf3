"""RetinaFace-MobileNet0.25 (biubug6/Pytorch_Retinaface as ONNX) on onnxruntime: the detector that aligned the CelebA
pack the models are trained on (its ``meta_json``). Its weights are a file of unknown terms (../shared/data/weights),
for internal tests and comparisons only; nothing is ever downloaded."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image

from eqface.camera.detection import Detection, nms
from eqface.camera.weights import WEIGHTS_ENV, retinaface_file


def retinaface_priors(size: int, steps=(8, 16, 32), min_sizes=((16, 32), (64, 128), (256, 512))) -> np.ndarray:
    """Anchor boxes (cx, cy, w, h), relative to the square input, in the network's output order."""
    priors = []
    for step, sizes in zip(steps, min_sizes):
        cells = int(np.ceil(size / step))
        for i, j in product(range(cells), range(cells)):
            for m in sizes:
                priors.append([(j + 0.5) * step / size, (i + 0.5) * step / size, m / size, m / size])
    return np.asarray(priors, dtype=np.float32)


class RetinaFace:
    """RetinaFace-MobileNet0.25 (biubug6/Pytorch_Retinaface as ONNX): square BGR input minus (104, 117, 123).

    The frame is scaled so its longer side fills the input and padded with zeros (the mean colour after
    subtraction); boxes and landmarks are decoded against the anchors with variances (0.1, 0.2) and mapped back.
    """

    INPUT_SIZE = 640
    MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    VARIANCES = (0.1, 0.2)

    def __init__(
        self,
        weights: str | Path | None = None,
        score_threshold: float = 0.8,
        iou_threshold: float = 0.4,
        min_size: float = 24.0,
        threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        path = Path(weights) if weights else retinaface_file()
        if not path.is_file():
            raise FileNotFoundError(
                f"RetinaFace weights not found: {path} (pass --detector-weights or set "
                f"${WEIGHTS_ENV}; see ../shared/data/README.md, weights/)"
            )
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
