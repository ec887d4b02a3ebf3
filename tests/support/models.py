"""Session fixtures for the export and serving tests: a realistic exported network and real face images.

The network is MobileFaceNet (112×96, 128-d) with its real pretrained backbone weights from ../shared/data/weights;
its quality branch is freshly initialised from a fixed seed (parity and serving do not depend on what the branch
learned). Faces are the CelebA pack's JPEG files, byte for byte. Registered in tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from eqface.config import ModelConfig
from eqface.contract import InferenceSpec
from eqface.models import EQFaceNet, build_model
from tests.support.images import FACE_PACK

MOBILEFACENET = ModelConfig(backbone="mobilefacenet", image_size=(112, 96), embedding_size=128)
MOBILEFACENET_WEIGHTS = "weights/mobilefacenet_casia_xiaoccer_068.npz"


@dataclass(frozen=True)
class ExportedModel:
    net: EQFaceNet
    onnx_path: Path
    spec: InferenceSpec


def build_mobilefacenet(shared_data: Path, seed: int = 0) -> EQFaceNet:
    from eqface.models.pretrained import load_backbone_weights

    torch.manual_seed(seed)
    net = build_model(MOBILEFACENET)
    load_backbone_weights(net.backbone, shared_data / MOBILEFACENET_WEIGHTS)
    return net.eval()


@pytest.fixture(scope="session")
def mobilefacenet(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Pretrained MobileFaceNet exported to ONNX once per test session."""
    from eqface.export.onnx import export_onnx

    net = build_mobilefacenet(shared_data)
    spec = InferenceSpec(tuple(MOBILEFACENET.image_size), MOBILEFACENET.embedding_size)
    path = tmp_path_factory.mktemp("mobilefacenet") / "model.onnx"
    export_onnx(net, spec, path)
    return ExportedModel(net, path, spec)


@pytest.fixture(scope="session")
def faces(shared_data: Path) -> list[bytes]:
    """The first 64 JPEG files of the CelebA pack (real, ArcFace-aligned 112×112 faces)."""
    from eqface.data.packs import load_pack

    source = load_pack(shared_data / FACE_PACK)
    return [source.read(i) for i in range(64)]
