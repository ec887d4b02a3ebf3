"""Admission of streams and of their messages: stream caps, bytes and frames in flight, per-tenant token buckets.

``Quotas`` is one per server. ``open_stream(tenant, connection)`` admits a stream (or raises ResourceExhausted)
and returns its ``StreamQuota``, through which ``flow.StreamFlow`` waits for room before reading a message, admits
it once read, and releases it once answered. Plain asyncio; no gRPC (the servicer passes the caller's tenant and the
connection's peer address).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eqface.service.errors import RateLimited, ResourceExhausted
from eqface.service.limits import LimitsConfig, MiB


class TokenBucket:
    """``rate`` tokens per second up to ``burst``. ``take(n)`` returns 0.0 when granted, else the seconds until it
    would be (nothing is taken then). A request above ``burst`` is granted once the bucket is full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, n: float, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(n, self.burst)
        if self.tokens >= need:
            self.tokens -= need
            return 0.0
        return (need - self.tokens) / self.rate


class Inflight:
    """Frames and bytes held, against limits."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.bytes = 0

    def full(self, max_bytes: int | None = None) -> bool:
        return self.frames >= self.max_frames or self.bytes >= (self.max_bytes if max_bytes is None else max_bytes)

    def add(self, frames: int, nbytes: int) -> None:
        self.frames += frames
        self.bytes += nbytes

    def remove(self, frames: int, nbytes: int) -> None:
        self.frames -= frames
        self.bytes -= nbytes


@dataclass
class _Tenant:
    frames: TokenBucket
    openings: TokenBucket
    streams: int = 0


@dataclass
class _Connection:
    inflight: Inflight
    streams: int = 0


@dataclass(eq=False)
class StreamQuota:
    """One admitted stream's share. Call ``close()`` exactly once when the stream ends (it releases what is held)."""

    quotas: Quotas
    tenant: str
    connection: str
    inflight: Inflight
    held: list[int] = field(default_factory=lambda: [0, 0])  # frames, bytes admitted and not released
    closed: bool = False

    async def wait_room(self) -> None:
        """Back-pressure: returns once this stream may read another message — it holds less than its share
        (``Quotas.share``) and its connection is below its limit."""
        await self.quotas.wait_room(self)

    def admit(self, frames: int, nbytes: int) -> None:
        """Accounts a message just read; raises RateLimited / ResourceExhausted (nothing held then)."""
        self.quotas.admit(self, frames, nbytes)

    def release(self, frames: int, nbytes: int) -> None:
        self.quotas.release(self, frames, nbytes)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.quotas.close_stream(self)


class Quotas:
    """Every limit of ``LimitsConfig`` that the service enforces (keepalive and connection age are gRPC's)."""

    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.streams = 0
        self.bytes = 0  # accounted bytes in flight across all streams
        self._tenants: dict[str, _Tenant] = {}
        self._connections: dict[str, _Connection] = {}
        self._released = asyncio.Event()  # set (and replaced) whenever bytes are released: waiters re-check

    def _tenant(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            c, now = self.config, self.clock()
            state = _Tenant(
                TokenBucket(c.tenant_frames_per_s, c.tenant_frames_burst, now),
                TokenBucket(c.tenant_streams_per_s, c.tenant_streams_burst, now),
            )
            self._tenants[tenant] = state
        return state

    def share(self) -> int:
        """Bytes one stream may hold: its own limit, or an equal share of the memory budget when many streams are
        open — so streams that read ahead (or never read their answers) cannot take the budget from a stream that
        starts later: a reconnect storm is slowed down, not shed."""
        return min(self.config.stream_inflight_bytes, self.config.memory_budget_bytes // max(self.streams, 1))

    async def wait_room(self, stream: StreamQuota) -> None:
        connection = self.connection_inflight(stream.connection)
        while stream.inflight.full(self.share()) or connection.full():
            released = self._released
            await released.wait()

    def _notify(self) -> None:
        released, self._released = self._released, asyncio.Event()
        released.set()

    def connection_inflight(self, connection: str) -> Inflight:
        return self._connections[connection].inflight

    def open_stream(self, tenant: str, connection: str) -> StreamQuota:
        c = self.config
        t = self._tenant(tenant)
        conn = self._connections.get(connection)
        if self.streams >= c.max_streams:
            raise ResourceExhausted(f"the server has {self.streams} streams open, its limit; retry with back-off")
        if t.streams >= c.max_streams_per_tenant:
            raise ResourceExhausted(f"tenant {tenant!r} has {t.streams} streams open, its limit")
        if conn is not None and conn.streams >= c.max_streams_per_connection:
            raise ResourceExhausted(f"this connection has {conn.streams} streams open, its limit")
        wait = t.openings.take(1, self.clock())
        if wait:
            raise RateLimited(f"tenant {tenant!r} opens streams faster than {c.tenant_streams_per_s:g}/s", wait)
        if conn is None:
            conn = self._connections[connection] = _Connection(
                Inflight(c.max_streams_per_connection * c.stream_inflight_frames, c.connection_inflight_bytes)
            )
        self.streams += 1
        t.streams += 1
        conn.streams += 1
        return StreamQuota(self, tenant, connection, Inflight(c.stream_inflight_frames, c.stream_inflight_bytes))

    def admit(self, stream: StreamQuota, frames: int, nbytes: int) -> None:
        c = self.config
        if self.bytes + nbytes > c.memory_budget_bytes and self.bytes > 0 and not stream.held[1]:
            raise ResourceExhausted(
                f"the server's memory budget is exhausted ({self.bytes / MiB:.0f} of "
                f"{c.memory_budget_bytes / MiB:.0f} MiB in flight); nothing of this message was applied, "
                "resend it after a back-off"
            )
        wait = self._tenant(stream.tenant).frames.take(frames, self.clock())
        if wait:
            raise RateLimited(f"tenant {stream.tenant!r} sends more than {c.tenant_frames_per_s:g} frames/s", wait)
        self.bytes += nbytes
        stream.inflight.add(frames, nbytes)
        self.connection_inflight(stream.connection).add(frames, nbytes)
        stream.held[0] += frames
        stream.held[1] += nbytes

    def release(self, stream: StreamQuota, frames: int, nbytes: int) -> None:
        self.bytes -= nbytes
        stream.inflight.remove(frames, nbytes)
        self.connection_inflight(stream.connection).remove(frames, nbytes)
        stream.held[0] -= frames
        stream.held[1] -= nbytes
        self._notify()

    def close_stream(self, stream: StreamQuota) -> None:
        frames, nbytes = stream.held
        if frames or nbytes:
            self.release(stream, frames, nbytes)
        self.streams -= 1
        t = self._tenants[stream.tenant]
        t.streams -= 1
        conn = self._connections[stream.connection]
        conn.streams -= 1
        if conn.streams == 0:
            del self._connections[stream.connection]
        self._notify()  # the share of every other stream grew
        if t.streams == 0 and t.openings.tokens >= t.openings.burst and t.frames.tokens >= t.frames.burst:
            del self._tenants[stream.tenant]  # nothing to remember: a fresh bucket would be full too
