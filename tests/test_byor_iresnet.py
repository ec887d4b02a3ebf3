"""An insightface-layout IResNet exported by torch.onnx (batch fixed at 1) through import → feature cache → graft.

The network is small and untrained, so the normalisation check is off here (it is tested on the pretrained
MobileFaceNet); what is tested is the graph work: the tap is the backbone's own pre-pooling map, the embedding the
backbone's own output, the cache resumes after a kill, and the grafted model keeps the contract and the parity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface import contract
from eqface.byor.export import MIN_COSINE, QUALITY_ATOL, export_grafted
from eqface.byor.features import FeatureSpec, cache_features
from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
from eqface.byor.normalisation import InputNormalisation
from eqface.byor.quality_training import save_head
from eqface.byor.recogniser import Recogniser
from eqface.byor.step2 import HEAD_FILE, STEP2_DIR
from eqface.data.decode import decode_image
from eqface.data.packs import load_pack
from eqface.data.sources import FaceSource
from eqface.export.onnx import onnx_session, run_onnx, verify_onnx
from eqface.models.quality import QualityHead
from tests.support.byor import export_backbone, tiny_iresnet
from tests.support.images import FACE_PACK

pytestmark = pytest.mark.slow

NO_CHECK = CheckOptions(enabled=False)


@pytest.fixture(scope="module")
def backbone():
    return tiny_iresnet()


@pytest.fixture(scope="module")
def exported(backbone, tmp_path_factory):
    return export_backbone(backbone, tmp_path_factory.mktemp("iresnet") / "iresnet.onnx")


@pytest.fixture(scope="module")
def images(faces):
    return np.stack([decode_image(b) for b in faces])  # 64 real CelebA faces, 112×112 RGB


def _import(exported, out, order="RGB"):
    norm = InputNormalisation(mean=127.5, std=128.0, channel_order=order)
    return import_onnx(exported, out, ImportOptions(norm, check=NO_CHECK))


def test_tap_and_embedding_are_the_backbones_own(backbone, exported, images, tmp_path):
    manifest = _import(exported, tmp_path)
    assert manifest.tap_shape == backbone.feature_shape == (16, 7, 7)
    assert manifest.batch_fixes  # the flatten before the FC hard-coded batch 1
    emb, tap = Recogniser(tmp_path).embed(images[:7])
    with torch.no_grad():
        x = torch.from_numpy(contract.normalize_pixels(images[:7]))
        fmap = backbone.forward_features(x)
        want = backbone.forward_head(fmap)
    np.testing.assert_allclose(tap, fmap.numpy(), atol=1e-4)
    np.testing.assert_allclose(emb, want.numpy(), atol=1e-4)


class _KilledAfter(FaceSource):
    """The pack itself, but the process "dies" (KeyboardInterrupt) after ``limit`` decodes; counts decodes."""

    def __init__(self, parent: FaceSource, limit: int | None) -> None:
        self.parent, self.limit, self.decoded = parent, limit, 0
        self.labels, self.names, self.extras = parent.labels, parent.names, parent.extras

    def image(self, i: int) -> np.ndarray:
        if self.limit is not None and self.decoded >= self.limit:
            raise KeyboardInterrupt
        self.decoded += 1
        return self.parent.image(i)


def test_feature_cache_resumes_after_a_kill_and_matches_an_uninterrupted_run(exported, shared_data, tmp_path):
    _import(exported, tmp_path / "rec")
    recogniser = Recogniser(tmp_path / "rec")
    pack = load_pack(shared_data / FACE_PACK).subset(np.arange(40))
    spec = FeatureSpec(views=2, chunk=8)
    killed = _KilledAfter(pack, limit=30)  # chunks of 8 faces × 2 views: 3 chunks done, the 4th dies mid-way
    with pytest.raises(KeyboardInterrupt):
        cache_features(recogniser, killed, tmp_path / "cache", spec)
    resumed = _KilledAfter(pack, limit=None)
    cached = cache_features(recogniser, resumed, tmp_path / "cache", spec)
    assert resumed.decoded == 80 - 24  # only what was not finished
    fresh = cache_features(recogniser, pack, tmp_path / "fresh", spec)
    np.testing.assert_array_equal(cached.embedding, fresh.embedding)
    np.testing.assert_array_equal(np.asarray(cached.tap), np.asarray(fresh.tap))
    assert not np.allclose(cached.tap[0], cached.tap[1])  # view 1 is degraded
    again = _KilledAfter(pack, limit=0)
    cache_features(recogniser, again, tmp_path / "cache", spec)  # complete: reused without decoding anything
    with pytest.raises(ValueError, match="caches other features"):
        cache_features(recogniser, pack, tmp_path / "cache", FeatureSpec(views=3, chunk=8))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_grafted_model_keeps_the_contract_and_the_parity(exported, images, tmp_path, order):
    manifest = _import(exported, tmp_path, order)
    torch.manual_seed(0)
    head = QualityHead(manifest.tap_features, 16)
    with torch.no_grad():  # trained-looking BatchNorm statistics, so the fold into the Gemm is really tested
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
        head.fc2.weight.normal_(0, 1)
    save_head(head, tmp_path / STEP2_DIR / HEAD_FILE)
    parity = export_grafted(tmp_path, tmp_path / "served.onnx", images)
    assert parity.min_cosine >= MIN_COSINE and parity.max_quality_diff <= QUALITY_ATOL
    assert verify_onnx(tmp_path / "served.onnx") == contract.InferenceSpec((112, 112), 32)
    _, quality = run_onnx(onnx_session(tmp_path / "served.onnx"), contract.normalize_pixels(images))
    assert quality.std() > 1e-3  # the grafted head is live, not a constant


def test_evaluate_pack_reports_verification_and_edc_figures(exported, tmp_path):
    from eqface.byor.step2 import evaluate_pack

    manifest = _import(exported, tmp_path)
    torch.manual_seed(0)
    save_head(QualityHead(manifest.tap_features, 8).eval(), tmp_path / STEP2_DIR / HEAD_FILE)
    report = evaluate_pack(tmp_path, "shared:orl_att_faces.npz", max_faces=60)  # grey 112×92, fitted to 112×112
    assert report["faces"] == 60 and report["impostor_pairs"] >= 1000
    for key in ("auc", "pauc_quality", "pauc_embedding_norm", "pauc_random", "accuracy_10fold"):
        assert np.isfinite(report[key]), key
