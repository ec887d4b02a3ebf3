"""`eqface serve triton` and the TritonServer launcher: start, deploy a new version (explicit mode), clean shutdown."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from eqface import contract
from eqface.processes import pid_alive
from eqface.serving.client import infer_images
from eqface.serving.launcher import TritonServer, TritonStartError

pytestmark = pytest.mark.integration


class ServeProcess:
    """`eqface serve triton` as a user runs it, with its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eqface.cli", "serve", "triton", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                match = re.search(pattern, self.lines.get(timeout=0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.output)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def serve(triton_installed):
    started: list[ServeProcess] = []

    def start(*args: str) -> ServeProcess:
        started.append(ServeProcess(*args))
        return started[-1]

    yield start
    for process in started:  # teardown even when the test failed half-way
        process.kill()


def _free_ports() -> list[str]:
    return ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_serve_deploys_a_new_version_in_explicit_mode_and_stops_on_sigterm(
    serve, local_repository, tmp_path, mobilefacenet, faces
):
    repo = tmp_path / "repo"
    shutil.copytree(local_repository, repo)
    server = serve(
        "--model-repository",
        str(repo),
        *_free_ports(),
        "--model-control-mode",
        "explicit",
        "--load-model",
        contract.ENSEMBLE_MODEL_NAME,
    )
    pid = int(server.wait_for(r"tritonserver ready \(pid (\d+)\)").group(1))
    grpc_url = server.wait_for(r"gRPC\s+(\S+)").group(1)
    server.wait_for("Ctrl-C or SIGTERM stops the server")
    client = grpcclient.InferenceServerClient(grpc_url)
    face = faces[:1]
    before = infer_images(client, face)

    # The deploy step: write version 2, then ask the running server to load it.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "eqface.cli",
            "serve",
            "repository",
            str(mobilefacenet.onnx_path),
            "--out",
            str(repo),
            "--version",
            "2",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    client.load_model(contract.ENSEMBLE_MODEL_NAME)
    assert client.is_model_ready(contract.ONNX_MODEL_NAME, "2")
    assert not client.is_model_ready(contract.ONNX_MODEL_NAME, "1")
    after = infer_images(client, face)
    assert (before[0] == after[0]).all()  # same ONNX file deployed as version 2
    client.close()

    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    server.wait_for(r"tritonserver stopped \(exit status 0\)")
    _assert_gone(pid)


def test_serve_stops_cleanly_on_ctrl_c(serve, local_repository):
    server = serve("--model-repository", str(local_repository), *_free_ports())
    pid = int(server.wait_for(r"tritonserver ready \(pid (\d+)\)").group(1))
    server.wait_for(r"models\s+eqface v1, eqface_onnx v1, preprocess v1")
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    _assert_gone(pid)


def test_serve_fails_loudly_when_the_server_dies(serve, local_repository):
    server = serve("--model-repository", str(local_repository), *_free_ports())
    pid = int(server.wait_for(r"tritonserver ready \(pid (\d+)\)").group(1))
    server.wait_for("Ctrl-C or SIGTERM stops the server")
    os.kill(pid, signal.SIGKILL)
    assert server.process.wait(timeout=30) == 2
    server.wait_for(r"tritonserver exited on its own with status -9")


def test_a_broken_repository_fails_to_start_with_the_servers_reason(tmp_path, triton_installed):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: oops\n')
    server = TritonServer(tmp_path, startup_timeout_s=60)
    with pytest.raises(TritonStartError, match="exited with status") as info:
        server.start()
    assert "broken" in str(info.value)
    assert not server.is_running()


def test_two_servers_run_side_by_side(local_repository, faces, triton_installed):
    """Free ports and private python-backend shared memory: parallel test runs do not collide."""
    face = faces[:1]
    with TritonServer(local_repository) as first, TritonServer(local_repository) as second:
        assert first.grpc_url != second.grpc_url
        for server in (first, second):
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                assert infer_images(client, face)[0].shape == (1, 128)


def test_the_server_dies_with_a_killed_parent(local_repository, triton_installed):
    """A test run killed mid-way (SIGKILL: no teardown runs) must not leave tritonserver behind."""
    script = (
        "import time\nfrom eqface.serving.launcher import TritonServer\n"
        f"server = TritonServer({str(local_repository)!r}).start()\nprint(server.pid, flush=True)\ntime.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        workdir = Path(f"/proc/{pid}/cwd").resolve()  # the launcher's temporary folder, which SIGKILL leaves behind
    finally:
        parent.kill()
        parent.wait()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
        assert not pid_alive(pid)
    finally:
        if workdir.name.startswith("eqface-triton-"):
            shutil.rmtree(workdir, ignore_errors=True)


def _onnx_only(local_repository: Path, tmp_path: Path) -> Path:
    """The repository's ONNX model alone (no python-backend model: starts fast, imports nothing of eqface)."""
    repository = tmp_path / "onnx_only"
    shutil.copytree(local_repository / contract.ONNX_MODEL_NAME, repository / contract.ONNX_MODEL_NAME)
    return repository


def test_triton_helper_serves_and_stops_with_its_owner(local_repository, tmp_path, triton_installed):
    """TritonHelper: ready on its ports; stop() leaves no server; a killed owner (the pipe closes) neither."""
    from eqface.processes import http_ok, wait_until
    from eqface.serving.helper_process import TritonHelper

    repository = _onnx_only(local_repository, tmp_path)
    helper = TritonHelper(repository, tmp_path / "helper.log").start(timeout_s=120)
    pid = helper.pid
    try:
        assert pid_alive(pid) and http_ok(f"http://{helper.http_url}/v2/health/ready")
    finally:
        helper.stop()
    assert not pid_alive(pid)
    assert "tritonserver ready" in (tmp_path / "helper.log").read_text()

    helper = TritonHelper(repository, tmp_path / "owned.log").start(timeout_s=120)
    pid = helper.pid
    helper._child.stop(signal.SIGKILL, grace_s=5)  # the helper dies without stopping Triton: its pipe closes...
    wait_until(lambda: not pid_alive(pid), None, 60, "tritonserver gone after its helper was killed")


def test_triton_helper_reports_a_server_that_cannot_start(tmp_path, triton_installed):
    from eqface.processes import ProcessStartError
    from eqface.serving.helper_process import TritonHelper

    (tmp_path / "repo" / "broken").mkdir(parents=True)
    (tmp_path / "repo" / "broken" / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: oops\n')
    with pytest.raises(ProcessStartError, match=r"triton helper exited with status 1(.|\n)*failed to load all models"):
        TritonHelper(tmp_path / "repo", tmp_path / "helper.log").start(timeout_s=120)
