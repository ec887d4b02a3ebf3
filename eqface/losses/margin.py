"""Eq. 6: the combined-margin softmax with a per-sample quality s_i in [0, 1] scaling the logits.

target logit = s_i·S·(m1·cos(θ_y + m2) − m3), other logits = s_i·S·cos θ_j. With s_i = 1 this is the combined
(ArcFace/CosFace/SphereFace) margin loss, Eq. 3; with s_i = 0 every logit is 0 and the loss is log(n_classes).

Beyond θ_y + m2 > π, cos(θ_y + m2) would start *rising* again and reward a worse angle. There the target term
continues linearly in cos θ instead: m1·(cos θ − (1 − cos m2)) − m3, which meets the margin curve at θ = π − m2
(both equal −m1 − m3) and keeps decreasing in θ. sin θ is computed as sqrt(max(1 − cos² θ, ε)) so that no gradient
is infinite at cos θ = ±1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eqface.config import MarginConfig

_SIN_SQ_MIN = 1e-12  # keeps d sin θ / d cos θ finite at cos θ = ±1


class NormalizedClassifier(nn.Module):
    """Class weights W [C, D] used only through cos θ_j = ŵ_j · f̂ (no bias), as in ArcFace."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))


class CombinedMarginLoss(nn.Module):
    def __init__(self, cfg: MarginConfig) -> None:
        super().__init__()
        if not (0.0 <= cfg.m2 < math.pi):
            raise ValueError(f"m2 must be in [0, π), got {cfg.m2}")
        self.m1, self.m2, self.m3, self.scale = cfg.m1, cfg.m2, cfg.m3, cfg.scale
        self._cos_m2, self._sin_m2 = math.cos(cfg.m2), math.sin(cfg.m2)

    def target_logit(self, cos_theta: torch.Tensor) -> torch.Tensor:
        """m1·cos(θ + m2) − m3 for θ + m2 ≤ π, and its monotone linear continuation beyond."""
        sin_theta = torch.sqrt((1.0 - cos_theta * cos_theta).clamp_min(_SIN_SQ_MIN))
        with_margin = cos_theta * self._cos_m2 - sin_theta * self._sin_m2
        beyond_pi = cos_theta - (1.0 - self._cos_m2)
        inside = cos_theta > -self._cos_m2  # θ < π − m2
        return self.m1 * torch.where(inside, with_margin, beyond_pi) - self.m3

    def logits(self, cos: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None = None) -> torch.Tensor:
        """The scaled logits [N, C]; ``quality`` [N] or [N, 1] (None means s_i = 1)."""
        target = self.target_logit(cos.gather(1, labels[:, None]))
        logits = cos.scatter(1, labels[:, None], target)
        scale = self.scale if quality is None else self.scale * quality.reshape(-1, 1)
        return logits * scale

    def forward(
        self, cos: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None = None, reduction: str = "mean"
    ) -> torch.Tensor:
        return F.cross_entropy(self.logits(cos, labels, quality), labels, reduction=reduction)
