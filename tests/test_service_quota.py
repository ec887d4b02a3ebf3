"""Admission arithmetic without a server: token buckets, stream caps, bytes in flight, the memory budget; the
rate-limited log; secrets from files and the environment; the round-robin order of the group committer."""

from __future__ import annotations

import asyncio
import logging

import pytest

from eqface.service.errors import RateLimited, ResourceExhausted
from eqface.service.limits import LimitsConfig, MiB
from eqface.service.quietlog import QuietLog
from eqface.service.quota import Quotas, TokenBucket
from eqface.service.secrets import STORE_PASSWORD_ENV, store_url_with_password


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_and_says_when_to_retry():
    bucket = TokenBucket(rate=10.0, burst=20.0, now=0.0)
    assert bucket.take(15, 0.0) == 0.0 and bucket.tokens == 5
    assert bucket.take(10, 0.0) == pytest.approx(0.5)  # 5 missing at 10/s
    assert bucket.tokens == 5  # a refusal takes nothing
    assert bucket.take(10, 0.5) == 0.0 and bucket.tokens == pytest.approx(0)
    assert bucket.take(100, 0.5) == pytest.approx(2.0)  # above the burst: granted once the bucket is full
    assert bucket.take(100, 2.5) == 0.0 and bucket.tokens == 0
    assert bucket.take(1, 1000.0) == 0.0 and bucket.tokens == 19  # refills up to the burst, no further


def test_stream_caps_per_server_tenant_and_connection_and_other_tenants_unaffected():
    quotas = Quotas(LimitsConfig(max_streams=5, max_streams_per_tenant=3, max_streams_per_connection=2))
    a1, a2 = quotas.open_stream("a", "c1"), quotas.open_stream("a", "c1")
    with pytest.raises(ResourceExhausted, match="connection has 2 streams"):
        quotas.open_stream("a", "c1")
    a3 = quotas.open_stream("a", "c2")
    with pytest.raises(ResourceExhausted, match="tenant 'a' has 3 streams"):
        quotas.open_stream("a", "c3")
    b1, b2 = quotas.open_stream("b", "c3"), quotas.open_stream("b", "c4")  # tenant a's streams do not starve b
    with pytest.raises(ResourceExhausted, match="server has 5 streams"):
        quotas.open_stream("b", "c5")
    for stream in (a1, a2, a3, b1, b2):
        stream.close()
        stream.close()  # idempotent
    assert quotas.streams == 0 and not quotas._connections
    # the tenants' buckets are remembered (not full yet): closing every stream does not reset a rate limit
    assert {name: t.streams for name, t in quotas._tenants.items()} == {"a": 0, "b": 0}


def test_stream_openings_are_rate_limited_per_tenant_with_a_retry_hint():
    clock = Clock()
    quotas = Quotas(LimitsConfig(tenant_streams_per_s=2.0, tenant_streams_burst=3), clock)
    streams = [quotas.open_stream("a", f"c{i}") for i in range(3)]
    with pytest.raises(RateLimited, match=r"retry in 0\.50 s") as err:
        quotas.open_stream("a", "c9")
    assert err.value.retry_after_s == pytest.approx(0.5)
    assert quotas.open_stream("b", "c9")  # another tenant has its own bucket
    clock.now += 0.5
    streams.append(quotas.open_stream("a", "c9"))
    assert quotas.streams == 5


def test_frames_rate_limit_per_tenant():
    clock = Clock()
    quotas = Quotas(LimitsConfig(tenant_frames_per_s=100.0, tenant_frames_burst=200), clock)
    stream = quotas.open_stream("a", "c")
    stream.admit(150, 1000)
    with pytest.raises(RateLimited, match="more than 100 frames/s") as err:
        stream.admit(100, 1000)
    assert err.value.retry_after_s == pytest.approx(0.5)
    assert stream.held == [150, 1000] and quotas.bytes == 1000  # the refused message holds nothing


def test_bytes_in_flight_back_pressure_fair_share_and_the_global_budget_sheds_new_work():
    async def scenario() -> None:
        limits = LimitsConfig(
            stream_inflight_bytes=10 * MiB, connection_inflight_bytes=15 * MiB, memory_budget_bytes=24 * MiB
        )
        quotas = Quotas(limits)
        s1, s2, s3 = quotas.open_stream("a", "c1"), quotas.open_stream("a", "c1"), quotas.open_stream("a", "c2")
        assert quotas.share() == 8 * MiB  # 3 streams: an equal share of the budget is below the stream limit
        await s1.wait_room()
        s1.admit(1, 6 * MiB)
        await s1.wait_room()  # below its share: may read one more message
        s1.admit(1, 6 * MiB)
        waiting = asyncio.ensure_future(s1.wait_room())
        s2.admit(1, 4 * MiB)
        blocked = asyncio.ensure_future(s2.wait_room())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # s1 holds 12 MiB, above its share: it stops reading
        assert not blocked.done()  # s2 holds 4 MiB, but its connection holds 16 of 15
        s3.admit(1, 7 * MiB)
        s3.admit(1, 2 * MiB)  # a stream with work in flight is not shed: 25 of 24 MiB (one message over)
        s4 = quotas.open_stream("a", "c3")
        with pytest.raises(ResourceExhausted, match="memory budget is exhausted"):
            s4.admit(1, 1 * MiB)  # new work is shed, not queued
        s4.close()
        s1.release(1, 6 * MiB)
        await asyncio.wait_for(asyncio.gather(waiting, blocked), 1)
        s1.close()  # releases what it still holds
        assert quotas.bytes == 13 * MiB and quotas.share() == 10 * MiB
        s2.close()
        s3.close()
        assert quotas.bytes == 0 and quotas.streams == 0

    asyncio.run(scenario())


def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_budget_bytes must be > 0"):
        LimitsConfig(memory_budget_bytes=0)
    with pytest.raises(ValueError, match="must not exceed max_streams"):
        LimitsConfig(max_streams=10, max_streams_per_tenant=20)
    assert LimitsConfig(stream_idle_timeout_s=0).stream_idle_timeout_s == 0  # 0 disables the idle timeout
    options = dict(LimitsConfig(keepalive_time_s=30, max_connection_age_s=60).server_options())
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.max_connection_age_ms"] == 60_000


def test_quiet_log_logs_one_line_per_interval_and_counts_the_rest(caplog):
    clock = Clock()
    quiet = QuietLog(logging.getLogger("test.quiet"), interval_s=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        assert quiet.warning("bad", "bad request %d", 1)
        assert not any(quiet.warning("bad", "bad request %d", i) for i in range(50))
        assert quiet.warning("other", "another kind")  # kinds are limited separately
        clock.now += 10.0
        assert quiet.warning("bad", "bad request %d", 99)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad request 1",
        "another kind",
        "bad request 99 (50 more like it in the last 10 s not logged)",
    ]


def test_store_password_comes_from_a_file_or_the_environment_never_the_url(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd\n")
    url = "redis://cache:6379/0?prefix=x:"
    assert store_url_with_password(url, str(secret), {}) == "redis://:p%40ss%3Aw%2Frd@cache:6379/0?prefix=x:"
    assert store_url_with_password(url, None, {STORE_PASSWORD_ENV: "s3"}) == "redis://:s3@cache:6379/0?prefix=x:"
    assert store_url_with_password(url, None, {}) == url
    with pytest.raises(ValueError, match="not on the command line"):
        store_url_with_password("redis://:s3@cache:6379/0", None, {})
    with pytest.raises(ValueError, match="cannot read the store password file"):
        store_url_with_password(url, str(tmp_path / "missing"), {})
    with pytest.raises(ValueError, match="sqlite store takes none"):
        store_url_with_password("sqlite:///x.db", None, {STORE_PASSWORD_ENV: "s3"})
