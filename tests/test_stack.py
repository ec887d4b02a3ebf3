"""The local stack (``eqface stack``): model discovery, the demo video, and the real thing — Triton, the aggregator
and Prometheus started, streamed to, interrupted and stopped, with every child process gone afterwards."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eqface import contract
from eqface.processes import same_process
from eqface.stack import model as stack_model
from eqface.stack.demo import ENROLL_IMAGES, DemoOptions, build_subjects
from eqface.stack.stack import StackConfig, read_state
from tests.conftest import REPO_ROOT, require_executable

TINY_ONNX: dict[str, Path] = {}  # one export per session, shared with test_monitoring_live.py


def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny EQFace network (32×32 in, 32-d embedding) exported to ONNX: what the stack serves in tests."""
    if "path" not in TINY_ONNX:
        import torch

        from eqface.config import ModelConfig
        from eqface.contract import InferenceSpec
        from eqface.export.onnx import export_onnx
        from eqface.models import build_model

        torch.manual_seed(0)
        cfg = ModelConfig(backbone="tiny", image_size=(32, 32), embedding_size=32, quality_hidden=16)
        path = tmp_path_factory.mktemp("tiny-model") / "model.onnx"
        export_onnx(build_model(cfg).eval(), InferenceSpec((32, 32), 32), path)
        TINY_ONNX["path"] = path
    return TINY_ONNX["path"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory)


def eqface_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eqface.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        **kwargs,
    )


def recorded_processes(state_dir: Path) -> dict[str, dict]:
    state = read_state(state_dir) or {}
    processes = dict(state.get("endpoints", {}).get("processes", {}))
    if "supervisor" in state:
        processes["supervisor"] = state["supervisor"]
    return processes


def assert_all_gone(state_dir: Path) -> None:
    processes = recorded_processes(state_dir)
    assert {"triton", "aggregator"} <= set(processes), processes
    alive = [n for n, p in processes.items() if same_process(p["pid"], p["start_ticks"])]
    assert not alive, f"still running: {alive}"


# ------------------------------------------------------------------------------------------------ units
def test_find_existing_takes_the_newest_model(tmp_path):
    assert stack_model.find_existing(tmp_path) is None
    old = tmp_path / "demo" / "model.pt"
    old.parent.mkdir()
    old.write_bytes(b"x")
    os.utime(old, (1, 1))
    repo = tmp_path / "kfp-local" / "model_repository" / contract.ONNX_MODEL_NAME / "3"
    repo.mkdir(parents=True)
    assert stack_model.find_existing(tmp_path) == tmp_path / "kfp-local" / "model_repository"
    new = tmp_path / "later" / "model.pt"
    new.parent.mkdir()
    new.write_bytes(b"y")
    os.utime(repo, (1, 1))
    assert stack_model.find_existing(tmp_path) == new


def test_prepare_serves_onnx_and_repositories(tiny_model, tmp_path):
    served = stack_model.prepare(tiny_model, tmp_path)
    assert (served.embedding_size, served.image_size) == (32, (32, 32))
    assert (served.repository / contract.ONNX_MODEL_NAME / "1" / "model.onnx").is_file()
    again = stack_model.prepare(served.repository, tmp_path / "other")
    assert (again.repository, again.embedding_size, again.image_size) == (served.repository, 32, (32, 32))
    production = tmp_path / "production"
    from eqface.serving.repository import write_model_repository

    write_model_repository(tiny_model, production, variant="production")
    with pytest.raises(ValueError, match="production variant"):
        stack_model.prepare(production, tmp_path)
    with pytest.raises(ValueError, match="model.pt, an .onnx"):
        stack_model.prepare(tmp_path / "weights.bin", tmp_path)


def test_stack_config_round_trips(tiny_model, tmp_path):
    config = StackConfig(state_dir=tmp_path, model=stack_model.prepare(tiny_model, tmp_path), scrape_interval_s=1)
    assert StackConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_synthetic_video(tmp_path):
    options = DemoOptions(known=2, visitors=1, frames=10, degraded_fraction=0.5)
    subjects, source = build_subjects(options, None, prefix="run7/")
    assert "synthetic" in source and len(subjects) == 3
    assert [bool(s.identity_id) for s in subjects] == [True, True, False]
    assert all(s.subject_id.startswith("run7/") and len(s.frames) == 10 for s in subjects)
    assert [len(s.enroll_images) for s in subjects] == [ENROLL_IMAGES, ENROLL_IMAGES, 0]
    conditions = [f.condition for s in subjects for f in s.frames]
    assert 5 <= sum(c != "clean" for c in conditions) <= 25
    assert all(f.image[:2] == b"\xff\xd8" for s in subjects for f in s.frames)  # JPEG


def test_celeba_video_uses_held_out_identities(shared_data):
    options = DemoOptions(known=3, visitors=1, frames=12)
    subjects, source = build_subjects(options, shared_data)
    assert "CelebA" in source
    with np.load(shared_data / "celeba_wild_subset_rgb112.npz") as pack:
        celeba_ids, identity = pack["celeba_identity"], pack["identity"]
    last_labels = set(np.unique(identity)[-40:])  # the mobilefacenet-celeba preset holds out 40 identities
    for s in subjects:
        cid = int(s.display_name.split("celeb-")[1].rstrip(")"))
        assert set(identity[celeba_ids == cid]) <= last_labels


# ------------------------------------------------------------------------------------------------ integration
@pytest.mark.slow
@pytest.mark.integration
def test_demo_runs_end_to_end_and_leaves_nothing(tiny_model, tmp_path):
    require_executable("prometheus")
    state_dir = tmp_path / "demo"
    result = eqface_cli(
        "stack",
        "demo",
        "--model",
        str(tiny_model),
        "--state-dir",
        str(state_dir),
        "--subjects",
        "2",
        "--visitors",
        "1",
        "--frames",
        "5",
        "--fps",
        "20",
        "--scrape-interval",
        "1",
        "--faces",
        "synthetic",
        "--no-clip",  # the camera clip has its own test (tests/test_camera_clip.py)
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("enrolled synthetic-") == 2
    ticks = [line for line in out.splitlines() if line.lstrip().startswith(("1 ", "5 ")) and "cam" in line]
    assert len(ticks) == 6, out
    assert "summary:" in out and "identification:" in out
    assert "frames by result   accepted" in out and "alerts firing      none" in out
    assert "no child process left" in out
    assert_all_gone(state_dir)


@pytest.mark.slow
@pytest.mark.integration
def test_demo_ctrl_c_stops_every_child(tiny_model, tmp_path):
    state_dir = tmp_path / "demo"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eqface.cli",
            "stack",
            "demo",
            "--model",
            str(tiny_model),
            "--state-dir",
            str(state_dir),
            "--frames",
            "200",
            "--fps",
            "2",
            "--faces",
            "synthetic",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    lines = []
    try:
        for line in process.stdout:  # until the video is playing
            lines.append(line)
            if line.lstrip().startswith("2 ") and "cam" in line:
                break
        process.send_signal(signal.SIGINT)  # what Ctrl-C does (the children are in their own sessions)
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + rest
    assert process.returncode == 130, out
    assert "interrupted: stopping the stack" in out and "no child process left" in out
    assert_all_gone(state_dir)


@pytest.mark.slow
@pytest.mark.integration
def test_up_status_stream_down(tiny_model, tmp_path):
    state_dir = tmp_path / "stack"
    up = eqface_cli("stack", "up", "--model", str(tiny_model), "--state-dir", str(state_dir), "--scrape-interval", "1")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack up" in up.stdout and "aggregator  gRPC 127.0.0.1:" in up.stdout
        _assert_mutual_tls(state_dir)
        again = eqface_cli("stack", "up", "--model", str(tiny_model), "--state-dir", str(state_dir))
        assert again.returncode == 2 and "already running" in again.stderr
        stream = eqface_cli(
            "stack",
            "stream",
            "--state-dir",
            str(state_dir),
            "--frames",
            "4",
            "--fps",
            "20",
            "--subjects",
            "2",
            "--faces",
            "synthetic",
            "--quiet",
            "--rounds",
            "2",
        )
        assert stream.returncode == 0, stream.stdout + stream.stderr
        assert "identification:" in stream.stdout
        status = eqface_cli("stack", "status", "--state-dir", str(state_dir))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" running") == 3 and "GONE" not in status.stdout
        _model_control_is_locked(state_dir)
    finally:
        down = eqface_cli("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0 and "no process left" in down.stdout, down.stdout + down.stderr
    assert_all_gone(state_dir)
    assert eqface_cli("stack", "status", "--state-dir", str(state_dir)).returncode == 3


def _model_control_is_locked(state_dir: Path) -> None:
    """The stack's Triton refuses model control without the key the stack keeps, owner-only, in its state folder."""
    import json

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from eqface.serving import control

    key_file = state_dir / "triton-control.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    url = json.loads((state_dir / "state.json").read_text())["endpoints"]["triton_http"]
    with httpclient.InferenceServerClient(url) as client:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        key = control.read_key(key_file, environ={})
        assert client.get_model_repository_index(headers=control.headers(key, "http"))


def _assert_mutual_tls(state_dir: Path) -> None:
    """The stack's aggregator serves mutual TLS with certificates from its own CA (private keys 0600): a plaintext
    client gets no answer (asked from a helper process: this one must not hold gRPC channels while the stack forks)."""
    endpoints = read_state(state_dir)["endpoints"]
    auth = endpoints["aggregator_auth"]
    assert Path(auth["ca_file"]).parent == state_dir / "pki"
    assert stat.S_IMODE(Path(auth["key_file"]).stat().st_mode) == 0o600
    code = (
        "import sys, grpc\n"
        "from eqface.service.v1 import aggregator_pb2 as pb, aggregator_pb2_grpc as g\n"
        "stub = g.AggregatorServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
        "try:\n"
        "    stub.ListSubjects(pb.ListSubjectsRequest(), timeout=5)\n"
        "except grpc.RpcError as e:\n"
        "    print(e.code().name)\n"
    )
    argv = [sys.executable, "-c", code, endpoints["aggregator_grpc"]]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert out.stdout.strip() == "UNAVAILABLE", out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_killed_supervisor_takes_the_stack_with_it(tiny_model, tmp_path):
    state_dir = tmp_path / "stack"
    up = eqface_cli("stack", "up", "--model", str(tiny_model), "--state-dir", str(state_dir), "--no-prometheus")
    assert up.returncode == 0, up.stdout + up.stderr
    supervisor = read_state(state_dir)["supervisor"]
    os.kill(supervisor["pid"], signal.SIGKILL)  # no orderly stop: the children's parent-death signal must act
    deadline = time.monotonic() + 60
    processes = recorded_processes(state_dir)
    while time.monotonic() < deadline and any(same_process(p["pid"], p["start_ticks"]) for p in processes.values()):
        time.sleep(0.2)
    down = eqface_cli("stack", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert_all_gone(state_dir)


def test_training_domain_is_read_from_the_run(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": {"source": "synthetic"}}))
    assert stack_model.training_data_source(tmp_path / "model.pt") == "synthetic"
    assert stack_model.training_data_source(tmp_path / "elsewhere" / "model.pt") == ""


# ------------------------------------------------------------------------------------------------ stack modules
def test_faces_dir_follows_the_shared_data_folder(tmp_path, monkeypatch):
    from eqface.stack.demo import CELEBA_PACK, faces_dir

    lines: list[str] = []
    monkeypatch.setenv("EQFACE_SHARED_DATA", str(tmp_path))
    assert faces_dir("synthetic", "npz", out=lines.append) is None
    assert faces_dir("auto", "npz", out=lines.append) is None and CELEBA_PACK in lines[-1]
    with pytest.raises(FileNotFoundError, match=CELEBA_PACK):
        faces_dir("celeba", "npz")
    (tmp_path / CELEBA_PACK).write_bytes(b"")
    assert faces_dir("auto", "npz") == tmp_path
    assert faces_dir("auto", "synthetic", out=lines.append) is None and "synthetic faces" in lines[-1]
    assert faces_dir("celeba", "synthetic") == tmp_path  # asked for explicitly: the training domain does not matter
    with pytest.raises(ValueError, match="valid: auto, celeba, synthetic"):
        faces_dir("webcam", "npz")


def test_resolve_refuses_a_missing_model_and_an_unknown_trainer(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        stack_model.resolve(tmp_path / "none.onnx", tmp_path / "runs", tmp_path / "state")
    with pytest.raises(ValueError, match="valid: byor, train, pipeline"):
        stack_model.resolve(None, tmp_path / "runs", tmp_path / "state", train_with="kfp")


def test_daemon_without_a_stack(tmp_path):
    from eqface.stack import daemon
    from eqface.stack.stack import write_state

    assert daemon.stop(tmp_path) is None
    with pytest.raises(daemon.StackNotRunning, match="no stack running"):
        daemon.status(tmp_path)
    with pytest.raises(daemon.StackNotRunning, match="eqface stack up"):
        daemon.running_state(tmp_path)
    # a state left by a supervisor that is gone (its pid with another start time): not running, nothing to kill
    me = {"pid": os.getpid(), "start_ticks": -1}
    write_state(tmp_path, {"status": "ready", "supervisor": me, "endpoints": {"processes": {"triton": me}}})
    assert not daemon.supervisor_alive(read_state(tmp_path))
    with pytest.raises(daemon.StackNotRunning, match="last status: ready"):
        daemon.status(tmp_path)
    stopped = daemon.stop(tmp_path, out=lambda line: pytest.fail(f"nothing to stop, but: {line}"))
    assert stopped.killed_leftovers == [] and stopped.describe().startswith("stack stopped: processes ended")


def test_report_lines(tmp_path):
    from eqface.processes import process_start_ticks
    from eqface.stack.report import endpoint_lines, stopped_line
    from eqface.stack.stack import Endpoints

    endpoints = Endpoints(triton_grpc="h:1", triton_http="h:2", triton_metrics="h:3", aggregator_grpc="h:4")
    lines = endpoint_lines(endpoints)
    assert "gRPC h:4" in lines[0] and "HTTP http://h:2" in lines[1] and "not running" in lines[2]
    endpoints.processes = {"me": {"pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid())}}
    assert stopped_line({"triton": 0}, endpoints) == "stopped: triton (exit 0); still running: me"
    endpoints.processes = {}
    assert stopped_line({}, endpoints) == "stopped: nothing was running; no child process left"
