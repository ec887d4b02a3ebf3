"""The backbone interface and registry shared by every face-recognition backbone.

A backbone splits its forward pass in two so the quality branch can read the pre-pooling feature map:
``forward_features(x)`` → feature map [N, C, h, w]; ``forward_head(fmap)`` → unnormalised embedding [N, D].
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from eqface.registry import Registry


class Backbone(nn.Module, abc.ABC):
    """Base class: subclasses set ``feature_shape`` (C, h, w) and ``embedding_size``, name the modules of
    ``forward_head`` in ``head_modules`` and implement both halves."""

    feature_shape: tuple[int, int, int]
    embedding_size: int
    head_modules: tuple[str, ...]

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-pooling feature map [N, C, h, w]: the quality branch's input."""

    @abc.abstractmethod
    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Unnormalised embedding [N, D] from the feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def head(self) -> list[nn.Module]:
        """The modules of ``forward_head``: what learns when only the embedding head is trained."""
        return [getattr(self, name) for name in self.head_modules]

    @property
    def feature_dim(self) -> int:
        c, h, w = self.feature_shape
        return c * h * w


BACKBONES: Registry[Backbone] = Registry("backbone")


def reduced_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Spatial size after a stack of stride-2 stages with 'same' padding (ceil division)."""
    h, w = image_size
    return (-(-h // stride), -(-w // stride))


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal convolutions and unit BatchNorm, as insightface initialises IResNet."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.constant_(m.weight, 1.0)
            nn.init.constant_(m.bias, 0.0)
