"""The store interface every backend implements, and the value types that cross it.

Subjects are opaque byte records (see ``eqface.service.state``) with a version token for optimistic concurrency:
``commit_subjects`` writes a record only if its stored version still equals the one the writer read, so several
service replicas sharing one store never lose an update; a writer that loses re-reads and re-applies its frames.
A call returns only once its writes are durable (the backend's definition of durable is documented in its module).
Every method is blocking: the service calls them from one dedicated thread.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class StoreUnavailable(Exception):
    """The backend could not be reached or failed; nothing of the failed call was written."""


@dataclass(frozen=True, slots=True)
class VersionedBlob:
    version: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SubjectWrite:
    """Replace the record of ``subject_id`` if its stored version is ``expected_version`` (0: it must not exist)."""

    subject_id: str
    expected_version: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CommitResult:
    versions: dict[str, int]  # new version of every written subject
    conflicts: frozenset[str]  # subjects not written because their version had changed


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """A gallery entry: an L2-normalised float32 template and a display name."""

    identity_id: str
    display_name: str
    template: np.ndarray


def new_version() -> int:
    """A random non-zero 63-bit version token: unlike a counter it cannot repeat after a delete and re-create (ABA)."""
    return secrets.randbits(63) | 1


class SubjectStore(abc.ABC):
    """Durable subject records and gallery entries."""

    @abc.abstractmethod
    def load_subjects(self, subject_ids: Sequence[str]) -> dict[str, VersionedBlob]:
        """The stored records of those subjects that exist."""

    @abc.abstractmethod
    def commit_subjects(self, writes: Sequence[SubjectWrite]) -> CommitResult:
        """Applies every write whose expected version matches, each subject atomically; durable on return."""

    @abc.abstractmethod
    def delete_subject(self, subject_id: str) -> bool:
        """Removes a subject; False if it did not exist."""

    @abc.abstractmethod
    def list_subjects(self, after: str, limit: int) -> list[str]:
        """Up to ``limit`` subject ids greater than ``after`` (UTF-8 byte order), ascending."""

    @abc.abstractmethod
    def count_subjects(self) -> int: ...

    @abc.abstractmethod
    def put_identity(self, identity: IdentityRecord, overwrite: bool) -> bool:
        """Stores a gallery entry; False (nothing written) if it exists and ``overwrite`` is False."""

    @abc.abstractmethod
    def remove_identity(self, identity_id: str) -> bool:
        """Removes a gallery entry; False if it did not exist."""

    @abc.abstractmethod
    def load_gallery(self) -> tuple[int, list[IdentityRecord]]:
        """The gallery version and every entry, read consistently."""

    @abc.abstractmethod
    def gallery_version(self) -> int:
        """Changes whenever the gallery changes (cheap: replicas poll it to refresh their in-memory copy)."""

    @abc.abstractmethod
    def list_identities(self, after: str, limit: int) -> list[IdentityRecord]:
        """Up to ``limit`` gallery entries with ids greater than ``after``, ascending."""

    @abc.abstractmethod
    def purge_subjects(self, updated_before: float, limit: int) -> list[str]:
        """Deletes up to ``limit`` subjects last written (created, updated or reset) before ``updated_before`` (Unix
        seconds) and returns their ids; a subject written again in the meantime is kept (checked atomically)."""

    @abc.abstractmethod
    def purge_identities(self, updated_before: float, limit: int) -> list[str]:
        """Removes up to ``limit`` gallery entries last enrolled before ``updated_before`` (Unix seconds); their ids."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raises StoreUnavailable unless the backend answers."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def stored_bytes(self) -> int:
        """Bytes the backend uses for everything stored (file size or server memory), for capacity figures."""


def encode_template(template: np.ndarray) -> bytes:
    return np.ascontiguousarray(template, dtype="<f4").tobytes()


def decode_template(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)
