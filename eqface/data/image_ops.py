"""Image encoding and alignment geometry (the ArcFace template, similarity transforms) on uint8 RGB arrays.

Decoding is ``eqface.data.decode``; fitting an image to the model input is ``eqface.contract.fit_to_size``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from eqface.contract import to_rgb


def encode_image(img: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_rgb(img)).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


# The ArcFace 112×112 alignment template (x, y): left eye, right eye, nose tip, left and right mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991) mapping points ``src`` [K, 2] onto ``dst`` [K, 2], K ≥ 2.

    Returns the 2×3 matrix M with dst ≈ M @ [x, y, 1].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching [K, 2] point sets with K >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ d @ vt
    var_s = (s_c**2).sum() / len(src)
    scale = (sig * np.diag(d)).sum() / var_s
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def warp_similarity(img: np.ndarray, matrix: np.ndarray, size: tuple[int, int], fill: int | None = None) -> np.ndarray:
    """Warps ``img`` by the 2×3 ``matrix`` into an image of ``size`` = (height, width); outside → ``fill``
    (default: the image's mean grey level)."""
    img = to_rgb(img)
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    fill_value = int(img.mean()) if fill is None else fill
    out = Image.fromarray(img).transform(
        (size[1], size[0]),
        Image.AFFINE,
        tuple(inverse.ravel()),
        resample=Image.BILINEAR,
        fillcolor=(fill_value,) * 3,
    )
    return np.asarray(out)
