"""``eqface stack up / down / status``: the stack run by a detached supervisor process (eqface.stack.supervisor) that
outlives the command, found again through ``state.json`` (pid + start time name each recorded process)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqface import processes
from eqface.processes import kill_recorded, same_process
from eqface.stack.stack import STATE_FILE, Endpoints, StackConfig, read_state
from eqface.stack.supervisor import CONFIG_FILE

SUPERVISOR_LOG = Path("logs") / "supervisor.log"


class StackNotRunning(RuntimeError):
    """No supervisor runs from the given state folder."""


def supervisor_alive(state: dict[str, Any] | None) -> bool:
    s = (state or {}).get("supervisor", {})
    return bool(s) and same_process(s["pid"], s["start_ticks"])


def running_state(state_dir: Path) -> dict[str, Any]:
    """The state of a stack that is ready (``up``) or running a demo; StackNotRunning otherwise."""
    state = read_state(state_dir)
    if state is None or state.get("status") not in ("ready", "demo"):
        raise StackNotRunning(f"no running stack in {state_dir} (eqface stack up --state-dir {state_dir})")
    return state


def start(config: StackConfig, extra_timeout_s: float = 30.0) -> dict[str, Any]:
    """Starts the supervisor detached (its own session, no parent-death signal: it outlives this process) and waits
    until it reports the stack ready; returns the state. A failed or interrupted start leaves nothing running."""
    state_dir = config.state_dir
    state = read_state(state_dir)
    if supervisor_alive(state):
        raise RuntimeError(
            f"a stack is already running from {state_dir} (pid {state['supervisor']['pid']}); "
            f"`eqface stack down --state-dir {state_dir}` first"
        )
    (state_dir / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2))
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    supervisor = processes.start(
        "supervisor",
        [sys.executable, "-m", "eqface.stack.supervisor", str(state_dir)],
        state_dir / SUPERVISOR_LOG,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        die_with_parent=False,
    )
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.update(read_state(state_dir) or {})
        if found.get("status") == "failed":  # it stops what it started, then exits: its log is then complete
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.process.wait(60)
        return found.get("status") == "ready"

    try:
        processes.wait_until(ready, supervisor, config.startup_timeout_s + extra_timeout_s, "the stack ready")
    except processes.ProcessStartError as exc:
        supervisor.stop(grace_s=120)
        reason = f"{found['error']}; " if "error" in found else ""
        raise RuntimeError(f"the stack did not start: {reason}{exc}") from None
    except BaseException:  # Ctrl-C: leave nothing running behind the user's back
        supervisor.stop(grace_s=120)
        raise
    return found


@dataclass(frozen=True)
class Stopped:
    exit_codes: dict[str, int | None]
    killed_leftovers: list[str]

    def describe(self) -> str:
        codes = ", ".join(f"{k} (exit {v})" for k, v in self.exit_codes.items()) or "processes ended"
        leftovers = f"; killed leftovers: {', '.join(self.killed_leftovers)}" if self.killed_leftovers else ""
        return f"stack stopped: {codes}{leftovers}; no process left"


def stop(state_dir: Path, timeout_s: float = 90.0, out=print) -> Stopped | None:
    """Stops the supervisor (it stops the stack in order), then kills whatever recorded process is left (a supervisor
    killed -9, say); None when ``state_dir`` holds no stack state."""
    state = read_state(state_dir)
    if state is None:
        return None
    sup = state["supervisor"]
    if supervisor_alive(state):
        out(f"stopping the stack (supervisor pid {sup['pid']}) …")
        os.kill(sup["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and same_process(sup["pid"], sup["start_ticks"]):
            time.sleep(0.2)
    recorded = {"supervisor": sup, **state.get("endpoints", {}).get("processes", {})}
    leftovers = [name for name, p in recorded.items() if same_process(p["pid"], p["start_ticks"])]
    for name in leftovers:
        kill_recorded(recorded[name]["pid"], recorded[name]["start_ticks"])
    final = read_state(state_dir) or state
    return Stopped(final.get("exit_codes", {}), leftovers)


@dataclass(frozen=True)
class Status:
    state: dict[str, Any]
    endpoints: Endpoints
    running: dict[str, bool]  # recorded process name -> still running


def status(state_dir: Path) -> Status:
    """The running stack's state, endpoints and which of its processes still run; StackNotRunning without one."""
    state = read_state(state_dir)
    if not supervisor_alive(state):
        last = f" (last status: {state['status']})" if state else ""
        raise StackNotRunning(f"no stack running from {state_dir}{last}")
    endpoints = Endpoints(**state.get("endpoints", {}))
    running = {name: same_process(p["pid"], p["start_ticks"]) for name, p in endpoints.processes.items()}
    return Status(state, endpoints, running)
