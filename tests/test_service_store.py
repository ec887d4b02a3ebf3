"""The store contract, one suite for both backends (SQLite file, real redis-server)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from eqface.service.store import STORES, IdentityRecord, StoreUnavailable, SubjectStore, SubjectWrite, open_store
from eqface.service.store.sqlite import SqliteStore
from tests.conftest import REPO_ROOT
from tests.support.service import redis_server, store_url, unit  # noqa: F401  (fixtures)


@pytest.fixture
def store(store_url: str) -> Iterator[SubjectStore]:  # noqa: F811
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


def test_create_read_and_versioned_update(store: SubjectStore):
    assert store.load_subjects(["a"]) == {}
    created = store.commit_subjects([SubjectWrite("a", 0, b"one"), SubjectWrite("b", 0, b"bee")])
    assert not created.conflicts and set(created.versions) == {"a", "b"}
    loaded = store.load_subjects(["a", "b", "missing", "a"])
    assert set(loaded) == {"a", "b"}
    assert loaded["a"].data == b"one" and loaded["a"].version == created.versions["a"] != 0
    updated = store.commit_subjects([SubjectWrite("a", created.versions["a"], b"two")])
    assert store.load_subjects(["a"])["a"].data == b"two"
    assert updated.versions["a"] != created.versions["a"]
    assert store.count_subjects() == 2


def test_stale_writes_conflict_and_change_nothing(store: SubjectStore):
    v1 = store.commit_subjects([SubjectWrite("a", 0, b"one")]).versions["a"]
    store.commit_subjects([SubjectWrite("a", v1, b"two")])
    result = store.commit_subjects([SubjectWrite("a", v1, b"stale"), SubjectWrite("c", 0, b"new")])
    assert result.conflicts == {"a"} and set(result.versions) == {"c"}
    assert store.load_subjects(["a"])["a"].data == b"two"
    assert store.commit_subjects([SubjectWrite("a", 0, b"create-again")]).conflicts == {"a"}


def test_delete_and_recreate_cannot_resurrect_an_old_version(store: SubjectStore):
    v1 = store.commit_subjects([SubjectWrite("a", 0, b"one")]).versions["a"]
    assert store.delete_subject("a") and not store.delete_subject("a")
    assert store.load_subjects(["a"]) == {} and store.count_subjects() == 0
    v2 = store.commit_subjects([SubjectWrite("a", 0, b"again")]).versions["a"]
    assert v2 != v1
    assert store.commit_subjects([SubjectWrite("a", v1, b"from a stale cache")]).conflicts == {"a"}


def test_list_subjects_pages_in_byte_order(store: SubjectStore):
    ids = ["b", "a", "ü", "a1", "Z", "10", "2"]
    store.commit_subjects([SubjectWrite(i, 0, b"x") for i in ids])
    pages, after = [], ""
    while True:
        page = store.list_subjects(after, 3)
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert [i for p in pages for i in p] == sorted(ids, key=lambda s: s.encode())
    assert all(len(p) <= 3 for p in pages)


def test_gallery_entries_and_version(store: SubjectStore):
    rng = np.random.default_rng(0)
    t1, t2 = unit(rng.normal(size=(2, 512)))
    v0 = store.gallery_version()
    assert store.put_identity(IdentityRecord("alice", "Alice Ä", t1), overwrite=False)
    assert not store.put_identity(IdentityRecord("alice", "other", t2), overwrite=False)
    v1 = store.gallery_version()
    assert v1 != v0
    assert store.put_identity(IdentityRecord("alice", "Alice 2", t2), overwrite=True)
    assert store.put_identity(IdentityRecord("bob", "", t1), overwrite=False)
    version, entries = store.load_gallery()
    assert version == store.gallery_version() != v1
    assert [(e.identity_id, e.display_name) for e in entries] == [("alice", "Alice 2"), ("bob", "")]
    np.testing.assert_array_equal(entries[0].template, t2)
    assert [e.identity_id for e in store.list_identities("alice", 10)] == ["bob"]
    assert store.remove_identity("alice") and not store.remove_identity("alice")
    assert [e.identity_id for e in store.load_gallery()[1]] == ["bob"]


def test_two_handles_on_one_store_serialise_their_updates(store_url: str):  # noqa: F811
    """Two replicas incrementing one counter with read-modify-CAS loops: no update is lost."""
    handles = [open_store(store_url), open_store(store_url)]
    rounds = 60

    def increment(s: SubjectStore) -> None:
        for _ in range(rounds):
            while True:
                current = s.load_subjects(["counter"]).get("counter")
                value = int(current.data) if current else 0
                write = SubjectWrite("counter", current.version if current else 0, str(value + 1).encode())
                if not s.commit_subjects([write]).conflicts:
                    break

    threads = [threading.Thread(target=increment, args=(h,)) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert int(handles[0].load_subjects(["counter"])["counter"].data) == 2 * rounds
    finally:
        for h in handles:
            h.close()


def test_stored_bytes_and_ping(store: SubjectStore):
    store.ping()
    assert store.stored_bytes() > 0


def test_sqlite_is_wal_with_the_requested_synchronous_mode(tmp_path):
    store = SqliteStore.from_url(f"sqlite:///{tmp_path}/a.db?synchronous=normal")
    try:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    finally:
        store.close()
    default = SqliteStore.from_url(f"sqlite:///{tmp_path}/b.db")
    try:
        assert default._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        default.close()


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlite://host/x.db", "sqlite:///"),
        ("sqlite:///x.db?sync=1", "unknown sqlite URL options"),
        ("mysql://x", "unknown store URL scheme"),
    ],
)
def test_bad_store_urls(url, message):
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_unknown_scheme_lists_the_registered_ones():
    with pytest.raises(ValueError) as err:
        open_store("ftp://host/x")
    assert "'ftp'" in str(err.value)
    for scheme in ("redis", "rediss", "sqlite", "unix"):
        assert scheme in str(err.value)
    assert set(STORES.names()) == {"redis", "rediss", "sqlite", "unix"}


def test_choosing_a_store_imports_only_its_backend(tmp_path):
    """The registry's factories import their backend when called: importing the package (or the service config and
    command line, which check store URLs against it) and opening SQLite never import redis-py."""
    code = (
        "import sys\n"
        "import eqface.service.cli, eqface.service.config, eqface.service.store as store\n"
        "assert 'redis' not in sys.modules and 'eqface.service.store.sqlite' not in sys.modules\n"
        f"store.open_store('sqlite:///{tmp_path}/a.db').close()\n"
        "assert 'redis' not in sys.modules and 'eqface.service.store.sqlite' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr


def test_unreachable_redis_is_store_unavailable():
    pytest.importorskip("redis")
    from eqface.processes import free_port

    with pytest.raises(StoreUnavailable, match="Redis"):
        open_store(f"redis://127.0.0.1:{free_port()}/0")


def test_subject_count_follows_creates_and_deletes_across_reopen(store_url: str):  # noqa: F811
    store = open_store(store_url)
    try:
        store.commit_subjects([SubjectWrite(i, 0, b"x") for i in "abc"])
        versions = store.load_subjects(["a"])
        store.commit_subjects([SubjectWrite("a", versions["a"].version, b"y")])  # an update is not a new subject
        store.commit_subjects([SubjectWrite("b", 0, b"conflict")])  # nor is a lost create
        store.delete_subject("c")
        store.delete_subject("c")
        assert store.count_subjects() == 2
    finally:
        store.close()
    again = open_store(store_url)
    try:
        assert again.count_subjects() == 2
    finally:
        again.close()


def test_purge_deletes_what_was_not_written_since_the_cutoff(store: SubjectStore):
    """Retention: subjects and identities last written before the cutoff go, with their indexes; newer ones stay."""
    rng = np.random.default_rng(1)
    store.commit_subjects([SubjectWrite(i, 0, b"old") for i in ("a", "b", "c")])
    store.put_identity(IdentityRecord("old-id", "Old", unit(rng.normal(size=512))), overwrite=False)
    time.sleep(0.05)
    cutoff = time.time()
    time.sleep(0.05)
    version_b = store.load_subjects(["b"])["b"].version
    store.commit_subjects([SubjectWrite("b", version_b, b"updated"), SubjectWrite("d", 0, b"new")])
    store.put_identity(IdentityRecord("new-id", "New", unit(rng.normal(size=512))), overwrite=False)
    gallery_version = store.gallery_version()

    assert sorted(store.purge_subjects(cutoff, limit=1) + store.purge_subjects(cutoff, limit=10)) == ["a", "c"]
    assert store.purge_subjects(cutoff, limit=10) == []
    assert set(store.load_subjects(["a", "b", "c", "d"])) == {"b", "d"}
    assert store.list_subjects("", 10) == ["b", "d"] and store.count_subjects() == 2
    assert store.commit_subjects([SubjectWrite("a", 0, b"again")]).conflicts == frozenset()  # really gone

    assert store.purge_identities(cutoff, limit=10) == ["old-id"]
    assert store.gallery_version() != gallery_version
    assert [r.identity_id for r in store.load_gallery()[1]] == ["new-id"]
    assert [r.identity_id for r in store.list_identities("", 10)] == ["new-id"]
    assert store.purge_identities(cutoff, limit=10) == [] and store.gallery_version() != gallery_version
    later = time.time() + 1
    assert sorted(store.purge_subjects(later, 10)) == ["a", "b", "d"] and store.count_subjects() == 0
    assert store.purge_identities(later, 10) == ["new-id"]


def _marker_template(tag: int) -> np.ndarray:
    """A template whose bytes are recognisable in a file: a fixed random pattern (no run of zeros)."""
    return unit(np.random.default_rng(1000 + tag).uniform(0.5, 1.0, 128)).astype(np.float32)


def test_sqlite_delete_leaves_no_template_bytes_in_its_files(tmp_path):
    """secure_delete + a checkpoint after erasing: the bytes of a deleted subject and a removed identity are in
    neither the database file nor its WAL, while those of a kept one still are (the check can fail)."""
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    kept, erased, identity = (_marker_template(i).tobytes() for i in range(3))
    store.commit_subjects([SubjectWrite("kept", 0, kept), SubjectWrite("erased", 0, erased)])
    store.put_identity(IdentityRecord("alice", "Alice", np.frombuffer(identity, np.float32)), overwrite=False)
    files = [path, path.with_name(path.name + "-wal")]

    def found(data: bytes) -> bool:
        return any(f.exists() and data in f.read_bytes() for f in files)

    assert found(kept) and found(erased) and found(identity)
    assert store.delete_subject("erased") and store.remove_identity("alice")
    assert found(kept) and not found(erased) and not found(identity)
    store.close()
    assert not found(erased) and not found(identity)

    again = SqliteStore(path)  # purge by retention erases the same way
    assert again.purge_subjects(time.time() + 1, 10) == ["kept"]
    assert not found(kept)
    again.close()


def test_redis_delete_and_purge_leave_no_key(redis_server):  # noqa: F811
    import redis as redis_py

    url = redis_server.url()
    store = open_store(url)
    client = redis_py.Redis(port=redis_server.port)
    prefix = url.rsplit("prefix=", 1)[1]
    try:
        store.commit_subjects([SubjectWrite("a", 0, _marker_template(0).tobytes()), SubjectWrite("b", 0, b"x")])
        store.put_identity(IdentityRecord("alice", "Alice", _marker_template(1)), overwrite=False)
        assert client.exists(f"{prefix}subject:a") and client.zscore(f"{prefix}subjects:written", "a")
        assert store.delete_subject("a") and store.remove_identity("alice")
        assert not client.exists(f"{prefix}subject:a") and client.zscore(f"{prefix}subjects:written", "a") is None
        assert client.hget(f"{prefix}gallery", "alice") is None
        assert client.zscore(f"{prefix}identities:written", "alice") is None
        assert store.purge_subjects(time.time() + 1, 10) == ["b"]
        left = {f"{prefix}gallery:version", f"{prefix}written:backfilled"}
        assert {k.decode() for k in client.keys(f"{prefix}*")} == left
    finally:
        store.close()
        client.close()


def test_redis_records_from_before_write_times_get_one_at_upgrade(redis_server):  # noqa: F811
    """A store written by a version without write times: opening it stamps its records with the upgrade time, once,
    so retention counts from then instead of never deleting them (SQLite does the same with its new column)."""
    import redis as redis_py

    url = redis_server.url()
    prefix = url.rsplit("prefix=", 1)[1]
    client = redis_py.Redis(port=redis_server.port)
    try:  # what the previous version wrote for one subject and one identity
        client.hset(f"{prefix}subject:legacy", mapping={"v": 1, "s": b"x"})
        client.zadd(f"{prefix}subjects", {"legacy": 0})
        client.hset(f"{prefix}gallery", "old-id", b"\x00\x00" + _marker_template(0).tobytes())
        client.zadd(f"{prefix}identities", {"old-id": 0})
        before = time.time()
        store = open_store(url)
        try:
            stamped = client.zscore(f"{prefix}subjects:written", "legacy")
            assert stamped is not None and before <= stamped <= time.time()
            assert client.zscore(f"{prefix}identities:written", "old-id") is not None
            assert store.purge_subjects(before - 60, 10) == []  # not expired: counted from the upgrade
            assert store.purge_subjects(time.time() + 1, 10) == ["legacy"]
            assert store.purge_identities(time.time() + 1, 10) == ["old-id"]
        finally:
            store.close()
        client.zadd(f"{prefix}subjects", {"later": 0})  # the upgrade runs once
        open_store(url).close()
        assert client.zscore(f"{prefix}subjects:written", "later") is None
    finally:
        client.close()


def test_sqlite_rows_from_before_write_times_get_one_at_upgrade(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the previous version's schema
        conn.executescript(
            "CREATE TABLE subjects (id TEXT PRIMARY KEY, version INTEGER NOT NULL, state BLOB NOT NULL);"
            "CREATE TABLE identities (id TEXT PRIMARY KEY, display_name TEXT NOT NULL, template BLOB NOT NULL, "
            "version INTEGER NOT NULL);"
            "INSERT INTO subjects VALUES ('legacy', 1, x'00');"
        )
    conn.close()
    before = time.time()
    store = SqliteStore(path)
    try:
        assert store.load_subjects(["legacy"])["legacy"].data == b"\x00" and store.count_subjects() == 1
        assert store.purge_subjects(before - 60, 10) == []
        assert store.purge_subjects(time.time() + 1, 10) == ["legacy"] and store.count_subjects() == 0
    finally:
        store.close()
