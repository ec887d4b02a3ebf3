"""Image-folder datasets: ``root/<identity>/<image>``, one sub-folder per identity (sorted names → labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eqface.data.sources import EncodedSource

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff"}


def load_image_folder(root: str | Path) -> EncodedSource:
    """Indexes every image file under ``root/<identity>/``; images are read and decoded on access."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    identities = sorted(p for p in root.iterdir() if p.is_dir())
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(identities):
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root}: no images found (expected {root}/<identity>/<image>.jpg)")
    return EncodedSource(
        read=lambda i: paths[i].read_bytes(),
        labels=np.asarray(labels),
        names=[str(p) for p in paths],
        extras={"identity_name": np.asarray([p.parent.name for p in paths])},
    )
