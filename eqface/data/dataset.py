"""Turning a FaceSource into training batches, deterministically and resumably.

Each sample's augmentation draws from ``Generator([seed, epoch, index])`` and each epoch's order from
``Generator([seed, epoch])``, so a run resumed mid-epoch sees exactly the batches an uninterrupted run would, whatever
the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eqface import contract
from eqface.data.augment import Augmenter
from eqface.data.decode import ImageDecodeError
from eqface.data.sources import FaceSource


class AugmentedFaces(Dataset):
    """Item key (epoch, index) → (uint8 image fitted to size and augmented, label, index), or None if skipped.

    Images are fitted as ``contract.preprocess`` fits them; ``collate`` normalises after augmentation.
    """

    def __init__(
        self,
        source: FaceSource,
        image_size: tuple[int, int],
        augmenter: Augmenter | None,
        seed: int,
        skip_errors: bool = False,
    ) -> None:
        self.source, self.image_size, self.augmenter = source, tuple(image_size), augmenter
        self.seed, self.skip_errors = seed, skip_errors

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
        epoch, index = key
        try:
            img = self.source.image(index)
        except ImageDecodeError:
            if self.skip_errors:
                return None
            raise
        img = contract.fit_to_size(img, self.image_size)
        if self.augmenter is not None:
            img = self.augmenter(img, np.random.default_rng([self.seed, epoch, index]))
        return np.ascontiguousarray(img), int(self.source.labels[index]), index


@dataclass
class Batch:
    images: torch.Tensor  # normalised model input [B, 3, H, W]
    labels: torch.Tensor  # int64 [B]
    indices: torch.Tensor  # int64 [B], sample indices in the source
    skipped: int  # unreadable samples dropped from this batch (skip-and-count mode)


def collate(items: list[tuple[np.ndarray, int, int] | None]) -> Batch:
    kept = [it for it in items if it is not None]
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), len(items))
    return Batch(
        images=torch.from_numpy(contract.normalize_pixels(np.stack([it[0] for it in kept]))),
        labels=torch.tensor([it[1] for it in kept], dtype=torch.long),
        indices=torch.tensor([it[2] for it in kept], dtype=torch.long),
        skipped=len(items) - len(kept),
    )


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's batches of one epoch, optionally starting after ``start_batch`` batches (resume).

    The permutation is shared by all ranks; rank r takes every world_size-th sample, and the tail that would give
    ranks unequal batch counts is dropped, so every rank runs the same number of steps (required by DDP).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < batch_size * world_size:
            raise ValueError(f"{n} samples cannot fill one batch of {batch_size} on each of {world_size} ranks")
        self.n, self.batch_size, self.seed, self.rank, self.world_size = n, batch_size, seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        mine = order[self.rank :: self.world_size]
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = mine[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in chunk]
