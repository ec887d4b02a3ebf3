"""Resource limits of the aggregation server: memory in flight, streams, per-tenant rates, connection lifetime.

The arithmetic behind the memory defaults (the pod's limit is 1 GiB, ``manifests/base/aggregator``):

- the process without load: 65 MiB measured (interpreter, grpcio, numpy, protobuf), +25 MiB for a full
  10,000-subject cache (~2.5 KB each);
- what gRPC itself buffers before the service reads a message: per stream at most one message being received
  (``max_message_bytes``, 16 MiB, but HTTP/2 flow control holds a sender to its window once the service stops
  reading) — measured by ``bench/bench_adversarial.py``;
- frames read and not yet answered: the accounted bytes below. Each frame counts its payload (embedding or image
  bytes, id) twice (the protobuf message holds it, and the parsed, normalised embedding or the decoded image is a
  second copy) plus ``FRAME_OVERHEAD_BYTES`` for the Python objects built from it (RawFrame, FrameInput, outcome,
  answer).

``memory_budget_bytes`` (256 MiB) bounds the third term across every stream (plus one message per stream); with the
first two that keeps the process well under 1 GiB: 90 + 256 MiB, ~650 MiB of headroom for the transport, answers
waiting to be sent and the allocator's fragmentation. Measured (``bench/bench_adversarial.py``): 20 streams that send
1,024-frame messages and never read grow the RSS by ~270 MiB (the code before these limits: past 2.9 GiB in 8 s).
Beyond the budget, new work is shed with RESOURCE_EXHAUSTED rather than read.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
FRAME_OVERHEAD_BYTES = 1024  # Python objects per frame beyond its payload (measured: ~0.9 KB for a feature frame)


@dataclass(frozen=True)
class LimitsConfig:
    """Limits that keep a few misbehaving clients from taking the server down.

    Attributes:
        stream_inflight_frames, stream_inflight_bytes: frames (and their accounted bytes) of one stream read ahead
            of their answers; at the limit the stream stops reading (back-pressure through HTTP/2 flow control).
            With many streams open the byte limit shrinks to an equal share of ``memory_budget_bytes``. A stream
            below its limit reads one more message, so it holds at most its limit plus one message.
        connection_inflight_bytes: the same across all streams of one connection (one client).
        memory_budget_bytes: accounted bytes in flight across all streams. Streams share it (back-pressure); a
            message of a stream with nothing in flight that would exceed it — new work — ends its stream with
            RESOURCE_EXHAUSTED (nothing of it applied: the client resends after a back-off). Bound: the budget plus
            at most one message per open stream.
        max_streams: streams open at once on the server, enforced by the service (a stream above it is refused at
            once, so it does not hold a gRPC call slot); gRPC's own call limit is ``max_streams`` plus
            ``ServiceConfig.max_concurrent_rpcs``, so idle streams cannot starve health checks or unary calls.
        max_streams_per_tenant, max_streams_per_connection: the same per tenant (``caller_of(context).tenant``) and
            per connection.
        stream_idle_timeout_s: a stream that sends no message for this long is closed (DEADLINE_EXCEEDED) so idle
            streams do not hold their slots forever; 0 disables.
        tenant_frames_per_s, tenant_frames_burst: token bucket of frames per tenant; a message beyond it ends its
            stream with RESOURCE_EXHAUSTED and a retry hint (message text and ``grpc-retry-pushback-ms``).
        tenant_streams_per_s, tenant_streams_burst: token bucket of stream openings per tenant (a reconnect storm
            of ``tenant_streams_burst`` streams at once passes).
        keepalive_time_s, keepalive_timeout_s: the server pings an idle connection every ``keepalive_time_s`` and
            closes it when the ping is not answered within ``keepalive_timeout_s`` (dead peers free their streams).
        max_connection_idle_s: a connection without any call for this long is closed (GOAWAY).
        max_connection_age_s, max_connection_age_grace_s: connections are closed (GOAWAY) after this age, and their
            calls get the grace period to finish; spreads clients across replicas after a scale-up.
    """

    stream_inflight_frames: int = 4096
    stream_inflight_bytes: int = 8 * MiB
    connection_inflight_bytes: int = 32 * MiB
    memory_budget_bytes: int = 256 * MiB
    max_streams: int = 2048
    max_streams_per_tenant: int = 1024
    max_streams_per_connection: int = 256
    stream_idle_timeout_s: float = 300.0
    tenant_frames_per_s: float = 100_000.0
    tenant_frames_burst: int = 200_000
    tenant_streams_per_s: float = 50.0
    tenant_streams_burst: int = 500
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    max_connection_idle_s: float = 900.0
    max_connection_age_s: float = 3600.0
    max_connection_age_grace_s: float = 30.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0 or (value == 0 and name != "stream_idle_timeout_s"):
                raise ValueError(f"limits: {name} must be > 0, got {value}")
        if self.max_streams_per_tenant > self.max_streams or self.max_streams_per_connection > self.max_streams:
            raise ValueError("limits: per-tenant and per-connection stream caps must not exceed max_streams")

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC server channel arguments for keepalive and connection lifetime."""
        ms = lambda seconds: int(seconds * 1000)  # noqa: E731
        return [
            # gRPC's receive window otherwise grows with its bandwidth-delay estimate, and a stream that the service
            # has stopped reading keeps filling it: ~60 MB per non-reading stream measured on loopback
            ("grpc.http2.bdp_probe", 0),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout_s)),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle_s)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace_s)),
        ]
