"""Alignment of a detected face to the ArcFace 112×112 template: the similarity transform (Umeyama) from its five
landmarks and a bilinear warp — the same functions and template that aligned the training packs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqface.data.image_ops import ARCFACE_TEMPLATE, estimate_similarity, warp_similarity

ALIGNED_SIZE = (112, 112)  # (height, width) of the template; the service fits it to the model's input


@dataclass(frozen=True)
class AlignedFace:
    """An aligned RGB crop [112, 112, 3] and the 2×3 matrix that maps frame pixels onto it."""

    image: np.ndarray
    matrix: np.ndarray

    @property
    def scale(self) -> float:
        """Template pixels per frame pixel: above 1 the crop is upsampled (the face was smaller than the template)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))


def align_face(frame: np.ndarray, landmarks: np.ndarray) -> AlignedFace:
    """Cuts the face whose five landmarks [5, 2] (x, y) are given out of ``frame`` onto the ArcFace template."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"need five (x, y) landmarks, got shape {landmarks.shape}")
    matrix = estimate_similarity(landmarks, ARCFACE_TEMPLATE)
    return AlignedFace(warp_similarity(frame, matrix, ALIGNED_SIZE), matrix)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies a 2×3 affine ``matrix`` to points [K, 2]."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]
