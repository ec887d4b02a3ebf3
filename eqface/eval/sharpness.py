"""Classic no-reference sharpness (variance of the Laplacian), a baseline face-quality score for EDC comparisons."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's "L" mode


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., H, W, 3] to grayscale uint8 [..., H, W] with BT.601 luma weights, rounded."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [..., H, W, 3], got {rgb.dtype} {rgb.shape}")
    return np.clip(np.rint(rgb @ _LUMA), 0, 255).astype(np.uint8)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grayscale uint8 image [H, W]; larger means sharper.

    The kernel [[0, 1, 0], [1, -4, 1], [0, 1, 0]] with mirrored borders (``scipy.ndimage.laplace(mode="mirror")``)
    matches OpenCV's ``cv2.Laplacian(gray, cv2.CV_64F).var()`` (ksize 1, BORDER_REFLECT_101).

    Raises:
        ValueError: unless ``gray`` is uint8 with shape [H, W], H, W >= 3.
    """
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2 or min(gray.shape) < 3:
        raise ValueError(f"expected a grayscale uint8 image [H, W] with H, W >= 3, got {gray.dtype} {gray.shape}")
    return float(ndimage.laplace(gray.astype(np.float64), mode="mirror").var())


def sharpness_quality(images: np.ndarray) -> np.ndarray:
    """Per-image ``laplacian_variance`` of uint8 images [N, H, W] (grayscale) or [N, H, W, 3] (RGB), shape [N]."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = to_grayscale(images)
    if images.ndim != 3:
        raise ValueError(f"expected images [N, H, W] or [N, H, W, 3], got shape {images.shape}")
    return np.array([laplacian_variance(image) for image in images], dtype=np.float64)
