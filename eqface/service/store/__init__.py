"""Durable state of the aggregation service: one interface, an SQLite and a Redis backend."""

from __future__ import annotations

from eqface.service.store.base import (
    CommitResult,
    IdentityRecord,
    StoreUnavailable,
    SubjectStore,
    SubjectWrite,
    VersionedBlob,
)

__all__ = [
    "CommitResult",
    "IdentityRecord",
    "StoreUnavailable",
    "SubjectStore",
    "SubjectWrite",
    "VersionedBlob",
    "open_store",
]


def open_store(url: str) -> SubjectStore:
    """Opens the backend named by the URL's scheme: sqlite:///path.db, redis://host:port/db, rediss://, unix://."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from eqface.service.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from eqface.service.store.redis import RedisStore  # redis-py is imported only when used

        return RedisStore.from_url(url)
    raise ValueError(f"unknown store URL scheme {scheme!r} in {url!r}; valid: sqlite, redis, rediss, unix")
