"""Redis backend: one Redis shared by several service replicas.

Each subject is a hash ``<prefix>subject:<id>`` holding its version token and record bytes; a sorted set indexes the
ids for paging and counting. Updates go through a Lua script that checks every subject's version and writes the ones
that still match, atomically per subject (Redis runs a script without interleaving other commands), so two replicas
updating the same subject never lose an update: the loser re-reads and re-applies its frames. The gallery is one hash
plus an index and a version counter that replicas poll to refresh their in-memory copy. Two more sorted sets hold each
subject's and each identity's last write time (Unix seconds, from the writer's clock), which retention purges by.

Durability is Redis's: an update is acknowledged after Redis answered the script, so it survives the *service* being
killed. To survive Redis itself going down, run Redis with ``appendonly yes`` and ``appendfsync always`` (Redis then
fsyncs its append-only file before it answers); the store logs a warning when it can see another setting. Single
Redis instance (or a primary with replicas); Redis Cluster is not supported (the scripts touch several keys).

Erasure: a delete removes the keys and index entries at once (``DEL``/``HDEL``); Redis frees the memory. Copies on
disk (the append-only file's history, RDB snapshots) last until Redis rewrites them (``BGREWRITEAOF``, the next
``BGSAVE``): see the service README on erasure.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import redis

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

log = logging.getLogger(__name__)

# KEYS: subject hashes..., then the id index, then the write-time index. ARGV: (id, expected version, new version,
# data) per subject, then the write time. Returns the 1-based positions of the subjects whose version had changed.
_COMMIT = """
local n = #KEYS - 2
local now = ARGV[#ARGV]
local conflicts = {}
for i = 1, n do
  local base = 4 * (i - 1)
  local current = redis.call('HGET', KEYS[i], 'v')
  local expected = ARGV[base + 2]
  if (current == false and expected == '0') or current == expected then
    redis.call('HSET', KEYS[i], 'v', ARGV[base + 3], 's', ARGV[base + 4])
    if current == false then redis.call('ZADD', KEYS[n + 1], 0, ARGV[base + 1]) end
    redis.call('ZADD', KEYS[n + 2], now, ARGV[base + 1])
  else
    conflicts[#conflicts + 1] = i
  end
end
return conflicts
"""
# KEYS: subject hash, id index, write-time index. ARGV: id.
_DELETE = """
local removed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return removed
"""
# KEYS: id index, write-time index. ARGV: cutoff, limit, subject key prefix. Deletes the subjects written before the
# cutoff, in one script so that a subject written again meanwhile (a newer time) is not among them.
_PURGE_SUBJECTS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[3] .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
end
return ids
"""
# KEYS: gallery hash, identity index, gallery version, write-time index. ARGV: cutoff, limit.
_PURGE_IDENTITIES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[4], id)
end
if #ids > 0 then redis.call('INCR', KEYS[3]) end
return ids
"""
# KEYS: gallery hash, identity index, gallery version, write-time index. ARGV: id, packed entry, overwrite flag, time.
_PUT_IDENTITY = """
if ARGV[3] == '0' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""
# KEYS: gallery hash, identity index, gallery version, write-time index. ARGV: id.
_REMOVE_IDENTITY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""
_NAME_LEN = struct.Struct("<H")


class RedisStore(SubjectStore):
    def __init__(self, client: redis.Redis, prefix: str = "eqface:") -> None:
        self._r = client
        self.prefix = prefix
        self._index = f"{prefix}subjects"
        self._gallery = f"{prefix}gallery"
        self._gallery_index = f"{prefix}identities"
        self._gallery_version = f"{prefix}gallery:version"
        self._written = f"{prefix}subjects:written"
        self._gallery_written = f"{prefix}identities:written"
        self._commit = client.register_script(_COMMIT)
        self._delete = client.register_script(_DELETE)
        self._put_identity = client.register_script(_PUT_IDENTITY)
        self._remove_identity = client.register_script(_REMOVE_IDENTITY)
        self._purge_subjects = client.register_script(_PURGE_SUBJECTS)
        self._purge_identities = client.register_script(_PURGE_IDENTITIES)
        self._warn_if_not_fsyncing()
        self._backfill_write_times()

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> RedisStore:
        """``redis://[:password@]host:port/db[?prefix=eqface:]`` (also rediss:// and unix:///path.sock?db=N)."""
        parsed = urlparse(url)
        query = parse_qs(parsed.query)
        prefix = query.pop("prefix", ["eqface:"])[-1]
        rest = urlunparse(parsed._replace(query=urlencode(query, doseq=True)))
        client = redis.Redis.from_url(rest, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        try:
            return cls(client, prefix=prefix)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {parsed.hostname or parsed.path}: {exc}") from exc

    def _key(self, subject_id: str) -> str:
        return f"{self.prefix}subject:{subject_id}"

    def _backfill_write_times(self) -> None:
        """Records written before write times were kept get the time of this upgrade (their real last write is
        unknown: retention then counts from now), once per store: ``ZADD NX`` in batches, then a marker key."""
        marker = f"{self.prefix}written:backfilled"
        if self._r.exists(marker):
            return
        now = time.time()
        for index, written in ((self._index, self._written), (self._gallery_index, self._gallery_written)):
            batch: list[bytes] = []
            for member, _ in self._r.zscan_iter(index, count=1000):
                batch.append(member)
                if len(batch) == 1000:
                    self._r.zadd(written, dict.fromkeys(batch, now), nx=True)
                    batch = []
            if batch:
                self._r.zadd(written, dict.fromkeys(batch, now), nx=True)
        self._r.set(marker, 1)

    def _warn_if_not_fsyncing(self) -> None:
        try:
            settings = {**self._r.config_get("appendonly"), **self._r.config_get("appendfsync")}
        except redis.ResponseError:
            return  # CONFIG is disabled on many managed Redis services: nothing to check
        if settings.get("appendonly") != "yes" or settings.get("appendfsync") != "always":
            log.warning(
                "Redis runs with appendonly=%s appendfsync=%s: acknowledged updates survive a service crash but "
                "not a Redis crash; use appendonly yes + appendfsync always for full durability",
                settings.get("appendonly"),
                settings.get("appendfsync"),
            )

    def load_subjects(self, subject_ids: Sequence[str]) -> dict[str, VersionedBlob]:
        ids = list(dict.fromkeys(subject_ids))
        if not ids:
            return {}
        try:
            pipe = self._r.pipeline(transaction=False)
            for sid in ids:
                pipe.hmget(self._key(sid), "v", "s")
            rows = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return {sid: VersionedBlob(int(v), bytes(s)) for sid, (v, s) in zip(ids, rows) if v is not None}

    def commit_subjects(self, writes: Sequence[SubjectWrite]) -> CommitResult:
        if not writes:
            return CommitResult({}, frozenset())
        keys = [self._key(w.subject_id) for w in writes] + [self._index, self._written]
        args: list[str | int | float | bytes] = []
        versions = {}
        for w in writes:
            versions[w.subject_id] = new_version()
            args += [w.subject_id, w.expected_version, versions[w.subject_id], w.data]
        args.append(repr(time.time()))
        try:
            lost = self._commit(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        conflicts = frozenset(writes[i - 1].subject_id for i in lost)
        return CommitResult({k: v for k, v in versions.items() if k not in conflicts}, conflicts)

    def delete_subject(self, subject_id: str) -> bool:
        try:
            return self._delete(keys=[self._key(subject_id), self._index, self._written], args=[subject_id]) == 1
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def list_subjects(self, after: str, limit: int) -> list[str]:
        return [i.decode() for i in self._range(self._index, after, limit)]

    def count_subjects(self) -> int:
        try:
            return int(self._r.zcard(self._index))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def _range(self, index: str, after: str, limit: int) -> list[bytes]:
        start = f"({after}" if after else "-"
        try:
            return self._r.zrangebylex(index, start, "+", start=0, num=limit)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def put_identity(self, identity: IdentityRecord, overwrite: bool) -> bool:
        name = identity.display_name.encode()
        packed = _NAME_LEN.pack(len(name)) + name + encode_template(identity.template)
        keys = [self._gallery, self._gallery_index, self._gallery_version, self._gallery_written]
        args = [identity.identity_id, packed, int(overwrite), repr(time.time())]
        try:
            return self._put_identity(keys=keys, args=args) == 1
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def remove_identity(self, identity_id: str) -> bool:
        keys = [self._gallery, self._gallery_index, self._gallery_version, self._gallery_written]
        try:
            return self._remove_identity(keys=keys, args=[identity_id]) == 1
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def load_gallery(self) -> tuple[int, list[IdentityRecord]]:
        try:
            pipe = self._r.pipeline(transaction=True)  # MULTI/EXEC: version and entries from one moment
            pipe.get(self._gallery_version)
            pipe.hgetall(self._gallery)
            version, entries = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        records = [_unpack_identity(k.decode(), v) for k, v in entries.items()]
        return int(version or 0), sorted(records, key=lambda r: r.identity_id)

    def gallery_version(self) -> int:
        try:
            return int(self._r.get(self._gallery_version) or 0)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def list_identities(self, after: str, limit: int) -> list[IdentityRecord]:
        ids = [i.decode() for i in self._range(self._gallery_index, after, limit)]
        if not ids:
            return []
        try:
            packed = self._r.hmget(self._gallery, ids)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return [_unpack_identity(i, p) for i, p in zip(ids, packed) if p is not None]

    def purge_subjects(self, updated_before: float, limit: int) -> list[str]:
        keys = [self._index, self._written]
        try:
            ids = self._purge_subjects(keys=keys, args=[repr(updated_before), limit, self._key("")])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return [i.decode() for i in ids]

    def purge_identities(self, updated_before: float, limit: int) -> list[str]:
        keys = [self._gallery, self._gallery_index, self._gallery_version, self._gallery_written]
        try:
            ids = self._purge_identities(keys=keys, args=[repr(updated_before), limit])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        return [i.decode() for i in ids]

    def ping(self) -> None:
        try:
            self._r.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def stored_bytes(self) -> int:
        try:
            return int(self._r.info("memory")["used_memory"])
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def close(self) -> None:
        self._r.close()


def _unpack_identity(identity_id: str, packed: bytes) -> IdentityRecord:
    (n,) = _NAME_LEN.unpack_from(packed)
    name = packed[_NAME_LEN.size : _NAME_LEN.size + n].decode()
    return IdentityRecord(identity_id, name, decode_template(packed[_NAME_LEN.size + n :]))
