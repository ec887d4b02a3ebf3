"""Readers for the real-face ``.npz`` packs in ../shared/data (see its README for each pack's arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eqface.data.image_ops import ARCFACE_TEMPLATE, estimate_similarity, warp_similarity
from eqface.data.sources import ArraySource, EncodedSource, FaceSource

# Extended Yale B "cropped" images are aligned by the dataset (the mean frontal image is sharp), with the eyes at
# these (x, y) pixels of the 168×192 crop (measured on that mean image). They are framed about 1.8× tighter than the
# ArcFace template, so a plain resize would feed the network zoomed-in faces; ``align_yale`` maps them onto it.
YALE_EYES = np.array([[35.0, 45.0], [131.0, 45.0]])

_LABEL_KEYS = ("identity", "subject", "person")


def load_pack(path: str | Path, include_bad: bool = False, align: bool = True) -> FaceSource:
    """Loads a pack by its arrays: JPEG packs stay encoded (decoded per access), array packs stay in memory.

    Extra per-sample arrays (Yale's ``azimuth``/``elevation``, CelebA's ``det_score``…) are kept in ``extras``.
    Yale's flash-failed ``is_bad`` and ambient images are dropped unless ``include_bad``; its crops are mapped onto
    the ArcFace 112×112 template unless ``align=False`` (see ``YALE_EYES``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data pack not found: {path}")
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    label_key = next((k for k in _LABEL_KEYS if k in data), None)
    if label_key is None:
        raise ValueError(f"{path.name}: no label array (expected one of {', '.join(_LABEL_KEYS)})")
    labels = data[label_key].astype(np.int64)
    n = len(labels)
    names = (
        [f"{path.name}:{f}" for f in data["filename"]]
        if "filename" in data
        else [f"{path.name}:#{i}" for i in range(n)]
    )
    extras = {k: v for k, v in data.items() if v.shape[:1] == (n,) and k not in ("images", label_key, "filename")}
    if "jpeg_bytes" in data:
        blob, offsets = data["jpeg_bytes"], data["jpeg_offsets"]
        source: FaceSource = EncodedSource(
            read=lambda i: blob[offsets[i] : offsets[i + 1]].tobytes(), labels=labels, names=names, extras=extras
        )
    elif "images" in data:
        images = data["images"]
        if align and "azimuth" in data:  # Extended Yale B
            images = np.stack([align_yale(img) for img in images])
        source = ArraySource(images=images, labels=labels, names=names, extras=extras)
    else:
        raise ValueError(f"{path.name}: neither 'images' nor 'jpeg_bytes' found")
    keep = np.ones(n, dtype=bool)
    for flag in ("is_bad", "is_ambient"):
        if flag in data and not include_bad:
            keep &= ~data[flag].astype(bool)
    return source if keep.all() else source.subset(np.flatnonzero(keep), relabel=False)


def light_angle_degrees(source: FaceSource) -> np.ndarray:
    """Extended Yale B: angle of the light from the camera axis, arccos(cos az · cos el), in degrees."""
    if "azimuth" not in source.extras or "elevation" not in source.extras:
        raise ValueError("this source has no azimuth/elevation (only the Extended Yale B pack does)")
    az = np.radians(source.extras["azimuth"].astype(np.float64))
    el = np.radians(source.extras["elevation"].astype(np.float64))
    return np.degrees(np.arccos(np.clip(np.cos(az) * np.cos(el), -1.0, 1.0)))


def align_yale(img: np.ndarray) -> np.ndarray:
    """One Extended Yale B crop (192×168 grey) → ArcFace-aligned 112×112 RGB (mean grey outside the crop)."""
    matrix = estimate_similarity(YALE_EYES, ARCFACE_TEMPLATE[:2])
    return warp_similarity(img, matrix, (112, 112))
