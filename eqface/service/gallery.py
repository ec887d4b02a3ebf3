"""The in-memory gallery index for 1:N identification: enrolled templates as one matrix, searched by cosine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eqface.service.store import IdentityRecord
from eqface.service.tenancy import split_key


@dataclass(frozen=True, slots=True)
class Match:
    identity_id: str
    score: float
    display_name: str


class GalleryIndex:
    """A snapshot of the store's gallery at ``version``; replaced whole when the store's version changes.

    The whole gallery is held in RAM (4 bytes x D per identity: 2 KiB at D = 512, so 100k identities take ~200 MB).
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.version = -1
        self._ids: list[str] = []
        self._names: list[str] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    def replace(self, version: int, records: Sequence[IdentityRecord]) -> None:
        usable = [r for r in records if r.template.shape == (self.dim,)]  # skip entries of another model's size
        matrix = np.stack([r.template for r in usable]).astype(np.float32) if usable else np.zeros((0, self.dim))
        self._ids = [r.identity_id for r in usable]
        self._names = [r.display_name for r in usable]
        self._matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.version = version

    def __len__(self) -> int:
        return len(self._ids)

    def search(self, template: np.ndarray, k: int) -> list[Match]:
        """The ``k`` best identities for an L2-normalised template, best first (ties broken by id)."""
        if not self._ids or k <= 0:
            return []
        scores = self._matrix @ np.asarray(template, dtype=np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        ranked = sorted(top.tolist(), key=lambda i: (-scores[i], self._ids[i]))
        return [Match(self._ids[i], float(scores[i]), self._names[i]) for i in ranked]


class TenantGalleries:
    """The store's gallery split by tenant: each tenant identifies only against its own identities.

    The store holds every tenant's entries under tenant-namespaced keys (``eqface.service.tenancy``); each tenant's
    ``GalleryIndex`` holds its own ids, unprefixed.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.version = -1
        self._indexes: dict[str, GalleryIndex] = {}
        self._empty = GalleryIndex(dim)

    def replace(self, version: int, records: Sequence[IdentityRecord]) -> None:
        by_tenant: dict[str, list[IdentityRecord]] = {}
        for r in records:
            tenant, identity_id = split_key(r.identity_id)
            by_tenant.setdefault(tenant, []).append(IdentityRecord(identity_id, r.display_name, r.template))
        indexes = {}
        for tenant, entries in by_tenant.items():
            indexes[tenant] = index = GalleryIndex(self.dim)
            index.replace(version, entries)
        self._indexes = indexes
        self.version = version

    def of(self, tenant: str) -> GalleryIndex:
        return self._indexes.get(tenant, self._empty)

    def __len__(self) -> int:
        return sum(len(index) for index in self._indexes.values())
