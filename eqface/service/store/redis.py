"""Redis backend: one Redis shared by several service replicas.

Each subject is a hash ``<prefix>subject:<id>`` holding its version token and record bytes; a sorted set indexes the
ids for paging and counting. Updates go through a Lua script that checks every subject's version and writes the ones
that still match, atomically per subject (Redis runs a script without interleaving other commands), so two replicas
updating the same subject never lose an update: the loser re-reads and re-applies its frames. The gallery is one hash
plus an index and a version counter that replicas poll to refresh their in-memory copy.

Durability is Redis's: an update is acknowledged after Redis answered the script, so it survives the *service* being
killed. To survive Redis itself going down, run Redis with ``appendonly yes`` and ``appendfsync always`` (Redis then
fsyncs its append-only file before it answers); the store logs a warning when it can see another setting. Single
Redis instance (or a primary with replicas); Redis Cluster is not supported (the scripts touch several keys).
"""

from __future__ import annotations

import logging
import struct
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

# KEYS: subject hashes..., then the id index. ARGV: (id, expected version, new version, data) per subject.
# Returns the 1-based positions of the subjects whose version had changed (not written).
_COMMIT = """
local n = #KEYS - 1
local conflicts = {}
for i = 1, n do
  local base = 4 * (i - 1)
  local current = redis.call('HGET', KEYS[i], 'v')
  local expected = ARGV[base + 2]
  if (current == false and expected == '0') or current == expected then
    redis.call('HSET', KEYS[i], 'v', ARGV[base + 3], 's', ARGV[base + 4])
    if current == false then redis.call('ZADD', KEYS[n + 1], 0, ARGV[base + 1]) end
  else
    conflicts[#conflicts + 1] = i
  end
end
return conflicts
"""
# KEYS: subject hash, id index. ARGV: id.
_DELETE = """
local removed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
"""
# KEYS: gallery hash, identity index, gallery version. ARGV: id, packed entry, overwrite flag.
_PUT_IDENTITY = """
if ARGV[3] == '0' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('INCR', KEYS[3])
return 1
"""
# KEYS: gallery hash, identity index, gallery version. ARGV: id.
_REMOVE_IDENTITY = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
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
        self._commit = client.register_script(_COMMIT)
        self._delete = client.register_script(_DELETE)
        self._put_identity = client.register_script(_PUT_IDENTITY)
        self._remove_identity = client.register_script(_REMOVE_IDENTITY)
        self._warn_if_not_fsyncing()

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
        keys = [self._key(w.subject_id) for w in writes] + [self._index]
        args: list[str | int | bytes] = []
        versions = {}
        for w in writes:
            versions[w.subject_id] = new_version()
            args += [w.subject_id, w.expected_version, versions[w.subject_id], w.data]
        try:
            lost = self._commit(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc
        conflicts = frozenset(writes[i - 1].subject_id for i in lost)
        return CommitResult({k: v for k, v in versions.items() if k not in conflicts}, conflicts)

    def delete_subject(self, subject_id: str) -> bool:
        try:
            return self._delete(keys=[self._key(subject_id), self._index], args=[subject_id]) == 1
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
        keys = [self._gallery, self._gallery_index, self._gallery_version]
        try:
            return self._put_identity(keys=keys, args=[identity.identity_id, packed, int(overwrite)]) == 1
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis: {exc}") from exc

    def remove_identity(self, identity_id: str) -> bool:
        keys = [self._gallery, self._gallery_index, self._gallery_version]
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
