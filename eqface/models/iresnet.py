"""IResNet (ArcFace's improved ResNet: BN-Conv-BN-PReLU-Conv-BN blocks, stride-2 first block of each stage)."""

from __future__ import annotations

import torch
from torch import nn

from eqface.models.backbone import BACKBONES, Backbone, init_conv_bn, reduced_size


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(Backbone):
    """Stem (3×3 conv, stride 1) + four stride-2 stages (64, 128, 256, 512) + BN → flatten → FC → BN1d."""

    head_modules = ("dropout", "fc", "features")

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        embedding_size: int = 512,
        image_size: tuple[int, int] = (112, 112),
        dropout: float = 0.0,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        stages, inplanes = [], widths[0]
        for planes, blocks in zip(widths, layers):
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=1e-5)
        self.feature_shape = (widths[-1], *reduced_size(image_size, 16))
        self.embedding_size = embedding_size
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.feature_dim, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.dropout(torch.flatten(fmap, 1))))


_DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _register(name: str, layers: tuple[int, int, int, int]) -> None:
    @BACKBONES.register(name)
    def factory(embedding_size: int = 512, image_size: tuple[int, int] = (112, 112), dropout: float = 0.0) -> IResNet:
        return IResNet(layers, embedding_size=embedding_size, image_size=image_size, dropout=dropout)


for _name, _layers in _DEPTHS.items():
    _register(_name, _layers)
