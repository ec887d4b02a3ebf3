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
from eqface.serving import control
from eqface.serving.client import infer_images
from eqface.serving.launcher import TritonServer, TritonStartError
from eqface.workflow.deploy import load_version

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
    serve, local_repository, tmp_path, mobilefacenet, faces, monkeypatch
):
    """The deploy step loads a new version into a server whose model control is locked: with the key from the
    file the deploy job mounts, not without it."""
    repo = tmp_path / "repo"
    shutil.copytree(local_repository, repo)
    key_file = tmp_path / "control.key"
    key_file.write_text(control.new_key() + "\n")
    server = serve(
        "--model-repository",
        str(repo),
        *_free_ports(),
        "--model-control-mode",
        "explicit",
        "--load-model",
        contract.ENSEMBLE_MODEL_NAME,
        "--control-key-file",
        str(key_file),
    )
    pid = int(server.wait_for(r"tritonserver ready \(pid (\d+)\)").group(1))
    grpc_url = server.wait_for(r"gRPC\s+(\S+)").group(1)
    server.wait_for("model control restricted to the control key")
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
    for name in (control.KEY_FILE_ENV, control.KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        RuntimeError, match=f"refused to load.*needs the server's control key: set {control.KEY_FILE_ENV}"
    ):
        load_version(grpc_url, 2, mobilefacenet.spec)
    assert not client.is_model_ready(contract.ONNX_MODEL_NAME, "2")
    monkeypatch.setenv(control.KEY_FILE_ENV, str(key_file))
    load_version(grpc_url, 2, mobilefacenet.spec)
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


def test_model_control_needs_the_key_and_inference_does_not(local_repository, tmp_path, triton_installed):
    """A locked server: load, unload and the repository index are refused without the key or with a wrong one
    (gRPC and HTTP), accepted with it; inference, health, metadata and model config need no key."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    key = control.new_key()
    model = contract.ONNX_MODEL_NAME
    repository = _onnx_only(local_repository, tmp_path)
    with TritonServer(repository, model_control_mode="explicit", load_models=["*"], control_key=key) as server:
        assert f"{control.CONTROL_HEADER}={key}" in " ".join(server.command(Path("t"), Path("b")))
        assert [m["name"] for m in server.models()] == [model]  # the launcher's own index call sends the key
        for client, protocol in (
            (grpcclient.InferenceServerClient(server.grpc_url), "grpc"),
            (httpclient.InferenceServerClient(server.http_url), "http"),
        ):
            for headers in (None, control.headers(control.new_key(), protocol), control.headers(key, "http")):
                if protocol == "http" and headers == control.headers(key, "http"):
                    continue  # the HTTP header name is the right one over HTTP
                for call in (client.unload_model, client.load_model):
                    with pytest.raises(InferenceServerException, match="restricted"):
                        call(model, headers=headers)
                with pytest.raises(InferenceServerException, match="restricted"):
                    client.get_model_repository_index(headers=headers)
            assert client.is_model_ready(model)
            client.unload_model(model, headers=control.headers(key, protocol))
            deadline = time.monotonic() + 30
            while client.is_model_ready(model):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            client.load_model(model, headers=control.headers(key, protocol))
            assert client.is_model_ready(model) and client.is_server_ready()
            assert client.get_model_metadata(model) and client.get_model_config(model)
            api = grpcclient if protocol == "grpc" else httpclient
            shape = [1, *[int(d) for d in _input_dims(client.get_model_metadata(model))]]
            tensor = api.InferInput(contract.INPUT_NAME, shape, "FP32")
            tensor.set_data_from_numpy(np.zeros(shape, np.float32))
            result = client.infer(model, [tensor])
            assert result.as_numpy(contract.EMBEDDING_NAME).shape == (1, 128)
            client.close()


def _input_dims(metadata) -> list[int]:
    inputs = metadata["inputs"] if isinstance(metadata, dict) else metadata.inputs
    shape = inputs[0]["shape"] if isinstance(inputs[0], dict) else inputs[0].shape
    return [int(d) for d in shape[1:]]


def test_control_keys_come_from_a_file_or_the_environment(tmp_path):
    key = control.new_key()
    (tmp_path / "key").write_text(f"{key}\n")
    assert control.read_key(tmp_path / "key", environ={}) == key
    assert control.read_key(environ={control.KEY_FILE_ENV: str(tmp_path / "key"), control.KEY_ENV: "x"}) == key
    assert control.read_key(environ={control.KEY_ENV: key}) == key
    assert control.read_key(environ={}) is None
    assert control.headers(key, "grpc") == {f"triton-grpc-protocol-{control.CONTROL_HEADER}": key}
    assert control.headers(None, "http") is None
    for bad in ("short", "a" * 20 + ":x=y", "a" * 300, "with space " * 3):
        with pytest.raises(ValueError, match="16-256 characters"):
            control.check_key(bad)
    with pytest.raises(FileNotFoundError):
        control.read_key(tmp_path / "missing", environ={})


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
