"""The grafted pretrained MobileFaceNet served by the project's Triton repository: image bytes in through the ensemble,
the original model's embedding and the torch head's quality out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface.byor.recogniser import Recogniser
from eqface.data.decode import decode_image
from eqface.export.onnx import onnx_session
from eqface.serving.client import infer_images
from tests.support.byor import graft_photo_analyze
from tests.support.triton import running_triton

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grafted(shared_data, faces, tmp_path_factory):
    """photo_analyze imported (its documented setting; the check is tested in test_byor_import) + a seeded head."""
    folder = tmp_path_factory.mktemp("byor")
    images = np.stack([decode_image(b) for b in faces])
    _, head = graft_photo_analyze(shared_data, images, folder)
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
