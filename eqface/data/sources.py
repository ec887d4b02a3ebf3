"""Face sources: indexable collections of (RGB image, identity label) behind one small interface.

Readers (npz packs, image folders, RecordIO, the synthetic generator) all return a ``FaceSource``; training and
evaluation only see this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from eqface.contract import to_rgb
from eqface.data.decode import FILE_LIMITS, decode_image


class FaceSource:
    """Base: ``labels`` [N] int64 identities 0..C-1, ``names`` per-sample ids for messages, ``image(i)`` RGB uint8."""

    labels: np.ndarray
    names: Sequence[str]
    extras: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def image(self, i: int) -> np.ndarray:  # pragma: no cover - overridden
        raise TypeError(f"{type(self).__name__} must implement image()")

    def subset(self, indices: np.ndarray, relabel: bool = True) -> SubsetSource:
        return SubsetSource(self, np.asarray(indices, dtype=np.int64), relabel)


@dataclass
class ArraySource(FaceSource):
    """Images held in memory as uint8 [N, H, W] (grayscale) or [N, H, W, 3] (RGB)."""

    images: np.ndarray
    labels: np.ndarray
    names: Sequence[str] = ()
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not self.names:
            self.names = [f"#{i}" for i in range(len(self.labels))]

    def image(self, i: int) -> np.ndarray:
        return to_rgb(self.images[i])


@dataclass
class EncodedSource(FaceSource):
    """Encoded images (JPEG/PNG) decoded on access; ``read(i)`` returns the bytes of sample i."""

    read: Callable[[int], bytes]
    labels: np.ndarray
    names: Sequence[str]
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)

    def image(self, i: int) -> np.ndarray:
        return decode_image(self.read(i), self.names[i], FILE_LIMITS)


class SubsetSource(FaceSource):
    """A view on some samples of another source; labels are renumbered 0..C'-1 when ``relabel``."""

    def __init__(self, parent: FaceSource, indices: np.ndarray, relabel: bool = True) -> None:
        self.parent, self.indices = parent, indices
        labels = parent.labels[indices]
        self.labels = np.unique(labels, return_inverse=True)[1].astype(np.int64) if relabel else labels
        self.names = [parent.names[i] for i in indices]
        self.extras = {k: v[indices] for k, v in parent.extras.items()}

    def image(self, i: int) -> np.ndarray:
        return self.parent.image(int(self.indices[i]))


def split_identities(source: FaceSource, held_out: int) -> tuple[FaceSource, FaceSource | None]:
    """Splits by identity: the last ``held_out`` labels become the evaluation set (no identity in both)."""
    if held_out <= 0:
        return source, None
    if held_out >= source.num_classes:
        raise ValueError(f"cannot hold out {held_out} of {source.num_classes} identities")
    cut = source.num_classes - held_out
    train = np.flatnonzero(source.labels < cut)
    held = np.flatnonzero(source.labels >= cut)
    return source.subset(train), source.subset(held)


def filter_identities(source: FaceSource, min_images: int = 1, max_identities: int = 0) -> FaceSource:
    """Keeps identities with at least ``min_images`` samples, optionally only the first ``max_identities`` of them."""
    counts = np.bincount(source.labels, minlength=source.num_classes)
    keep_ids = np.flatnonzero(counts >= min_images)
    if max_identities:
        keep_ids = keep_ids[:max_identities]
    if len(keep_ids) == 0:
        raise ValueError(f"no identity has at least {min_images} images")
    if len(keep_ids) == source.num_classes:
        return source
    return source.subset(np.flatnonzero(np.isin(source.labels, keep_ids)))
