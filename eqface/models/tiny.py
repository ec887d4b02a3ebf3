"""A tiny backbone for fast tests and the CPU demo: four stride-2 conv stages, then IResNet's head."""

from __future__ import annotations

import torch
from torch import nn

from eqface.models.backbone import BACKBONES, Backbone, init_conv_bn, reduced_size


def _stage(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 2, 1, bias=False), nn.BatchNorm2d(oup), nn.PReLU(oup))


class TinyNet(Backbone):
    head_modules = ("dropout", "fc", "features")

    def __init__(
        self,
        embedding_size: int = 128,
        image_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
        widths: tuple[int, ...] = (16, 32, 64, 64),
    ) -> None:
        super().__init__()
        chans = (3, *widths)
        self.stages = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.refine = nn.Sequential(nn.Conv2d(widths[-1], widths[-1], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[-1]))
        self.feature_shape = (widths[-1], *reduced_size(image_size, 2 ** len(widths)))
        self.embedding_size = embedding_size
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.feature_dim, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(self.stages(x))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(torch.flatten(fmap, 1))))


@BACKBONES.register("tiny")
def tiny(embedding_size: int = 128, image_size: tuple[int, int] = (112, 112), dropout: float = 0.0) -> TinyNet:
    return TinyNet(embedding_size=embedding_size, image_size=image_size, dropout=dropout)
