"""Durable state of the aggregation service: one interface, an SQLite and a Redis backend chosen by URL scheme.

``STORES`` maps each URL scheme to a factory that imports its backend only when called, so importing this package
imports neither redis-py nor sqlite3's backend module.
"""

from __future__ import annotations

from eqface.registry import Registry
from eqface.service.store.base import (
    CommitResult,
    IdentityRecord,
    StoreUnavailable,
    SubjectStore,
    SubjectWrite,
    VersionedBlob,
)

__all__ = [
    "STORES",
    "CommitResult",
    "IdentityRecord",
    "StoreUnavailable",
    "SubjectStore",
    "SubjectWrite",
    "VersionedBlob",
    "open_store",
    "url_scheme",
]

STORES: Registry[SubjectStore] = Registry("store URL scheme")


@STORES.register("sqlite")
def _sqlite(url: str) -> SubjectStore:
    from eqface.service.store.sqlite import SqliteStore

    return SqliteStore.from_url(url)


@STORES.register("unix")
@STORES.register("rediss")
@STORES.register("redis")
def _redis(url: str) -> SubjectStore:
    from eqface.service.store.redis import RedisStore  # redis-py is imported only when used

    return RedisStore.from_url(url)


def url_scheme(url: str) -> str:
    """The scheme of a store URL ('sqlite' for sqlite:///state.db); '' when the URL has none."""
    scheme, separator, _ = url.partition("://")
    return scheme.lower() if separator else ""


def open_store(url: str) -> SubjectStore:
    """Opens the backend named by the URL's scheme: sqlite:///path.db, redis://host:port/db, rediss://, unix://.

    Raises:
        ValueError: the scheme is not one of ``STORES.names()`` (the message lists them).
    """
    return STORES.get(url_scheme(url))(url)
