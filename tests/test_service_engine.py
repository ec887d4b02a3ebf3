"""Group commit and the subject engine against real stores: ordering, exactly-once, deadlines, replicas, outages."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from eqface.aggregation import progressive_templates
from eqface.service.aggregator import FrameInput, FrameStatus
from eqface.service.engine import GroupCommitter, StoreThread, StreamToken, SubjectEngine
from eqface.service.errors import Aborted, DeadlineExceeded, Unavailable
from eqface.service.metrics import ServiceMetrics
from eqface.service.state import AggregationParams
from eqface.service.store import open_store
from tests.support.service import RedisServer, face_stream, redis_server, store_url  # noqa: F401

PARAMS = AggregationParams(0.5, 0.3)


def _frames(subject: str, features: np.ndarray, qualities: np.ndarray, first_seq: int = 1) -> list[FrameInput]:
    return [FrameInput(subject, first_seq + i, f, float(q)) for i, (f, q) in enumerate(zip(features, qualities))]


def _engine(url: str, cache: int = 100, metrics: ServiceMetrics | None = None) -> SubjectEngine:
    return SubjectEngine(open_store(url), PARAMS, cache, StoreThread(), metrics)


def _read(engine: SubjectEngine, subject: str):
    return asyncio.run(engine.read(subject))


async def _commit_all(engine: SubjectEngine, batches: list[list[FrameInput]], **kw) -> list:
    committer = GroupCommitter(engine, max_group_frames=10_000, metrics=kw.pop("metrics", None))
    committer.start()
    try:
        futures = [committer.submit(b, kw.get("deadline"), kw.get("token")) for b in batches]
        return await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await committer.stop()


def test_interleaved_streams_are_applied_in_order_and_grouped(store_url):  # noqa: F811
    fa, qa = face_stream(1, 40)
    fb, qb = face_stream(2, 40)
    a, b = _frames("a", fa, qa), _frames("b", fb, qb)
    batches = [x for i in range(0, 40, 8) for x in (a[i : i + 8], b[i : i + 8])]
    metrics = ServiceMetrics()
    engine = _engine(store_url, metrics=metrics)
    results = asyncio.run(_commit_all(engine, batches, metrics=metrics))
    assert all(not isinstance(r, BaseException) for r in results)
    assert [o.sequence for r in results[::2] for o in r.outcomes] == list(range(1, 41))
    for sid, f, q in (("a", fa, qa), ("b", fb, qb)):
        record = _read(engine, sid)
        np.testing.assert_allclose(record.aggregate.template, progressive_templates(f, q)[-1], atol=1e-6)
        assert record.aggregate.frames == 40 and record.last_sequence == 40
    groups = metrics.group.collect()[0].samples
    count = next(s.value for s in groups if s.name.endswith("_count"))
    assert count < len(batches)  # batches queued together were committed in fewer transactions
    engine.store.close()


def test_replayed_batches_are_duplicates_and_change_nothing(store_url):  # noqa: F811
    f, q = face_stream(3, 10)
    frames = _frames("s", f, q)
    engine = _engine(store_url)
    asyncio.run(_commit_all(engine, [frames]))
    before = engine.store.load_subjects(["s"])["s"]
    (replay,) = asyncio.run(_commit_all(engine, [frames[3:]]))
    assert {o.status for o in replay.outcomes} == {FrameStatus.DUPLICATE}
    after = engine.store.load_subjects(["s"])["s"]
    assert after == before  # not even rewritten: same version, same bytes
    engine.store.close()


def test_expired_deadline_and_failed_stream_are_not_applied(store_url):  # noqa: F811
    f, q = face_stream(4, 5)
    engine = _engine(store_url)
    (late,) = asyncio.run(_commit_all(engine, [_frames("s", f, q)], deadline=time.monotonic() - 1))
    assert isinstance(late, DeadlineExceeded)
    token = StreamToken(failed=True)
    (failed,) = asyncio.run(_commit_all(engine, [_frames("s", f, q)], token=token))
    assert isinstance(failed, Aborted)
    assert engine.store.load_subjects(["s"]) == {}
    engine.store.close()


def test_replicas_with_stale_caches_lose_no_update(store_url):  # noqa: F811
    f, q = face_stream(5, 30, low=0.4)
    frames = _frames("s", f, q)
    one, two = _engine(store_url), _engine(store_url)
    asyncio.run(_commit_all(one, [frames[:10]]))
    asyncio.run(_commit_all(two, [frames[10:20]]))  # `one` still caches the state after frame 10
    asyncio.run(_commit_all(one, [frames[20:]]))  # its version check fails, it re-reads and re-applies
    record = _read(two, "s")
    assert record.aggregate.frames == 30 and record.last_sequence == 30
    np.testing.assert_allclose(record.aggregate.template, progressive_templates(f, q)[-1], atol=1e-6)
    one.store.close()
    two.store.close()


def test_cache_stays_bounded_and_results_stay_exact(store_url):  # noqa: F811
    engine = _engine(store_url, cache=4)
    streams = {f"s{i}": face_stream(10 + i, 12) for i in range(12)}
    batches = [
        _frames(sid, f[j : j + 3], q[j : j + 3], j + 1) for j in range(0, 12, 3) for sid, (f, q) in streams.items()
    ]
    asyncio.run(_commit_all(engine, batches))
    assert len(engine.cache) <= 4
    for sid, (f, q) in streams.items():
        np.testing.assert_allclose(_read(engine, sid).aggregate.template, progressive_templates(f, q)[-1], atol=1e-6)
    engine.store.close()


def test_store_outage_fails_batches_then_recovers(tmp_path):
    pytest.importorskip("redis")
    redis = RedisServer(tmp_path / "redis").start()
    try:
        engine = _engine(redis.url("outage:"))
        f, q = face_stream(6, 6)
        frames = _frames("s", f, q)
        asyncio.run(_commit_all(engine, [frames[:3]]))
        redis.stop()
        token = StreamToken()
        down, after = asyncio.run(_commit_all(engine, [frames[3:4], frames[4:]], token=token))
        assert isinstance(down, Unavailable) and "store unavailable" in str(down)
        assert isinstance(after, (Unavailable, Aborted)) and token.failed
        redis.start(redis.port)
        (ok,) = asyncio.run(_commit_all(engine, [frames[3:]]))
        assert [o.sequence for o in ok.outcomes] == [4, 5, 6]
        assert _read(engine, "s").aggregate.frames == 6
        engine.store.close()
    finally:
        redis.stop()


def test_new_thresholds_apply_to_cached_subjects_too(tmp_path):
    """A redeployed model's thresholds reach subjects already decoded in the cache, not only new ones."""
    f, q = face_stream(8, 10)
    engine = _engine(f"sqlite:///{tmp_path}/state.db")
    asyncio.run(_commit_all(engine, [_frames("s", f[:5], q[:5])]))
    assert engine.cache.get("s") is not None  # the next frames meet the cached record
    engine.params = AggregationParams(f_th=0.5, s_th=1.0)  # no quality passes: every frame is rejected
    (result,) = asyncio.run(_commit_all(engine, [_frames("s", f[5:], q[5:], first_seq=6)]))
    assert {o.status for o in result.outcomes} == {FrameStatus.REJECTED_QUALITY}
    record = _read(engine, "s")
    np.testing.assert_allclose(record.aggregate.template, progressive_templates(f[:5], q[:5])[-1], atol=1e-6)
    assert record.aggregate.s_th == 1.0
    engine.store.close()


def test_groups_take_one_batch_per_stream_in_turn_so_a_new_stream_waits_one_round(tmp_path):
    """Fairness: a stream that queued 30 batches does not delay a later stream's first batch by 30 groups."""
    engine = _engine(f"sqlite:///{tmp_path}/s.db")
    metrics = ServiceMetrics()

    async def scenario() -> list[tuple[str, int]]:
        committer = GroupCommitter(engine, max_group_frames=24, metrics=metrics)
        committer.start()
        done: list[tuple[str, int]] = []
        futures = []
        batches = []
        for name, count in (("a", 30), ("b", 30)):
            f, q = face_stream(ord(name), 8 * count)
            batches += [(name, i, f[8 * i : 8 * i + 8], q[8 * i : 8 * i + 8]) for i in range(count)]
        f, q = face_stream(99, 8)
        batches.append(("c", 0, f, q))  # the reconnecting stream, queued after 60 batches of a and b
        tokens = {name: StreamToken() for name in "abc"}
        for name, i, f, q in batches:  # no await in between: everything is queued before the first group
            future = committer.submit(_frames(name, f, q, 8 * i + 1), None, tokens[name])
            future.add_done_callback(lambda _, key=(name, 8 * i + 1): done.append(key))
            futures.append(future)
        try:
            await asyncio.gather(*futures)
        finally:
            await committer.stop()
        return done

    done = asyncio.run(scenario())
    assert done[:3] == [("a", 1), ("b", 1), ("c", 1)]  # one batch of each stream: c's first is in the first group
    assert [k for k in done if k[0] == "a"] == [("a", 8 * i + 1) for i in range(30)]  # each stream keeps its order
    group_sizes = metrics.group.collect()[0].samples
    count = next(s.value for s in group_sizes if s.name.endswith("_count"))
    assert count == 21  # 3 batches (24 frames) in the first group, then the other 58 in 20 groups of <= 3
