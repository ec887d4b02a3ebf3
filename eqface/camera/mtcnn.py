"""MTCNN (Zhang et al., 2016): three small cascaded networks that find faces and their five landmarks.

The networks match facenet-pytorch's ``models/mtcnn.py`` layer for layer (same state-dict keys), so the weights that
its wheel ships load strictly. The cascade follows its ``detect_face``: RGB input scaled as (x − 127.5) / 128, an
image pyramid (factor 0.709) down to 12-pixel faces for PNet, then RNet on 24×24 and ONet on 48×48 crops of the
squared candidates, each stage rescoring, regressing and suppressing. Three deliberate differences, all as the
original MTCNN does: images are resized like cv2.INTER_AREA (box filter down, bilinear up) rather than with torch's
area interpolation; candidate crops are cut at whole pixels and padded with black past the frame's edge, so a crop's
geometry is exactly its box; and coordinates are continuous (pixel i spans [i, i + 1)), as RetinaFace's are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from eqface.camera.detection import Detection, nms

PYRAMID_FACTOR = 0.709
PNET_CELL, PNET_STRIDE = 12, 2


def _flatten(x: torch.Tensor) -> torch.Tensor:
    # the weights were converted from a TensorFlow graph that flattened (W, H, C)
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net, fully convolutional: per 12×12 window (stride 2) a face probability and a box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled images [N, 3, H, W] → (face probability [N, h, w], regression [N, 4, h, w])."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refine net on 24×24 crops: face probability and box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled crops [N, 3, 24, 24] → (face probability [N], regression [N, 4])."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48×48 crops: face probability, box regression and five landmarks relative to the crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scaled crops [N, 3, 48, 48] → (face probability [N], regression [N, 4], landmarks [N, 5, 2] as (x, y)
        fractions of the crop; the net gives the five x first, then the five y)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(x)))))
        points = self.dense6_3(x).reshape(-1, 2, 5).transpose(1, 2)
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), points


def load_net(net: nn.Module, path: Path) -> nn.Module:
    """``net`` with the state dict at ``path`` loaded strictly (tensors only: no pickled code runs), in eval mode."""
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ box arithmetic
def pyramid_scales(height: int, width: int, min_face: float, factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales at which PNet's 12-pixel window covers faces from ``min_face`` pixels up to the frame's short side."""
    scale, short = PNET_CELL / min_face, min(height, width)
    scales = []
    while short * scale >= PNET_CELL:
        scales.append(scale)
        scale *= factor
    return scales


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Moves each side of ``boxes`` [N, 4] by ``offsets`` [N, 4] (dx1, dy1, dx2, dy2) in units of the box's size."""
    size = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + offsets * size


def square(boxes: np.ndarray) -> np.ndarray:
    """The squares of side max(w, h), centred on ``boxes`` [N, 4], snapped to whole pixels (crops are cut there)."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    corner = np.round(centre - side[:, None] / 2)
    side = np.maximum(np.round(side), 1)[:, None]
    return np.concatenate([corner, corner + side], axis=1)


def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (w, h) as cv2.INTER_AREA does, which the original MTCNN used: area averaging
    (PIL's box filter) when shrinking, bilinear when enlarging. RGB uint8 [h, w, 3]."""
    shrinking = size[0] <= image.width and size[1] <= image.height
    return np.asarray(image.resize(size, Image.BOX if shrinking else Image.BILINEAR))


def crops(image: Image.Image, boxes: np.ndarray, size: int) -> torch.Tensor:
    """The whole-pixel ``boxes`` [N, 4] cut out of ``image`` (black beyond its edge, as PIL's crop pads) and resized
    to ``size``×``size``: the net's input [N, 3, size, size]."""
    return net_input(np.stack([resize(image.crop(box), (size, size)) for box in boxes.astype(np.int64).tolist()]))


def net_input(images: np.ndarray) -> torch.Tensor:
    """RGB uint8 images [N, H, W, 3] → [N, 3, H, W] scaled as the weights expect, (x − 127.5) / 128."""
    return (torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() - 127.5) * 0.0078125


@dataclass(frozen=True)
class Thresholds:
    """Face probability each stage needs (facenet-pytorch's defaults) and the overlaps its suppression allows."""

    pnet: float = 0.6
    rnet: float = 0.7
    onet: float = 0.7
    nms_scale: float = 0.5
    nms_pnet: float = 0.7
    nms_rnet: float = 0.7
    nms_onet_min: float = 0.7  # intersection over the smaller box: drops a box lying inside a better one


def pnet_candidates(
    prob: np.ndarray, offsets: np.ndarray, scale_yx: tuple[float, float], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PNet's windows above ``threshold`` at one pyramid level, in frame pixels: boxes [N, 4], scores [N] and
    regressions [N, 4]. ``prob`` [h, w] and ``offsets`` [4, h, w] are PNet's outputs for an image scaled by
    ``scale_yx``."""
    ys, xs = np.nonzero(prob >= threshold)
    corner = np.stack([xs / scale_yx[1], ys / scale_yx[0]], axis=1) * PNET_STRIDE
    size = np.array([PNET_CELL / scale_yx[1], PNET_CELL / scale_yx[0]])
    return np.concatenate([corner, corner + size], axis=1), prob[ys, xs], offsets[:, ys, xs].T


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block and restored after (it is per process)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MTCNN:
    """The three-stage cascade on the weights facenet-pytorch's wheel ships (``python -m eqface.camera.weights``
    installs them).

    Args:
        weights: folder holding pnet.pt, rnet.pt and onet.pt (default: ``eqface.camera.weights.mtcnn_dir()``).
        min_size: smallest face searched for, in pixels (the pyramid starts there; smaller detections are dropped).
        thresholds: per-stage probabilities and suppression overlaps.
        factor: ratio between two pyramid levels.
        threads: torch threads while detecting. One by default, as RetinaFace's: these small convolutions gain
            little from a second thread (22 → 25 frames/s on two idle cores), and OpenMP threads that spin against
            a core busy elsewhere collapse (1 frame/s measured beside a training run).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        min_size: float = 20.0,
        thresholds: Thresholds = Thresholds(),
        factor: float = PYRAMID_FACTOR,
        threads: int = 1,
    ) -> None:
        from eqface.camera.weights import INSTALL_COMMAND, missing_mtcnn_weights, mtcnn_dir

        folder = Path(weights) if weights else mtcnn_dir()
        missing = missing_mtcnn_weights(folder)
        if missing:
            raise FileNotFoundError(
                f"MTCNN weights missing or altered in {folder}: {', '.join(missing)}. Install them with "
                f"`{INSTALL_COMMAND}` (scripts/setup.sh runs it), or choose `--detector retinaface`"
            )
        self.pnet, self.rnet, self.onet = (
            load_net(net, folder / f"{name}.pt") for net, name in ((PNet(), "pnet"), (RNet(), "rnet"), (ONet(), "onet"))
        )
        self.min_size, self.thresholds, self.factor, self.threads = min_size, thresholds, factor, threads

    def detect(self, frame: np.ndarray) -> list[Detection]:
        image = Image.fromarray(np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8))
        with torch.inference_mode(), torch_threads(self.threads):
            boxes = self._propose(image)
            if len(boxes):
                boxes = self._refine(image, boxes)
            if not len(boxes):
                return []
            boxes, scores, points = self._output(image, boxes)
        found = [Detection(boxes[i], float(scores[i]), points[i]) for i in np.argsort(-scores)]
        return [d for d in found if d.size >= self.min_size]

    def refine(self, frame: np.ndarray, boxes: np.ndarray) -> list[Detection | None]:
        """ONet alone on ``boxes`` [N, 4] (where faces are expected, e.g. where they were a frame ago): for each box,
        the face ONet finds there (box, score, landmarks), or None when it sees none above its threshold. A few
        milliseconds per face against the whole cascade's pyramid: the tracker between two full detections."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        image = Image.fromarray(np.ascontiguousarray(frame[:, :, :3], dtype=np.uint8))
        squared = square(boxes)
        with torch.inference_mode(), torch_threads(self.threads):
            prob, reg, points = (v.numpy() for v in self.onet(crops(image, squared, 48)))
        points = squared[:, None, 0:2] + points * (squared[:, None, 2:4] - squared[:, None, 0:2])
        refined = regress(squared, reg)
        return [
            Detection(refined[i], float(prob[i]), points[i]) if prob[i] > self.thresholds.onet else None
            for i in range(len(boxes))
        ]

    def _propose(self, image: Image.Image) -> np.ndarray:
        """Stage 1: PNet over the pyramid; squared candidate boxes [N, 4]."""
        w, h = image.size
        t = self.thresholds
        found = []
        for scale in pyramid_scales(h, w, self.min_size, self.factor):
            size = (int(w * scale + 1), int(h * scale + 1))
            prob, offsets = self.pnet(net_input(resize(image, size)[None]))
            boxes, scores, reg = pnet_candidates(
                prob[0].numpy(), offsets[0].numpy(), (size[1] / h, size[0] / w), t.pnet
            )
            keep = nms(boxes, scores, t.nms_scale)
            found.append((boxes[keep], scores[keep], reg[keep]))
        if not any(len(scores) for _, scores, _ in found):
            return np.zeros((0, 4))
        boxes, scores, reg = (np.concatenate(parts) for parts in zip(*found))
        keep = nms(boxes, scores, t.nms_pnet)
        return square(regress(boxes[keep], reg[keep]))

    def _refine(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: RNet rescores and regresses the candidates; the survivors, squared."""
        prob, reg = (v.numpy() for v in self.rnet(crops(image, boxes, 24)))
        passed = prob > self.thresholds.rnet
        boxes, prob, reg = boxes[passed], prob[passed], reg[passed]
        keep = nms(boxes, prob, self.thresholds.nms_rnet)
        return square(regress(boxes[keep], reg[keep]))

    def _output(self, image: Image.Image, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: ONet's final boxes [N, 4], scores [N] and landmarks [N, 5, 2] in frame pixels."""
        prob, reg, points = (v.numpy() for v in self.onet(crops(image, boxes, 48)))
        passed = prob > self.thresholds.onet
        boxes, prob, reg, points = boxes[passed], prob[passed], reg[passed], points[passed]
        points = boxes[:, None, 0:2] + points * (boxes[:, None, 2:4] - boxes[:, None, 0:2])
        boxes = regress(boxes, reg)
        keep = nms(boxes, prob, self.thresholds.nms_onet_min, over="min")
        return boxes[keep], prob[keep], points[keep]
