"""The quality branch: [1×1 conv →] FC → BN → ReLU → FC → sigmoid, giving s_i in [0, 1] (paper §3.4).

Input: the backbone's *pre-pooling* feature map (``Backbone.forward_features``), as the official EQFace code does. The
embedding itself is a poor input: it is trained to be invariant to blur, lighting and occlusion and is then
L2-normalised, so exactly the nuisance information that decides quality has been removed from it; the spatial map still
says where the face is dark, occluded or smeared.

The official code flattens the whole map into the first FC. On MobileFaceNet that FC is 21,504 → 512: 11 M parameters,
ten times the backbone, fitted on a few thousand faces in the small presets. ``reduced_channels`` > 0 first mixes the
channels with a 1×1 convolution (+ BN + ReLU), which keeps the spatial layout (where the face is dark or smeared) and
shrinks that FC by C / reduced_channels.
"""

from __future__ import annotations

import torch
from torch import nn


class QualityHead(nn.Module):
    def __init__(self, in_features: int, hidden: int = 512, channels: int = 0, reduced_channels: int = 0) -> None:
        """``in_features`` = C·h·w of the flattened map; ``channels`` = C, needed only when ``reduced_channels`` > 0."""
        super().__init__()
        self.reduce: nn.Sequential | None = None
        if reduced_channels > 0:
            if channels <= 0 or in_features % channels:
                raise ValueError(
                    f"a reduced quality head needs the map's channels (C = {channels}, C·h·w = {in_features})"
                )
            self.reduce = nn.Sequential(
                nn.Conv2d(channels, reduced_channels, 1, bias=False),
                nn.BatchNorm2d(reduced_channels),
                nn.ReLU(inplace=True),
            )
            in_features = in_features // channels * reduced_channels
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        # Start near s = 0.5 with small logits so Step 2 can move every sample either way.
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Quality [N, 1] in [0, 1] from the feature map [N, C, h, w] (or already flat [N, C·h·w] without reduction).

        Always fp32, also inside a bf16/fp16 autocast region (mixed-precision training): the sigmoid saturates towards
        1 and bf16's 8 significant bits would round every s_i above ≈ 0.998 to exactly 1 (Eq. 6 then multiplies the
        rounding error by S = 64). The check keeps the exported graph free of autocast nodes (export runs without it).
        """
        if torch.is_autocast_enabled(fmap.device.type):
            with torch.autocast(fmap.device.type, enabled=False):
                return self._forward(fmap.float())
        return self._forward(fmap)

    def _forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.reduce is not None:
            fmap = self.reduce(fmap)
        hidden = torch.relu(self.bn(self.fc1(torch.flatten(fmap, 1))))
        return torch.sigmoid(self.fc2(hidden))
