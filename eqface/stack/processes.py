"""Child processes of the local stack: started in their own session (Ctrl-C in the terminal reaches only the stack,
which stops them in order), tied to the starting thread's life (``PR_SET_PDEATHSIG``), stopped with a deadline."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn after which the kernel sends SIGTERM to the child when the thread that started it dies.

    ``prctl`` is resolved here, in the parent, so nothing but the call runs between fork and exec.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    sigterm = int(signal.SIGTERM)
    return lambda: prctl(_PR_SET_PDEATHSIG, sigterm)


@dataclass
class Child:
    """One started program: its process, its log file, the name the stack prints."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Sends ``sig``, waits up to ``timeout_s``, then SIGKILL; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(
    name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Child:
    """Starts ``argv`` with stdout and stderr into ``log_path`` (appended)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    return Child(name, process, log_path)


def wait_for_http(
    url: str, child: Child | None, timeout_s: float, ok: Callable[[bytes], bool] = lambda body: True
) -> None:
    """Polls ``url`` until it answers 200 and ``ok(body)``; RuntimeError with the child's log if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.running():
            raise RuntimeError(
                f"{child.name} exited with status {child.process.returncode} while starting; "
                f"its log ({child.log_path}) ends:\n{child.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200 and ok(response.read()):
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    tail = f"; its log ({child.log_path}) ends:\n{child.log_tail()}" if child else ""
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f}s{tail}")


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
