"""eqface.processes: start a child with its log, wait until it is healthy, stop it and everything it started."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from eqface.processes import (
    ProcessStartError,
    free_port,
    http_ok,
    pid_alive,
    process_start_ticks,
    same_process,
    start,
    wait_for_grpc_health,
    wait_for_http,
    wait_until,
)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_start_waits_healthy_over_http_and_stops(tmp_path: Path):
    port = free_port()
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), str(port)]
    child = start("web", argv, tmp_path / "web.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", child, 30)
        assert http_ok(f"http://127.0.0.1:{port}/")
        assert child.running()
        assert "GET / HTTP" in child.log_tail()
    finally:
        code = child.stop(grace_s=10)
    assert code == -signal.SIGTERM
    assert not pid_alive(child.pid)
    assert not http_ok(f"http://127.0.0.1:{port}/", timeout_s=0.5)


def test_a_child_that_dies_early_gives_its_log(tmp_path: Path):
    child = start("crasher", _python("import sys; print('bad config: x', flush=True); sys.exit(3)"), tmp_path / "c.log")
    with pytest.raises(ProcessStartError, match=r"crasher exited with status 3 while starting(.|\n)*bad config: x"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", child, 30)


def test_timeout_names_what_was_awaited_and_the_log(tmp_path: Path):
    child = start(
        "sleeper", _python("print('still loading', flush=True); import time; time.sleep(60)"), tmp_path / "s.log"
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(ProcessStartError, match=r"the model loaded not within 1s(.|\n)*still loading"):
            wait_until(lambda: False, child, 1.0, "the model loaded")
        assert time.monotonic() - t0 < 10
    finally:
        child.stop(grace_s=5)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path):
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = start("stubborn", _python(code), tmp_path / "s.log")
    wait_until(lambda: "ready" in child.log_tail(), child, 30, "ready printed")
    t0 = time.monotonic()
    assert child.stop(grace_s=0.5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - t0 < 10
    assert not pid_alive(child.pid)


def test_stop_leaves_no_orphan_of_the_child(tmp_path: Path):
    """The child's own child (same process group, ignoring SIGTERM) does not outlive stop()."""
    grandchild = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); print(p.pid, flush=True); time.sleep(60)"
    )
    child = start("parent", _python(code), tmp_path / "p.log")
    wait_until(lambda: child.log_tail().strip().isdigit(), child, 30, "grandchild pid printed")
    grandchild_pid = int(child.log_tail().strip())
    ticks = process_start_ticks(grandchild_pid)
    assert same_process(grandchild_pid, ticks)
    child.stop(grace_s=1)
    deadline = time.monotonic() + 10
    while same_process(grandchild_pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not same_process(grandchild_pid, ticks)


def test_wait_for_grpc_health(tmp_path: Path):
    port = free_port()
    server = (
        "from concurrent import futures; import grpc, time; "
        "from grpc_health.v1 import health, health_pb2, health_pb2_grpc; "
        "s = grpc.server(futures.ThreadPoolExecutor(2)); h = health.HealthServicer(); "
        "health_pb2_grpc.add_HealthServicer_to_server(h, s); "
        f"s.add_insecure_port('127.0.0.1:{port}'); s.start(); time.sleep(1.0); "
        "h.set('', health_pb2.HealthCheckResponse.SERVING); time.sleep(60)"
    )
    child = start("health", _python(server), tmp_path / "h.log", die_with_parent=False)
    try:
        wait_for_grpc_health(f"127.0.0.1:{port}", child, 60)
        with pytest.raises(ProcessStartError, match="SERVING"):
            wait_for_grpc_health(f"127.0.0.1:{port}", child, 0.5, service="no-such-service")
    finally:
        child.stop(grace_s=5)


def test_wait_for_grpc_health_times_out_without_a_server():
    with pytest.raises(ProcessStartError, match=r"not within 1s \(last health answer"):
        wait_for_grpc_health(f"127.0.0.1:{free_port()}", None, 1.0)
