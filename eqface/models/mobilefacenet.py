"""MobileFaceNet (Chen et al. 2018), laid out exactly as Xiaoccer/MobileFaceNet_Pytorch so its weights load by name."""

from __future__ import annotations

import torch
from torch import nn

from eqface.models.backbone import BACKBONES, Backbone, init_conv_bn, reduced_size

# (expansion t, channels c, repeats n, first stride s)
BOTTLENECK_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBlock(nn.Module):
    def __init__(
        self, inp: int, oup: int, k: int | tuple[int, int], s: int, p: int, dw: bool = False, linear: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        self.prelu = None if linear else nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class Bottleneck(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.connect else out


class MobileFaceNet(Backbone):
    """Features: conv 3×3 s2 → dw 3×3 → bottlenecks → 1×1 conv 512; head: global depthwise conv → 1×1 linear."""

    head_modules = ("linear7", "linear1")

    def __init__(self, embedding_size: int = 128, image_size: tuple[int, int] = (112, 96)) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, dw=True)
        blocks, inplanes = [], 64
        for t, c, n, s in BOTTLENECK_SETTING:
            for i in range(n):
                blocks.append(Bottleneck(inplanes, c, s if i == 0 else 1, t))
                inplanes = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(128, 512, 1, 1, 0)
        self.feature_shape = (512, *reduced_size(image_size, 16))
        self.embedding_size = embedding_size
        self.linear7 = ConvBlock(512, 512, self.feature_shape[1:], 1, 0, dw=True, linear=True)
        self.linear1 = ConvBlock(512, embedding_size, 1, 1, 0, linear=True)
        init_conv_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.blocks(self.dw_conv1(self.conv1(x))))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.linear1(self.linear7(fmap)), 1)


@BACKBONES.register("mobilefacenet")
def mobilefacenet(
    embedding_size: int = 128, image_size: tuple[int, int] = (112, 96), dropout: float = 0.0
) -> MobileFaceNet:
    return MobileFaceNet(embedding_size=embedding_size, image_size=image_size)
