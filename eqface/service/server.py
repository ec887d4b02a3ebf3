"""The aggregation server's lifecycle: gRPC server (TLS and authentication per ``config.security``), health checking,
optional reflection, an optional plaintext health-only port, metrics endpoint, graceful stop."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from eqface.service.config import ServiceConfig
from eqface.service.decoding import add_servicer
from eqface.service.security.authz import Authenticator, AuthInterceptor
from eqface.service.security.config import SecurityConfig
from eqface.service.security.tls import server_credentials
from eqface.service.service import AggregatorService
from eqface.service.servicer import AggregatorServicer
from eqface.service.store import SubjectStore, open_store
from eqface.service.v1 import aggregator_pb2 as pb

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AggregatorService"].full_name  # "eqface.service.v1.AggregatorService"
# Health-checked names: "" and SERVICE_NAME are SERVING while the service serves what needs only the store (feature
# frames, template reads, gallery): Kubernetes readiness must not drop a replica from its Service because Triton is
# down. STORE_HEALTH and TRITON_HEALTH say which dependency is up; image-mode clients check TRITON_HEALTH.
STORE_HEALTH = f"{SERVICE_NAME}/store"
TRITON_HEALTH = f"{SERVICE_NAME}/triton"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AggregatorServer:
    """Owns one gRPC server and the service behind it. ``start()``, then ``stop()`` (graceful) or ``wait()``."""

    def __init__(self, config: ServiceConfig, store: SubjectStore | None = None) -> None:
        self.config = config
        self._store = store
        self.port = 0
        self.metrics_port: int | None = None
        self.service: AggregatorService | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self._health = health_aio.HealthServicer()
        self._health_update: asyncio.Task[None] | None = None

    async def start(self) -> None:
        config = self.config
        security = config.security
        security.check_serving(config.host)
        interceptor = AuthInterceptor(Authenticator(security))  # reads the key set: fails before opening the store
        credentials = server_credentials(security) if security.tls else None
        store = self._store or await asyncio.to_thread(open_store, config.store_url)
        service = self.service = AggregatorService(config, store)
        server = self._server = grpc.aio.server(
            # streams are capped by the service (limits.max_streams, refused at once): unary calls and health
            # checks always have max_concurrent_rpcs slots of their own
            maximum_concurrent_rpcs=config.limits.max_streams + config.max_concurrent_rpcs,
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port already in use must fail, not be shared silently
                *config.limits.server_options(),
            ],
        )
        add_servicer(AggregatorServicer(service), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if security.reflection:
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        address = f"{config.host}:{config.port}"
        if credentials is not None:
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if security.health_port:
            health = self._health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self._health, health)
            self.health_port = health.add_insecure_port(f"{config.host}:{security.health_port}")
        for name in self._health_names():
            await self._health.set(name, _NOT_SERVING)
        await service.start()
        service.on_readiness_change = lambda readiness: self._schedule_health_update()
        await server.start()
        if self._health_server is not None:
            await self._health_server.start()
        await self._update_health()
        if config.metrics_port:
            self.metrics_port = service.metrics.serve(config.metrics_port, http_host(config.host))
        log.info(
            "serving %s on %s:%d, %s (store %s, triton %s, metrics port %s, health port %s)",
            SERVICE_NAME,
            config.host,
            self.port,
            _describe(security),
            _redact(config.store_url),
            config.triton.url if config.triton else "off",
            self.metrics_port or "off",
            self.health_port or "off",
        )

    def _health_names(self) -> list[str]:
        names = ["", SERVICE_NAME, STORE_HEALTH]
        return names + [TRITON_HEALTH] if self.config.triton is not None else names

    def _schedule_health_update(self) -> None:
        self._health_update = asyncio.get_running_loop().create_task(self._update_health())

    async def _update_health(self) -> None:
        service = self.service
        if service is None:
            return
        ready = service.ready
        await self._health.set("", _SERVING if ready else _NOT_SERVING)
        await self._health.set(SERVICE_NAME, _SERVING if ready else _NOT_SERVING)
        await self._health.set(STORE_HEALTH, _SERVING if service.readiness.get("store") else _NOT_SERVING)
        if "triton" in service.readiness:
            await self._health.set(TRITON_HEALTH, _SERVING if service.readiness["triton"] else _NOT_SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful: NOT_SERVING, streams stop reading and answer every frame they read, then everything closes."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self.service is not None:
            self.service.draining.set()
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self.service is not None:
            await self.service.stop()
            self.service.metrics.stop()
            self.service = None
        log.info("stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def http_host(host: str) -> str:
    """The gRPC listen host as an HTTP server's bind address: ``[::]`` → ``::``, ``[::1]`` → ``::1``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _redact(url: str) -> str:
    """The store URL without a password."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _describe(security: SecurityConfig) -> str:
    if security.insecure:
        return "PLAINTEXT, NO AUTHENTICATION (--insecure)"
    ways = [w for w, on in (("client certificates", security.mutual_tls), ("bearer tokens", security.tokens)) if on]
    return "TLS, callers authenticated by " + " or ".join(ways)
