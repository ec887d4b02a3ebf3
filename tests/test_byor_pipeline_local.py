"""The bring-your-own-recogniser pipeline run by kfp's local runner on CPU, deploying into a real Triton.

A tiny insightface-layout IResNet exported by torch.onnx (batch fixed at 1, untrained, so the normalisation check is
off) and the first 8 CelebA identities of the shared pack (4 held out) go through ``eqface pipeline run-local-byor``:
configure → prepare data → import → Step 2 → evaluate → export → deploy into a Triton server started beforehand in
explicit model-control mode. The served model must return the original file's embedding and the exported file's
quality, through the tensor model and through the bytes-in ensemble.
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
from tests.support.byor import export_backbone, tiny_iresnet
from tests.support.triton import running_triton

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUN_TIMEOUT_S = 1200  # 65–110 s on two shared cores at load ~4; 625 s at load ~16 (the pipeline, then Triton)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp_local_byor")


@pytest.fixture(scope="module")
def recogniser(workdir) -> Path:
    return export_backbone(tiny_iresnet(), workdir / "tiny_iresnet.onnx")


@pytest.fixture(scope="module")
def triton(workdir, request):
    repository = workdir / "model_repository"
    repository.mkdir()
    with running_triton(repository, request, model_control_mode="explicit") as server:
        yield server


@pytest.fixture(scope="module")
def run(workdir, recogniser, triton, shared_data) -> dict:
    command = [
        *(sys.executable, "-m", "eqface.cli", "pipeline", "run-local-byor"),
        *("--model", str(recogniser), "--eval-identities", "4", "--no-check"),
        *("--set", "max_identities=8", "--set", "views=2", "--set", "epochs=1", "--set", "batch_size=32"),
        # A nearly untrained head: an untrained recogniser misclassifies every face, so Eq. 6 would drive every
        # quality to 0, and a head that is live must show as a spread of qualities.
        *("--set", "lr=1e-5"),
        *("--root", str(workdir / "root"), "--repository", str(triton.model_repository)),
        *("--triton-url", triton.grpc_url),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    summary = result.stdout[result.stdout.rindex("pipeline finished") :]
    print(f"\n{summary}\n(wall {seconds:.0f}s)")
    onnx = Path(re.search(r"ONNX\s+(\S+)", summary).group(1))
    return {"summary": summary, "onnx": onnx, "seconds": seconds}


def test_the_deployed_model_answers_with_the_original_embedding_and_the_exported_quality(
    run, triton, recogniser, faces
):
    import tritonclient.grpc as grpcclient

    from eqface.byor.normalisation import InputNormalisation
    from eqface.data.decode import decode_image
    from eqface.export.onnx import onnx_session, run_onnx
    from eqface.serving.client import infer_images, infer_tensor

    assert "deploy  version 1" in run["summary"] and "loaded into" in run["summary"]
    assert re.search(r"verification accuracy \d+\.\d+%.*\(4 held-out identities", run["summary"])
    images = np.stack([decode_image(b) for b in faces[:8]])
    x = contract.normalize_pixels(images)
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        assert client.is_model_ready(contract.ONNX_MODEL_NAME, "1")
        embedding, quality = infer_tensor(client, x)
        bytes_embedding, bytes_quality = infer_images(client, faces[:8])
    assert embedding.shape == (8, 32) and quality.shape == (8, 1)  # the tiny IResNet's 32-d embedding
    original = onnx_session(recogniser)  # batch fixed at 1, fed its own normalisation
    own = InputNormalisation().apply(images)
    want = np.concatenate([original.run(None, {"data": own[i : i + 1]})[0] for i in range(len(own))])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", embedding, want).min() >= 0.99999
    exported_embedding, exported_quality = run_onnx(onnx_session(run["onnx"]), x)
    np.testing.assert_allclose(embedding, exported_embedding, atol=1e-5)
    np.testing.assert_allclose(quality, exported_quality, atol=1e-5)
    assert np.einsum("ij,ij->i", bytes_embedding, want).min() >= 0.999  # JPEG decoded by the preprocess model
    assert 0 <= bytes_quality.min() <= bytes_quality.max() <= 1
    assert quality.std() > 1e-3  # the grafted head is live, not a constant
    assert run["seconds"] < RUN_TIMEOUT_S


def test_the_pipeline_kept_the_feature_caches_out_of_the_artifacts(run):
    step2 = run["onnx"].parents[2] / "train-quality-frozen" / "model"
    assert sorted(p.relative_to(step2).as_posix() for p in step2.rglob("*") if p.is_file()) == [
        "recogniser.json",
        "recogniser.onnx",
        "step2/quality_head.pt",
        "step2/step2.json",
    ]
