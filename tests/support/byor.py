"""Helpers for the bring-your-own-recogniser tests: a small insightface-layout IResNet exported the way users do."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from eqface.models.iresnet import IResNet

# An insightface-layout IResNet (BN-Conv-BN-PReLU-Conv-BN blocks, BN → flatten → FC → BN1d head), narrow for speed.
TINY_IRESNET = {"layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "embedding_size": 32, "image_size": (112, 112)}
INPUT, OUTPUT = "data", "fc1"  # the names insightface's ArcFace ONNX files use


def tiny_iresnet(seed: int = 0) -> IResNet:
    torch.manual_seed(seed)
    net = IResNet(**TINY_IRESNET)
    # Non-trivial BatchNorm statistics, so that a wrong graph cannot pass by BN being the identity.
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def export_backbone(net: torch.nn.Module, path: Path, fixed_batch: bool = True) -> Path:
    """torch.onnx (dynamo) export of a bare backbone: input ``data`` → raw embedding ``fc1``, batch fixed at 1."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = torch.zeros(1 if fixed_batch else 2, 3, 112, 112)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=None if fixed_batch else ({0: torch.export.Dim("batch", min=1)},),
        )
    return path


def graft_photo_analyze(shared_data: Path, images, folder: Path):
    """The shared pretrained MobileFaceNet (opset 11) imported with its documented normalisation (check off: tested in
    test_byor_import) and grafted with a seeded quality head; returns (served.onnx, the head)."""
    from eqface.byor.export import export_grafted
    from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
    from eqface.byor.normalisation import InputNormalisation
    from eqface.byor.quality_training import save_head
    from eqface.byor.step2 import HEAD_FILE, STEP2_DIR
    from eqface.models.quality import QualityHead

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
    export_grafted(folder, folder / "served.onnx", images)
    return folder / "served.onnx", head
