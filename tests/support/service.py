"""Real components for the aggregation-service tests: a redis-server per test session, the gRPC server in a thread
or as a child process (free ports, readiness wait, teardown even on failure), and synthetic face-stream embeddings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eqface import processes
from eqface.processes import ProcessStartError, free_port, wait_for_grpc_health
from eqface.service.client import AggregatorClient
from eqface.service.config import ServiceConfig
from eqface.service.security.config import SecurityConfig
from eqface.service.server import AggregatorServer
from eqface.service.v1 import aggregator_pb2_grpc as pb_grpc
from eqface.serving.helper_process import TritonHelper
from tests.conftest import REPO_ROOT, require_executable
from tests.support.auth import TestAuthority

DIM = 512


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def face_stream(
    seed: int, n: int, dim: int = DIM, noise: float = 0.04, low: float = 0.0, high: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One person's frames: unit embeddings scattered around an identity direction, qualities uniform in [low, high]."""
    rng = np.random.default_rng(seed)
    identity = unit(rng.normal(size=dim))
    features = unit(identity + noise * rng.normal(size=(n, dim)))
    return features, rng.uniform(low, high, size=n).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------ redis
class RedisServer:
    """A redis-server child process on a free port, append-only file fsynced on every write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._child: processes.Child | None = None

    def start(self, port: int = 0) -> RedisServer:
        """Starts on ``port`` (0: a free one; a restart on the old port finds its data in the append-only file)."""
        binary = require_executable("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3 if port == 0 else 1):
            self.port = port or free_port()
            args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
            args += ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"]
            self._child = processes.start("redis-server", args, self.directory / "redis.log", die_with_parent=False)
            try:
                processes.wait_until(self._ping, self._child, 10.0, f"redis-server answering PING on {self.port}")
                return self
            except ProcessStartError as exc:
                error = exc
                self.stop()
        raise error

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def url(self, prefix: str = "") -> str:
        prefix = prefix or f"t{uuid.uuid4().hex[:10]}:"
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop(grace_s=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against both backends: an SQLite file, and a fresh key prefix in the session's Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return request.getfixturevalue("redis_server").url()


# ----------------------------------------------------------------------------------------------------- gRPC server
def wait_serving(target: str, timeout_s: float, service: str = "") -> None:
    """Until grpc.health.v1 says ``service`` is SERVING (a server in a thread: no child process to watch)."""
    wait_for_grpc_health(target, None, timeout_s, service)


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


def server_config(config: ServiceConfig, authority: TestAuthority | None = None, **security: object) -> ServiceConfig:
    """The one way tests configure a server's security: on loopback, plaintext without authentication (``--insecure``)
    unless the config already has security settings, or TLS with ``authority``'s credentials (client certificates and
    tokens; ``security`` overrides, e.g. ``mutual_tls=False``) and a plaintext health port, where tests wait for it."""
    config = replace(config, host="127.0.0.1", port=0)
    if authority is not None:
        return replace(config, security=authority.security(**{"health_port": free_port(), **security}))
    if config.security == SecurityConfig():
        return replace(config, security=SecurityConfig(insecure=True))
    return config


class ServerThread:
    """An AggregatorServer on its own event loop in a background thread (the tests talk to it with sync stubs)."""

    def __init__(self, config: ServiceConfig, authority: TestAuthority | None = None, **security: object) -> None:
        self.config = server_config(config, authority, **security)
        self.authority = authority
        self.server: AggregatorServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aggregator-server", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"  # type: ignore[union-attr]

    @property
    def health_target(self) -> str:
        """Where plaintext health checks reach the server (its health port when it serves TLS)."""
        port = self.server.health_port or self.server.port  # type: ignore[union-attr]
        return f"127.0.0.1:{port}"

    def run(self, coroutine: object, timeout_s: float = 30.0) -> object:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)  # type: ignore[arg-type]

    def start(self) -> ServerThread:
        self._thread.start()
        self.server = AggregatorServer(self.config)
        self.run(self.server.start())
        return self

    def stop(self) -> None:
        try:
            if self.server is not None:
                self.run(self.server.stop(grace_s=2.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


@contextmanager
def serve_in_thread(
    config: ServiceConfig, ready_timeout_s: float = 10.0, authority: TestAuthority | None = None, **security: object
) -> Iterator[ServerThread]:
    server = ServerThread(config, authority, **security)
    try:
        server.start()
        if server.config.triton is None:
            wait_serving(server.health_target, ready_timeout_s)
        yield server
    finally:
        server.stop()


@contextmanager
def aggregator_stub(
    target: str, credentials: grpc.ChannelCredentials | None = None
) -> Iterator[pb_grpc.AggregatorServiceStub]:
    """The package's client's stub (its channel options), no retries: the tests see every error."""
    with AggregatorClient(target, credentials=credentials) as client:
        yield client.stub


class ServerProcess:
    """``python -m eqface.service`` as a child process, for kill -9 and SIGTERM tests: ``--insecure`` on loopback, or
    with ``authority`` TLS + client certificates + tokens and a plaintext health port (where readiness is waited for).
    """

    def __init__(self, args: list[str], log_path: Path, authority: TestAuthority | None = None) -> None:
        self.port = free_port()
        self.health_port = free_port() if authority is not None else None
        security = (
            ["--insecure"] if authority is None else [*authority.server_args(), "--health-port", str(self.health_port)]
        )
        self.args = [sys.executable, "-m", "eqface.service", "--host", "127.0.0.1", "--port", str(self.port)]
        self.args += [*security, *args]
        self.log_path = log_path
        self.child: processes.Child | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen | None:
        return self.child.process if self.child is not None else None

    def start(self, ready_timeout_s: float = 30.0) -> ServerProcess:
        if self.child is not None and self.child.running():
            raise RuntimeError(f"server already running (pid {self.child.pid})")
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        # No preexec_fn (die_with_parent): it forces fork() instead of vfork, and gRPC's fork handlers can then
        # deadlock a test process that holds channels (seen here: the parent hung in futex_wait before the fork).
        self.child = processes.start(
            "aggregator", self.args, self.log_path, env=env, cwd=REPO_ROOT, die_with_parent=False
        )
        try:
            wait_for_grpc_health(f"127.0.0.1:{self.health_port or self.port}", self.child, ready_timeout_s)
        except BaseException:
            self.kill()
            raise
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.child.log_tail(chars) if self.child is not None else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the server."""
        if self.child is not None:
            self.child.stop(signal.SIGKILL, grace_s=10)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        if self.child is None:
            raise RuntimeError("not started")
        if self.child.running():
            self.child.process.send_signal(signal.SIGTERM)
        return self.child.process.wait(timeout_s)

    def __enter__(self) -> ServerProcess:
        return self if self.child is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


class StreamSession:
    """A StreamFrames call driven step by step from a test: ``send`` a request, ``recv`` its response."""

    _END = object()

    def __init__(self, stub: pb_grpc.AggregatorServiceStub, timeout_s: float | None = 30.0) -> None:
        import queue

        self._requests: queue.Queue[object] = queue.Queue()
        self.responses = stub.StreamFrames(iter(self._requests.get, self._END), timeout=timeout_s)

    def send(self, request: object) -> None:
        self._requests.put(request)

    def recv(self) -> object:
        return next(self.responses)

    def exchange(self, request: object) -> object:
        self.send(request)
        return self.recv()

    def close(self) -> list[object]:
        """Half-closes the stream and returns the responses still to come."""
        self._requests.put(self._END)
        return list(self.responses)


# ---------------------------------------------------------------------------------------------------------- triton
class TritonProcess(TritonHelper):
    """The real Triton server run from a helper process (this test process holds gRPC channels: see
    ``eqface.serving.helper_process``), on fixed ports: ``stop()`` then ``start()`` brings it back on the same ones."""

    def __init__(self, repository: Path, log_path: Path) -> None:
        super().__init__(repository, log_path)

    def freeze(self) -> None:
        """SIGSTOP: Triton hangs (accepts connections, answers nothing), like an overloaded or stuck server."""
        os.kill(self.pid, signal.SIGSTOP)  # type: ignore[arg-type]

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)  # type: ignore[arg-type]

    def crash_stub(self, model: str) -> int:
        """SIGSEGV to the python-backend stub that runs ``model`` (as the stub itself crashed, seen on this machine);
        returns its pid. Triton keeps reporting the model ready and answers every request with "Stub process … is
        not healthy" until it restarts."""
        for entry in Path("/proc").iterdir():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.pid and b"triton_python_backend_stub" in args[0] and f"/{model}/".encode() in args[1]:
                os.kill(int(entry.name), signal.SIGSEGV)
                return int(entry.name)
        raise AssertionError(f"no python-backend stub of {model!r} under Triton (pid {self.pid})")

    def stop(self, timeout_s: float = 60.0) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGCONT)  # a frozen server could not stop
            except ProcessLookupError:
                pass
        super().stop(timeout_s)
