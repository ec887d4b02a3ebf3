"""The local stack: a real Triton serving the model, the aggregation service in image mode, and (when installed)
Prometheus scraping both with the cluster's rules, on free ports of one machine.

Everything is started before this process opens any gRPC channel: the Triton launcher forks, and a fork while gRPC
channels exist can hang in gRPC's fork handlers (eqface/service README's note).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eqface import processes
from eqface.processes import Child, free_port, process_start_ticks, wait_for_grpc_health, wait_for_http
from eqface.stack import monitoring, prometheus
from eqface.stack.model import ServedModel

STATE_FILE = "state.json"


@dataclass(frozen=True)
class StackConfig:
    """How to run the stack; ports left at 0 are picked free."""

    state_dir: Path
    model: ServedModel
    host: str = "127.0.0.1"
    aggregator_port: int = 0
    aggregator_metrics_port: int = 0
    prometheus_port: int = 0
    prometheus: bool = True  # False, or not installed: the stack runs without it
    scrape_interval_s: float = 5.0
    fresh_store: bool = False  # start from an empty SQLite store (the demo); `up` keeps subjects and gallery
    active_window_s: float = 60.0
    startup_timeout_s: float = 120.0
    # the aggregator's deadline per Triton call: the local stack shares its CPU with everything else on the machine
    # (the service's own default, 2 s, is for a dedicated server)
    triton_timeout_s: float = 30.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["state_dir"] = str(self.state_dir)
        d["model"]["repository"] = str(self.model.repository)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StackConfig:
        model = dict(d["model"], repository=Path(d["model"]["repository"]), image_size=tuple(d["model"]["image_size"]))
        return cls(**dict(d, state_dir=Path(d["state_dir"]), model=ServedModel(**model)))


@dataclass
class Endpoints:
    """Where each part of a running stack answers, and its process (pid + start time name it uniquely)."""

    triton_grpc: str = ""
    triton_http: str = ""
    triton_metrics: str = ""
    aggregator_grpc: str = ""
    aggregator_metrics: str = ""
    aggregator_health: str = ""  # plaintext grpc.health.v1 only; the gRPC port serves mutual TLS
    aggregator_auth: dict[str, str | None] = field(default_factory=dict)  # the stack's client certificate (ClientAuth)
    prometheus: str = ""  # http://host:port, empty without Prometheus
    processes: dict[str, dict[str, int | None]] = field(default_factory=dict)  # name -> {pid, start_ticks}

    def client_auth(self):
        """The aggregator's client credentials (``eqface.service.client.ClientAuth``), None before it started."""
        from eqface.service.client import ClientAuth

        return ClientAuth.from_json(self.aggregator_auth)


class LocalStack:
    """Starts and stops the three parts; a context manager. ``start()`` returns once everything is ready."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.endpoints = Endpoints()
        self._triton = None
        self._children: list[Child] = []

    @property
    def logs_dir(self) -> Path:
        return self.config.state_dir / "logs"

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------------- start
    def start(self) -> LocalStack:
        try:
            self._start_triton()
            aggregator = self._spawn_aggregator()
            prom = self._spawn_prometheus()
            # Only now (every fork done) may this process open gRPC channels.
            self._wait_aggregator(aggregator)
            if prom is not None:
                wait_for_http(f"{self.endpoints.prometheus}/-/ready", prom, self.config.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_triton(self) -> None:
        from eqface.serving.launcher import TritonServer

        c = self.config
        self._triton = TritonServer(
            c.model.repository,
            host=c.host,
            model_control_mode="explicit",
            load_models=["*"],
            startup_timeout_s=c.startup_timeout_s,
            control_key=self._control_key(),
        )
        self._triton.start()
        e = self.endpoints
        e.triton_grpc, e.triton_http = self._triton.grpc_url, self._triton.http_url
        e.triton_metrics = f"{c.host}:{self._triton.metrics_port}"
        e.processes["triton"] = _identity(self._triton.pid)

    def _control_key(self) -> str:
        """Triton's model-control key: made once, kept in the state folder (owner-only) for a deploy to this stack
        (``EQFACE_TRITON_CONTROL_KEY_FILE=<state_dir>/triton-control.key``)."""
        from eqface.serving import control

        path = self.config.state_dir / "triton-control.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(control.new_key() + "\n")
        return control.read_key(path)  # type: ignore[return-value]

    def _spawn_aggregator(self) -> Child:
        c, e = self.config, self.endpoints
        store = c.state_dir / "aggregator.db"
        if c.fresh_store:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{store}{suffix}").unlink(missing_ok=True)
        port = c.aggregator_port or free_port(c.host)
        metrics_port = c.aggregator_metrics_port or free_port(c.host)
        health_port = free_port(c.host)
        tls = self._make_certificates()
        argv = [
            sys.executable,
            "-m",
            "eqface.service",
            f"--host={c.host}",
            f"--port={port}",
            f"--metrics-port={metrics_port}",
            f"--store=sqlite:///{store.resolve()}",
            f"--triton-url={e.triton_grpc}",
            f"--triton-timeout={c.triton_timeout_s:g}",
            f"--embedding-dim={c.model.embedding_size}",
            f"--active-window={c.active_window_s:g}",
            f"--health-port={health_port}",
            *tls,
        ]
        child = processes.start(
            "aggregator", argv, self.logs_dir / "aggregator.log", env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
        self._children.append(child)
        e.aggregator_grpc, e.aggregator_metrics = f"{c.host}:{port}", f"{c.host}:{metrics_port}"
        e.aggregator_health = f"{c.host}:{health_port}"
        e.processes["aggregator"] = _identity(child.pid)
        return child

    def _spawn_prometheus(self) -> Child | None:
        c, e = self.config, self.endpoints
        binary = prometheus.find_prometheus()
        if not c.prometheus or binary is None:
            return None
        prom_dir = c.state_dir / "prometheus"
        rules = monitoring.write_rules_file(prom_dir / "eqface-rules.yaml")
        config = prometheus.render_config(e.triton_metrics, e.aggregator_metrics, rules, c.scrape_interval_s)
        config_path = prometheus.write_config(prom_dir / "prometheus.yml", config)
        data_dir = prom_dir / "data"
        if c.fresh_store:
            shutil.rmtree(data_dir, ignore_errors=True)
        port = c.prometheus_port or free_port(c.host)
        child = processes.start(
            "prometheus",
            prometheus.command(binary, config_path, data_dir, c.host, port),
            self.logs_dir / "prometheus.log",
        )
        self._children.append(child)
        e.prometheus = f"http://{c.host}:{port}"
        e.processes["prometheus"] = _identity(child.pid)
        return child

    def _make_certificates(self) -> list[str]:
        """A fresh local CA in the run folder (``pki/``, 0700, keys 0600, valid 7 days), a server certificate for the
        stack's host and a client certificate (tenant "default", every role) for the demo and ``eqface stream``;
        returns the aggregator's TLS flags. The aggregator serves mutual TLS, as in production."""
        from eqface.service.caller import DEFAULT_TENANT, Role
        from eqface.service.security.pki import LOOPBACK_NAMES, LocalCA

        c = self.config
        ca = LocalCA(c.state_dir / "pki")
        server = ca.server(dict.fromkeys([c.host, *LOOPBACK_NAMES]))
        client = ca.client("eqface-stack", DEFAULT_TENANT, Role)
        self.endpoints.aggregator_auth = {
            "ca_file": str(ca.cert_file),
            "cert_file": str(client.cert),
            "key_file": str(client.key),
            "token_file": None,
        }
        return [f"--tls-cert={server.cert}", f"--tls-key={server.key}", f"--tls-client-ca={ca.cert_file}"]

    def _wait_aggregator(self, child: Child) -> None:
        """Until grpc.health.v1 (on its plaintext health port) says the service and its Triton component are SERVING
        (store and Triton reachable)."""
        from eqface.service.server import TRITON_HEALTH

        for service in ("", TRITON_HEALTH):
            wait_for_grpc_health(self.endpoints.aggregator_health, child, self.config.startup_timeout_s, service)

    # ---------------------------------------------------------------------------------------------- running
    def failed_part(self) -> str | None:
        """The name of a part that exited on its own, or None while all run."""
        if self._triton is not None and not self._triton.is_running():
            return "triton"
        return next((c.name for c in self._children if not c.running()), None)

    def log_tail(self, name: str) -> str:
        if name == "triton" and self._triton is not None:
            return self._triton.logs()[-3000:]
        return next((c.log_tail() for c in self._children if c.name == name), "")

    # ---------------------------------------------------------------------------------------------- stop
    def stop(self) -> dict[str, int | None]:
        """Aggregator first (it drains its streams), then Prometheus, then Triton; every part is stopped even if an
        earlier one fails. Returns each part's exit status."""
        codes: dict[str, int | None] = {}
        for child in list(self._children):
            codes[child.name] = child.stop()
        self._children.clear()
        if self._triton is not None:
            codes["triton"] = self._triton.stop()
            self._triton = None
        return codes


def _identity(pid: int | None) -> dict[str, int | None]:
    return {"pid": pid, "start_ticks": process_start_ticks(pid) if pid else None}


# ---------------------------------------------------------------------------------------------- state file
def write_state(state_dir: Path, state: dict[str, Any]) -> Path:
    """Writes ``state.json`` atomically (readers never see half a file)."""
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)
    return path


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
