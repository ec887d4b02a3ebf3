"""The grafted pretrained MobileFaceNet served by the project's Triton repository: image bytes in through the ensemble,
the original model's embedding and the torch head's quality out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface.byor.export import export_grafted
from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
from eqface.byor.normalisation import InputNormalisation
from eqface.byor.quality_training import save_head
from eqface.byor.recogniser import Recogniser
from eqface.byor.step2 import HEAD_FILE, STEP2_DIR
from eqface.data.decode import decode_image
from eqface.export.onnx import onnx_session
from eqface.models.quality import QualityHead
from eqface.serving.client import infer_images
from tests.support.triton import running_triton

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grafted(shared_data, faces, tmp_path_factory):
    """photo_analyze imported (its documented setting; the check is tested in test_byor_import) + a seeded head."""
    folder = tmp_path_factory.mktemp("byor")
    norm = InputNormalisation(mean=127.0, std=128.0)
    manifest = import_onnx(
        shared_data / "weights/mobilefacenet_photo_analyze.onnx",
        folder,
        ImportOptions(norm, check=CheckOptions(enabled=False)),
    )
    torch.manual_seed(0)
    head = QualityHead(manifest.tap_features, 64).eval()
    with torch.no_grad():
        head.fc2.weight.normal_(0, 1)  # a spread of qualities, so a wrong tap or head would show
    save_head(head, folder / STEP2_DIR / HEAD_FILE)
    images = np.stack([decode_image(b) for b in faces])
    export_grafted(folder, folder / "served.onnx", images)
    return folder, head, images


def test_one_ensemble_request_returns_the_original_embedding_and_the_head_quality(grafted, faces, tmp_path, request):
    import tritonclient.grpc as grpcclient

    from eqface.serving.repository import write_model_repository

    folder, head, images = grafted
    recogniser = Recogniser(folder)
    m = recogniser.manifest
    original = onnx_session(m.source)
    own = m.normalisation.apply(images[:8])
    want = np.concatenate([original.run([m.embedding_name], {m.input_name: own[i : i + 1]})[0] for i in range(8)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    with torch.no_grad():
        want_q = head(torch.from_numpy(recogniser.run(own)[1])).numpy()
    repository = write_model_repository(folder / "served.onnx", tmp_path / "repo", variant="local")
    assert repository.spec.embedding_size == 128
    with running_triton(repository.root, request) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            embedding, quality = infer_images(client, faces[:8])
    assert embedding.shape == (8, 128) and quality.shape == (8, 1)
    assert np.einsum("ij,ij->i", embedding, want).min() >= 0.99999
    np.testing.assert_allclose(quality, want_q, atol=1e-5)
    assert quality.std() > 1e-3
