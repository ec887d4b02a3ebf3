"""Child processes the package starts (Triton, the aggregator, Prometheus, a supervisor): start one with its log,
wait until it is healthy with a deadline, stop it and its whole process group, and name a free port.

One implementation for the serving launcher, the local stack, the tests and the benchmarks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_CHARS = 4000
_PR_SET_PDEATHSIG = 1


class ProcessStartError(RuntimeError):
    """A child exited or was not healthy in time while starting; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn after which the kernel sends the child SIGTERM when the thread that started it dies.

    ``prctl`` is looked up here, in the parent: between fork and exec only the call itself runs.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sigterm = int(signal.SIGTERM)
    return lambda: prctl(_PR_SET_PDEATHSIG, sigterm)


@dataclass
class Child:
    """One started program: its process, its log file (stdout and stderr), the name messages use."""

    name: str
    process: subprocess.Popen
    log_path: Path
    own_group: bool = True  # started in its own session: stop() signals its whole process group

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def exited_error(self, while_: str = "starting") -> ProcessStartError:
        return ProcessStartError(
            f"{self.name} exited with status {self.process.returncode} while {while_}; "
            f"its log ({self.log_path}) ends:\n{self.log_tail()}"
        )

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.pid, sig)
            elif self.process.poll() is None:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def _group_alive(self) -> bool:
        if not self.own_group:
            return False
        try:
            os.killpg(self.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 30.0) -> int | None:
        """Sends ``sig`` (to the whole process group), waits up to ``grace_s`` for the process and what it started,
        then SIGKILLs whatever is left; returns the exit status."""
        if self.process.poll() is None or self._group_alive():
            self._signal(sig)
            deadline = time.monotonic() + grace_s
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.process.poll() is None or self._group_alive():
                self._signal(signal.SIGKILL)
        self.process.wait()
        return self.process.returncode


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = True,
    stdin: int | None = subprocess.DEVNULL,
) -> Child:
    """Starts ``argv`` in its own session with stdout and stderr appended to ``log_path``.

    Its own session: Ctrl-C in the terminal reaches only this process, which stops the child in order.
    ``die_with_parent`` sets ``PR_SET_PDEATHSIG`` so a crashed parent leaves no child behind; it forces fork() instead
    of vfork(), and fork() in a process that holds gRPC channels can hang in gRPC's fork handlers: pass False there.
    ``stdin=subprocess.PIPE`` gives the child a pipe it sees close when this process closes it or dies.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent() if die_with_parent else None,
        )
    return Child(name, process, log_path)


def wait_until(
    healthy: Callable[[], bool], child: Child | None, timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Polls ``healthy()`` until it is True; :class:`ProcessStartError` (with the child's log tail) when the child
    exits first or ``timeout_s`` passes. ``what`` names the awaited state in the timeout message."""
    deadline = time.monotonic() + timeout_s
    while True:
        if child is not None and not child.running():
            raise child.exited_error()
        if healthy():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    tail = f"; its log ({child.log_path}) ends:\n{child.log_tail()}" if child is not None else ""
    raise ProcessStartError(f"{what} not within {timeout_s:.0f}s{tail}")


def http_ok(url: str, ok: Callable[[bytes], bool] = lambda body: True, timeout_s: float = 2.0) -> bool:
    """True when ``url`` answers 200 and ``ok(body)``; False on any connection error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200 and ok(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_for_http(
    url: str, child: Child | None, timeout_s: float, ok: Callable[[bytes], bool] = lambda body: True
) -> None:
    """Until ``url`` answers 200 and ``ok(body)``."""
    wait_until(lambda: http_ok(url, ok), child, timeout_s, f"{url} answering 200")


def wait_for_grpc_health(target: str, child: Child | None, timeout_s: float, service: str = "") -> None:
    """Until ``grpc.health.v1`` at ``target`` says ``service`` is SERVING (one channel for all the checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving = health_pb2.HealthCheckResponse.SERVING
    last: list[object] = [None]

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def check() -> bool:
            try:
                last[0] = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0).status
            except grpc.RpcError as exc:
                last[0] = exc.code()
            return last[0] == serving

        try:
            wait_until(check, child, timeout_s, f"{target} SERVING", interval_s=0.05)
        except ProcessStartError as exc:
            raise ProcessStartError(f"{exc} (last health answer: {last[0]})") from None


# ------------------------------------------------------------------------------------- processes recorded by pid
def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid it names one process, even after pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def same_process(pid: int, start_ticks: int | None) -> bool:
    """True while the process ``pid`` that started at ``start_ticks`` still runs (not a recycled pid)."""
    return pid_alive(pid) and start_ticks is not None and process_start_ticks(pid) == start_ticks


def kill_recorded(pid: int, start_ticks: int | None, timeout_s: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL, the recorded process if it still runs; True when it is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not same_process(pid, start_ticks):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and same_process(pid, start_ticks):
            time.sleep(0.1)
    return not same_process(pid, start_ticks)
