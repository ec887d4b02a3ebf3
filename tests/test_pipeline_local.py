"""The whole pipeline run by kfp's local runner on CPU, deploying into a real Triton through its model-control API.

``eqface pipeline run-local`` (test preset: synthetic 32×32 faces) runs configure → prepare data → 1 → 2 → 3 → 2 →
evaluate → export → deploy, with the deploy step told about a Triton server started beforehand in explicit
model-control mode on an empty repository. The served model must then answer like the exported ONNX file; a second
deploy of other weights must replace it in the running server. The evaluate step must pass on the better recogniser
of the final and the Step 1 → 2 model; a second run with equal inputs (kfp.local's task cache, ``--cache``) must
reuse every cached step.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from eqface import contract
from tests.support.triton import running_triton

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUN_TIMEOUT_S = 300  # two models evaluated since the evaluate step compares them; two shared cores


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp_local")


@pytest.fixture(scope="module")
def triton(workdir, request):
    repository = workdir / "model_repository"
    repository.mkdir()
    with running_triton(repository, request, model_control_mode="explicit") as server:
        yield server


@pytest.fixture(scope="module")
def run(workdir, triton) -> dict:
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eqface.cli",
            "pipeline",
            "run-local",
            "--root",
            str(workdir / "root"),
            "--repository",
            str(triton.model_repository),
            "--triton-url",
            triton.grpc_url,
            "--cache",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    summary = result.stdout[result.stdout.rindex("pipeline finished") :]
    print(f"\n{summary}\n(wall {seconds:.0f}s)")
    onnx = Path(re.search(r"ONNX\s+(\S+)", summary).group(1))
    chosen = Path(re.search(r"model\s+(\S+)", summary).group(1))
    return {"summary": summary, "onnx": onnx, "chosen": chosen, "seconds": seconds}


def held_out_faces(n: int = 8) -> np.ndarray:
    """Synthetic faces of the test preset, uint8 [N, 32, 32, 3]."""
    from eqface.config import preset
    from eqface.data import build_source

    cfg = preset("test")
    source = build_source(cfg.data, (32, 32), cfg.train.seed)
    return np.stack([source.image(i) for i in range(len(source) - n, len(source))])


def test_the_pipeline_deploys_a_model_that_triton_serves(run, triton):
    import tritonclient.grpc as grpcclient

    from eqface.data.image_ops import encode_image
    from eqface.export.onnx import onnx_session, run_onnx
    from eqface.serving.client import infer_images, infer_tensor

    assert "deploy  version 1" in run["summary"] and "loaded into" in run["summary"]
    assert re.search(r"verification accuracy \d+\.\d+%", run["summary"])
    faces = held_out_faces()
    x = contract.normalize_pixels(faces)
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        assert client.is_model_ready(contract.ONNX_MODEL_NAME, "1")
        embedding, quality = infer_tensor(client, x)
        bytes_embedding, _ = infer_images(client, [encode_image(f, fmt="PNG") for f in faces])
    expected_embedding, expected_quality = run_onnx(onnx_session(run["onnx"]), x)
    np.testing.assert_allclose(embedding, expected_embedding, atol=1e-5)
    np.testing.assert_allclose(quality, expected_quality, atol=1e-5)
    np.testing.assert_allclose(bytes_embedding, expected_embedding, atol=1e-5)  # PNG is lossless
    assert run["seconds"] < RUN_TIMEOUT_S


def test_a_new_version_replaces_the_served_one(run, triton, workdir):
    import torch
    import tritonclient.grpc as grpcclient

    from eqface.config import preset
    from eqface.contract import InferenceSpec
    from eqface.export.onnx import export_onnx, onnx_session, run_onnx
    from eqface.models import build_model
    from eqface.serving.client import infer_tensor
    from eqface.workflow.deploy import deploy

    cfg = preset("test").model
    torch.manual_seed(123)
    other = export_onnx(
        build_model(cfg), InferenceSpec(tuple(cfg.image_size), cfg.embedding_size), workdir / "other.onnx"
    ).path
    result = deploy(other, str(triton.model_repository), variant="local", triton_url=triton.grpc_url)
    assert result.version == 2 and result.loaded
    x = contract.normalize_pixels(held_out_faces(4))
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        embedding, _ = infer_tensor(client, x)
        models = client.get_model_repository_index(as_json=True)["models"]
    index = {(m["name"], m.get("version")): m.get("state") for m in models}
    np.testing.assert_allclose(embedding, run_onnx(onnx_session(other), x)[0], atol=1e-5)
    assert index[(contract.ONNX_MODEL_NAME, "2")] == "READY"


def test_a_server_without_explicit_model_control_is_reported(tmp_path, request, run):
    from eqface.contract import InferenceSpec
    from eqface.workflow.deploy import load_version

    with running_triton(tmp_path, request, model_control_mode="none") as server:
        with pytest.raises(RuntimeError, match="explicit"):
            load_version(server.grpc_url, 1, InferenceSpec((32, 32), 32), timeout_s=5)


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_better_recogniser_of_final_and_step_1_2_is_exported(run):
    """Both candidates are in Metrics; the exported model is the one with the better TAR@FAR 1e-3 (ties: accuracy)."""
    import json

    import torch

    from eqface.export.onnx import onnx_session, run_onnx
    from eqface.train.checkpoint import load_model

    chosen = run["chosen"]
    run_dir = chosen.parents[1]  # <root>/<pipeline run>/evaluate/chosen_model
    metrics = json.loads((run_dir / "evaluate" / "metrics").read_text())
    rank = {
        c: (metrics.get(f"{c}_tar_at_far_1e-3", -1.0), metrics[f"{c}_verification_accuracy"])
        for c in ("final", "steps_1_2")
    }
    better = "final" if rank["final"] >= rank["steps_1_2"] else "steps_1_2"
    tasks = {"final": "train-quality-2", "steps_1_2": "train-quality"}  # step2-2 and step2-1
    other = tasks["steps_1_2" if better == "final" else "final"]
    assert sha256(chosen / "final.pt") == sha256(run_dir / tasks[better] / "model" / "final.pt")
    assert sha256(chosen / "final.pt") != sha256(run_dir / other / "model" / "final.pt")
    assert metrics["chosen_final"] == float(better == "final")
    assert metrics["verification_accuracy"] == metrics[f"{better}_verification_accuracy"]
    for candidate in ("final", "steps_1_2"):
        assert {f"{candidate}_verification_accuracy", f"{candidate}_verification_auc"} <= set(metrics)
    # the ONNX file is the chosen network: its embeddings are the chosen model's, not the other one's
    x = contract.normalize_pixels(held_out_faces(4))
    onnx_embedding, _ = run_onnx(onnx_session(run["onnx"]), x)
    with torch.no_grad():
        embeddings = {
            name: load_model(folder / "final.pt")[0].eval()(torch.from_numpy(x))[0].numpy()
            for name, folder in (("chosen", chosen), ("other", run_dir / other / "model"))
        }
    np.testing.assert_allclose(onnx_embedding, embeddings["chosen"], atol=1e-4)
    assert not np.allclose(onnx_embedding, embeddings["other"], atol=1e-4)


def test_a_second_run_with_equal_inputs_reuses_every_cached_step(run, workdir):
    from components.local_run import run_local

    started = time.monotonic()
    second = run_local(workdir / "root", workdir / "second_repository", cache=True)
    seconds = time.monotonic() - started
    assert second.chosen_model == run["chosen"] and second.onnx == run["onnx"]  # the first run's artifacts
    assert second.deployed_version == 1  # deploy is never cached: it ran, into this run's repository
    runs = sorted(p for p in (workdir / "root").iterdir() if p.name.startswith("eqface-training-"))
    assert len(runs) == 2 and {p.name for p in runs[-1].iterdir()} == {"deploy-triton"}
    assert seconds < run["seconds"] / 2
