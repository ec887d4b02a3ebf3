"""The quality branch: FC → BN → ReLU → FC → sigmoid, giving s_i in [0, 1] (paper §3.4).

Input: the backbone's flattened *pre-pooling* feature map (``Backbone.forward_features``), as the official EQFace code
does. The embedding itself is a poor input: it is trained to be invariant to blur, lighting and occlusion and is then
L2-normalised, so exactly the nuisance information that decides quality has been removed from it; the spatial map still
says where the face is dark, occluded or smeared.
"""

from __future__ import annotations

import torch
from torch import nn


class QualityHead(nn.Module):
    def __init__(self, in_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        # Start near s = 0.5 with small logits so Step 2 can move every sample either way.
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Quality [N, 1] in [0, 1] from the feature map [N, C, h, w]."""
        hidden = torch.relu(self.bn(self.fc1(torch.flatten(fmap, 1))))
        return torch.sigmoid(self.fc2(hidden))
