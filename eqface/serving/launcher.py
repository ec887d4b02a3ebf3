"""Runs the real Triton Inference Server shipped in the nvidia-pytriton wheel as a child process.

    with TritonServer("model_repo") as server:            # free ports, waits until ready
        client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

The wheel's server needs three things prepared (found on this machine, see DESIGN.md): the python-backend stub of
the running interpreter's version copied into the backend folder, ``LD_LIBRARY_PATH`` holding the wheel's libraries
and this interpreter's LIBDIR (or the stub picks up the system libpython), and this interpreter's ``bin`` first on
``PATH`` (or the stub imports the system's packages). Each server gets a private copy of the backend folder, so
nothing in the installed wheel is modified and several servers can run side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import urllib.request
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from eqface import processes
from eqface.processes import free_port
from eqface.serving import control

ModelControlMode = Literal["none", "poll", "explicit"]
MODEL_CONTROL_MODES: tuple[ModelControlMode, ...] = ("none", "poll", "explicit")
__all__ = ["TritonServer", "TritonStartError", "find_distribution", "free_port"]


class TritonStartError(processes.ProcessStartError):
    """The server exited or did not become ready; the message ends with the tail of its log."""


def find_distribution() -> tuple[Path, Path, Path]:
    """(tritonserver binary, backends folder, shared libraries folder) of the installed nvidia-pytriton wheel."""
    spec = find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton is not installed (pip install 'eqface[serve]')")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    binary, libs = root / "bin" / "tritonserver", root.parent.parent / "nvidia_pytriton.libs"
    for path in (binary, root / "backends" / "python", libs):
        if not path.exists():
            raise FileNotFoundError(f"incomplete nvidia-pytriton installation: {path} is missing")
    return binary, root / "backends", libs


def _stub_for_this_python(backends: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton ships no python-backend stub for Python {version} ({stub})")
    return stub


class TritonServer:
    """One ``tritonserver`` process serving a model repository; a context manager.

    Ports left at 0 are chosen free. ``start()`` returns once ``/v2/health/ready`` answers 200 (every model that
    had to load is ready) and raises :class:`TritonStartError` with the log tail if the server exits or times out.
    ``stop()`` sends SIGINT (Triton finishes in-flight requests) and kills the process if it does not exit in time.

    Args:
        model_repository: folder with ``<model>/config.pbtxt`` and version folders.
        grpc_port, http_port, metrics_port: 0 picks a free port.
        host: address the three endpoints bind to.
        model_control_mode: ``none`` loads every model at start; ``poll`` also reloads changed ones (every 2 s);
            ``explicit`` loads only ``load_models`` and then what clients ask for through the model-control API.
        load_models: models to load at start in explicit mode (``["*"]``: all).
        log_verbose: Triton's ``--log-verbose`` level.
        startup_timeout_s: how long to wait for readiness.
        extra_args: further ``tritonserver`` options, e.g. ``["--exit-timeout-secs=10"]``.
        control_key: model control (load/unload, repository index, shared memory, trace, logging) only for callers
            sending this key (``eqface.serving.control``); None leaves it open to anyone who reaches the ports.

    The server dies with the thread that started it (``PR_SET_PDEATHSIG``): start it from a thread that outlives it.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        host: str = "127.0.0.1",
        model_control_mode: ModelControlMode = "none",
        load_models: Sequence[str] = (),
        log_verbose: int = 0,
        startup_timeout_s: float = 120.0,
        extra_args: Sequence[str] = (),
        control_key: str | None = None,
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            valid = ", ".join(MODEL_CONTROL_MODES)
            raise ValueError(f"unknown model control mode {model_control_mode!r}; valid: {valid}")
        if load_models and model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit' (other modes load every model)")
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise FileNotFoundError(f"model repository not found: {self.model_repository}")
        self.host = host
        self._requested_ports = (grpc_port, http_port, metrics_port)
        self.grpc_port, self.http_port, self.metrics_port = self._requested_ports
        self.model_control_mode = model_control_mode
        self.load_models = tuple(load_models)
        self.log_verbose = log_verbose
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = tuple(extra_args)
        self.control_key = None if control_key is None else control.check_key(control_key)
        self._child: processes.Child | None = None
        self._workdir: Path | None = None

    # ----------------------------------------------------------------------------------------------- endpoints
    @property
    def grpc_url(self) -> str:
        """``host:port`` as ``tritonclient.grpc.InferenceServerClient(url=...)`` takes it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` as ``tritonclient.http.InferenceServerClient(url=...)`` takes it."""
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus text endpoint, e.g. ``http://127.0.0.1:8002/metrics``."""
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def is_running(self) -> bool:
        return self._child is not None and self._child.running()

    def models(self) -> list[dict[str, str]]:
        """The repository index: one ``{"name", "version", "state"}`` per model version the server knows."""
        url = f"http://{self.http_url}/v2/repository/index"
        headers = control.headers(self.control_key, "http") or {}
        request = urllib.request.Request(url, data=b"{}", method="POST", headers=headers)
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return json.loads(response.read())

    def logs(self) -> str:
        """Everything the server has logged so far (stdout and stderr)."""
        log = self._log_path
        return log.read_text(errors="replace") if log and log.exists() else ""

    @property
    def _log_path(self) -> Path | None:
        return self._workdir / "tritonserver.log" if self._workdir else None

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> TritonServer:
        """Starts the server and waits until it is ready; retries on fresh ports if an auto-chosen one was taken."""
        if self.is_running():
            raise RuntimeError(f"tritonserver is already running (pid {self.pid})")
        binary, backends, libs = find_distribution()
        self._workdir = Path(tempfile.mkdtemp(prefix="eqface-triton-"))
        try:
            backend_dir = self._prepare_backends(backends)
            attempts = 3 if 0 in self._requested_ports else 1
            for attempt in range(1, attempts + 1):
                self._pick_ports()
                self._spawn(binary, backend_dir, libs)
                try:
                    self._wait_ready()
                    return self
                except TritonStartError as exc:
                    self._terminate()
                    if attempt == attempts or "already in use" not in str(exc).lower():
                        raise
        except BaseException:
            self.stop()
            raise
        return self  # pragma: no cover - the loop returns or raises

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stops the server (SIGINT, then SIGKILL after ``timeout_s``), removes its work folder; returns the status."""
        code = self._terminate(timeout_s)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------------- internals
    def _prepare_backends(self, backends: Path) -> Path:
        target = self._workdir / "backends"
        shutil.copytree(backends, target, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(_stub_for_this_python(backends), target / "python" / "triton_python_backend_stub")
        return target

    def _pick_ports(self) -> None:
        chosen: set[int] = set()
        ports = []
        for port in self._requested_ports:
            while port == 0 or port in chosen:
                port = free_port(self.host)
            chosen.add(port)
            ports.append(port)
        self.grpc_port, self.http_port, self.metrics_port = ports

    def command(self, binary: Path, backend_dir: Path) -> list[str]:
        """The tritonserver command line (without the environment, see :meth:`environment`)."""
        args = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--model-control-mode={self.model_control_mode}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            # Two servers on one machine must not share the python backend's shared-memory regions.
            f"--backend-config=python,shm-region-prefix-name=eqface{os.getpid()}p{self.grpc_port}_",
        ]
        if self.model_control_mode == "poll":
            args.append("--repository-poll-secs=2")
        args += [f"--load-model={name}" for name in self.load_models]
        if self.control_key is not None:
            args += control.server_args(self.control_key)
        return args + list(self.extra_args)

    @staticmethod
    def environment(libs: Path) -> dict[str, str]:
        """The server's environment: wheel + interpreter libraries, and this interpreter's ``bin`` first on PATH."""
        env = os.environ.copy()
        lib_dirs = [str(libs), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*lib_dirs, env.get("LD_LIBRARY_PATH", "")] if p)
        # sys.executable, not its resolved target: a venv's bin is what makes the stub import the venv's packages.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _spawn(self, binary: Path, backend_dir: Path, libs: Path) -> None:
        # Its own session: Ctrl-C reaches us, and we stop the server in order; it dies with the starting thread.
        self._child = processes.start(
            "tritonserver",
            self.command(binary, backend_dir),
            self._log_path,
            env=self.environment(libs),
            cwd=self._workdir,
        )

    def _wait_ready(self) -> None:
        url = f"http://{self.host}:{self.http_port}/v2/health/ready"
        try:
            processes.wait_for_http(url, self._child, self.startup_timeout_s)
        except processes.ProcessStartError as exc:
            raise TritonStartError(str(exc)) from None

    def _terminate(self, timeout_s: float = 30.0) -> int | None:
        child, self._child = self._child, None
        # SIGINT: Triton finishes in-flight requests; the python-backend stubs in its group go with it.
        return child.stop(signal.SIGINT, grace_s=timeout_s) if child is not None else None
