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
