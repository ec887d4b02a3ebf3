"""Image decoding and geometry shared by training, evaluation and serving: uint8 RGB arrays in, uint8 RGB out."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow refuses decompression bombs above this many pixels; a face crop never comes close.
MAX_IMAGE_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """An image could not be decoded; the message names the file or record it came from."""


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes (JPEG, PNG, …) to uint8 RGB [H, W, 3]."""
    if not data:
        raise ImageDecodeError(f"{name}: empty image data")
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: cannot decode image (not a recognised image format)") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"{name}: cannot decode image (larger than {MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data inside a known format
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from None


def encode_image(img: np.ndarray, fmt: str = "JPEG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_rgb(img)).save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Grayscale [H, W] or [H, W, 1] → RGB [H, W, 3]; RGB passes through; RGBA drops alpha."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[:, :, :3]
    raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {img.shape}")


def center_crop_to_aspect(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crops the centre of ``img`` to the aspect ratio of ``size`` = (height, width)."""
    h, w = img.shape[:2]
    th, tw = size
    if h * tw > w * th:  # too tall
        new_h = max(1, round(w * th / tw))
        top = (h - new_h) // 2
        return img[top : top + new_h]
    new_w = max(1, round(h * tw / th))
    left = (w - new_w) // 2
    return img[:, left : left + new_w]


def fit_to_size(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crops to the target aspect, then resizes (bilinear) to ``size`` = (height, width); RGB uint8 out.

    An ArcFace-aligned 112×112 crop fitted to 112×96 loses 8 px per side, which is exactly the 96-wide alignment
    template that MobileFaceNet/SphereFace models were trained on.
    """
    img = to_rgb(img)
    if img.shape[:2] == tuple(size):
        return img
    img = center_crop_to_aspect(img, size)
    if img.shape[:2] == tuple(size):
        return np.ascontiguousarray(img)
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


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
