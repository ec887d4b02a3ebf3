"""SQLite backend: the embedded default, durable with nothing to set up.

Durability. The database runs in WAL mode. With ``synchronous=full`` (the default) every commit fsyncs the WAL before
it returns, so an acknowledged update survives a process kill, an OS crash and a power cut. ``synchronous=normal``
(``sqlite:///path.db?synchronous=normal``) skips that fsync: an acknowledged update still survives the service being
killed (the WAL was written to the OS), but the last commits may be lost if the machine itself goes down. Group commit
(many frames per transaction) keeps the fsync cost per frame small, so the default stays ``full``.

Several processes may share one file (WAL allows it; writers serialise on ``BEGIN IMMEDIATE`` and the version check
keeps their updates from overwriting each other), but the file must be on a local disk.

Erasure. ``secure_delete`` is on: SQLite overwrites deleted and replaced content with zeros in the database file,
so a deleted subject's or identity's template bytes do not linger in free space. The WAL still holds the page images
of recent transactions until a checkpoint; ``erase_checkpoint()`` (called after every delete and purge) copies them
back and truncates the WAL, after which the bytes are nowhere in either file. Every delete and purge that removed
something runs that checkpoint (rare administrative calls; a reader in another process can postpone it to the next
one).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlparse

from eqface.service.store.base import (
    CommitResult,
    IdentityRecord,
    StoreUnavailable,
    SubjectStore,
    SubjectWrite,
    VersionedBlob,
    decode_template,
    encode_template,
    new_version,
)

T = TypeVar("T")
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}
# 8 KiB pages hold three ~2.1 KB subject records where 4 KiB pages hold one (see bench/bench_service.py).
_PAGE_SIZE = 8192
_SCHEMA = """
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, state BLOB NOT NULL, updated_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS identities (
    id TEXT PRIMARY KEY, display_name TEXT NOT NULL, template BLOB NOT NULL, version INTEGER NOT NULL,
    updated_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('gallery_version', 0);
INSERT OR IGNORE INTO meta (key, value) SELECT 'subject_count', count(*) FROM subjects;
"""
# Retention deletes by last write time; the indexes keep a purge from scanning every row.
_INDEXES = """
CREATE INDEX IF NOT EXISTS subjects_updated ON subjects (updated_at);
CREATE INDEX IF NOT EXISTS identities_updated ON identities (updated_at);
"""


class SqliteStore(SubjectStore):
    def __init__(self, path: str | os.PathLike[str], synchronous: str = "full", busy_timeout_s: float = 10.0) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection; the service uses one thread, the lock guards other callers
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            self._conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # only takes effect on a new file
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreUnavailable(f"{self.path}: could not switch to WAL mode (got {mode!r})")
            self._conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")
            self._conn.execute("PRAGMA secure_delete=ON")  # deleted templates are zeroed, not left in free pages
            self._conn.executescript(_SCHEMA)
            self._add_timestamps()
            self._conn.executescript(_INDEXES)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc

    def _add_timestamps(self) -> None:
        """Files written before retention existed get the column, and their rows the time of this upgrade (their
        real last write is unknown: retention then counts from now rather than deleting them all at once)."""
        now = time.time()
        for table in ("subjects", "identities"):
            columns = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            if "updated_at" not in columns:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN updated_at REAL NOT NULL DEFAULT 0")
                self._conn.execute(f"UPDATE {table} SET updated_at = ?", (now,))

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """``sqlite:///relative/or/absolute/path.db[?synchronous=full|normal|extra]`` (``sqlite:////abs/path`` too)."""
        parsed = urlparse(url)
        if parsed.scheme != "sqlite" or parsed.netloc:
            raise ValueError(f"sqlite URL must look like sqlite:///relative.db or sqlite:////abs/path.db, got {url!r}")
        path = parsed.path[1:]  # as in SQLAlchemy: three slashes then a relative path, four for an absolute one
        if not path:
            raise ValueError(f"sqlite URL needs a path: sqlite:///path/to/file.db, got {url!r}")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise ValueError(f"unknown sqlite URL options {sorted(unknown)}; valid: synchronous")
        return cls(path, synchronous=options.get("synchronous", "full").lower())

    def _run(self, body: Callable[[sqlite3.Connection], T], write: bool = False) -> T:
        with self._lock:
            try:
                if not write:
                    return body(self._conn)
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = body(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc

    def load_subjects(self, subject_ids: Sequence[str]) -> dict[str, VersionedBlob]:
        if not subject_ids:
            return {}

        def body(conn: sqlite3.Connection) -> dict[str, VersionedBlob]:
            found: dict[str, VersionedBlob] = {}
            ids = list(dict.fromkeys(subject_ids))
            for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT id, version, state FROM subjects WHERE id IN ({marks})", chunk)
                found.update((sid, VersionedBlob(version, bytes(state))) for sid, version, state in rows)
            return found

        return self._run(body)

    def commit_subjects(self, writes: Sequence[SubjectWrite]) -> CommitResult:
        if not writes:
            return CommitResult({}, frozenset())

        def body(conn: sqlite3.Connection) -> CommitResult:
            versions: dict[str, int] = {}
            conflicts: set[str] = set()
            created = 0
            now = time.time()
            for w in writes:
                version = new_version()
                if w.expected_version == 0:
                    cur = conn.execute(
                        "INSERT INTO subjects (id, version, state, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (id) DO NOTHING",
                        (w.subject_id, version, w.data, now),
                    )
                else:
                    cur = conn.execute(
                        "UPDATE subjects SET version = ?, state = ?, updated_at = ? WHERE id = ? AND version = ?",
                        (version, w.data, now, w.subject_id, w.expected_version),
                    )
                if cur.rowcount == 1:
                    versions[w.subject_id] = version
                    created += w.expected_version == 0
                else:
                    conflicts.add(w.subject_id)
            if created:
                conn.execute("UPDATE meta SET value = value + ? WHERE key = 'subject_count'", (created,))
            return CommitResult(versions, frozenset(conflicts))

        return self._run(body, write=True)

    def delete_subject(self, subject_id: str) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM subjects WHERE id = ?", (subject_id,)).rowcount != 1:
                return False
            conn.execute("UPDATE meta SET value = value - 1 WHERE key = 'subject_count'")
            return True

        return self._erased(self._run(body, write=True))

    def list_subjects(self, after: str, limit: int) -> list[str]:
        query = "SELECT id FROM subjects WHERE id > ? ORDER BY id LIMIT ?"
        rows = self._run(lambda c: c.execute(query, (after, limit)).fetchall())
        return [r[0] for r in rows]

    def count_subjects(self) -> int:
        # Kept in the meta table by every insert and delete: count(*) scans the table (seconds at millions of rows,
        # all of it blocking the store thread).
        return self._run(lambda c: c.execute("SELECT value FROM meta WHERE key = 'subject_count'").fetchone()[0])

    def put_identity(self, identity: IdentityRecord, overwrite: bool) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
            template = encode_template(identity.template)
            row = (identity.identity_id, identity.display_name, template, new_version(), time.time())
            cur = conn.execute(
                f"{verb} INTO identities (id, display_name, template, version, updated_at) VALUES (?, ?, ?, ?, ?)", row
            )
            if cur.rowcount != 1:
                return False
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'gallery_version'")
            return True

        return self._run(body, write=True)

    def remove_identity(self, identity_id: str) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM identities WHERE id = ?", (identity_id,)).rowcount != 1:
                return False
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'gallery_version'")
            return True

        return self._erased(self._run(body, write=True))

    def load_gallery(self) -> tuple[int, list[IdentityRecord]]:
        def body(conn: sqlite3.Connection) -> tuple[int, list[IdentityRecord]]:
            conn.execute("BEGIN")  # one snapshot for the version and the rows
            try:
                version = conn.execute("SELECT value FROM meta WHERE key = 'gallery_version'").fetchone()[0]
                rows = conn.execute("SELECT id, display_name, template FROM identities ORDER BY id").fetchall()
            finally:
                conn.execute("COMMIT")
            return version, [IdentityRecord(i, n, decode_template(t)) for i, n, t in rows]

        return self._run(body)

    def gallery_version(self) -> int:
        return self._run(lambda c: c.execute("SELECT value FROM meta WHERE key = 'gallery_version'").fetchone()[0])

    def list_identities(self, after: str, limit: int) -> list[IdentityRecord]:
        query = "SELECT id, display_name, template FROM identities WHERE id > ? ORDER BY id LIMIT ?"
        rows = self._run(lambda c: c.execute(query, (after, limit)).fetchall())
        return [IdentityRecord(i, n, decode_template(t)) for i, n, t in rows]

    def purge_subjects(self, updated_before: float, limit: int) -> list[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            ids = _expired(conn, "subjects", updated_before, limit)
            conn.executemany("DELETE FROM subjects WHERE id = ?", [(i,) for i in ids])
            if ids:
                conn.execute("UPDATE meta SET value = value - ? WHERE key = 'subject_count'", (len(ids),))
            return ids

        return self._erased(self._run(body, write=True))

    def purge_identities(self, updated_before: float, limit: int) -> list[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            ids = _expired(conn, "identities", updated_before, limit)
            conn.executemany("DELETE FROM identities WHERE id = ?", [(i,) for i in ids])
            if ids:
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'gallery_version'")
            return ids

        return self._erased(self._run(body, write=True))

    def erase_checkpoint(self) -> bool:
        """Copies the WAL into the database and truncates it, so deleted bytes are gone from both files; False when
        another connection's reader kept the checkpoint from completing (the next one finishes the job)."""

        def body(conn: sqlite3.Connection) -> bool:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return busy == 0

        return self._run(body)

    def _erased(self, removed: T) -> T:
        if removed:
            self.erase_checkpoint()
        return removed

    def ping(self) -> None:
        self._run(lambda c: c.execute("SELECT 1").fetchone())

    def stored_bytes(self) -> int:
        def body(conn: sqlite3.Connection) -> int:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            return (pages - free) * conn.execute("PRAGMA page_size").fetchone()[0]

        return self._run(body)

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a busy checkpoint is harmless: the WAL is replayed on the next open
            self._conn.close()


def _expired(conn: sqlite3.Connection, table: str, updated_before: float, limit: int) -> list[str]:
    query = f"SELECT id FROM {table} WHERE updated_at < ? ORDER BY updated_at LIMIT ?"
    return [row[0] for row in conn.execute(query, (updated_before, limit))]
