"""Enrolling a gallery from photos: one folder per identity (the folder's name is the identity id); the largest face
of each photo is detected, aligned like the video's faces and sent to ``AggregatorService.Enroll`` (the service embeds
the crops and aggregates them with QWFAF)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eqface.camera.alignment import align_face
from eqface.camera.detection import Detector
from eqface.data.decode import FILE_LIMITS, decode_image
from eqface.data.image_ops import encode_image

if TYPE_CHECKING:
    from eqface.service.client import AggregatorClient

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
PAD = 0.3  # margin added around a photo before detection: a tightly cropped face still has context to be found in


def largest_face(detector: Detector, photo: np.ndarray) -> np.ndarray | None:
    """The largest face of ``photo``, aligned (RGB 112×112), or None when no face is found."""
    h, w = photo.shape[:2]
    py, px = round(PAD * h), round(PAD * w)
    fill = photo.reshape(-1, photo.shape[-1]).mean(axis=0).astype(np.uint8)
    padded = np.empty((h + 2 * py, w + 2 * px, 3), dtype=np.uint8)
    padded[:] = fill
    padded[py : py + h, px : px + w] = photo
    faces = detector.detect(padded)
    if not faces:
        return None
    return align_face(padded, max(faces, key=lambda d: d.size).landmarks).image


def read_gallery(folder: Path, detector: Detector) -> tuple[dict[str, list[bytes]], list[str]]:
    """{identity: aligned JPEG crops} from ``folder``/<identity>/<photo>, and the photos where no face was found."""
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {folder}")
    gallery: dict[str, list[bytes]] = {}
    missed: list[str] = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        for photo in sorted(p for p in person.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
            face = largest_face(detector, decode_image(photo.read_bytes(), str(photo), FILE_LIMITS))
            if face is None:
                missed.append(str(photo))
            else:
                gallery.setdefault(person.name, []).append(encode_image(face, quality=95))
    if not gallery:
        raise ValueError(f"no face found in any photo under {folder} (one sub-folder per identity)")
    return gallery, missed


def enroll(client: AggregatorClient, gallery: dict[str, list[bytes]]) -> dict[str, list[float]]:
    """Enrolls (overwriting) every identity; returns each one's image qualities as the service measured them."""
    qualities = {}
    for identity, images in gallery.items():
        response = client.enroll(identity, identity, images)
        qualities[identity] = [round(float(q), 3) for q in response.image_qualities]
    return qualities
