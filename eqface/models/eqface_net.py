"""EQFaceNet: backbone + quality branch behind the one inference contract ``forward(x) -> (embedding, quality)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqface.config import ModelConfig
from eqface.models.backbone import BACKBONES, Backbone
from eqface.models.quality import QualityHead


class EQFaceNet(nn.Module):
    """``forward`` returns the L2-normalised embedding [N, D] and the quality [N, 1], as exported and served."""

    def __init__(self, backbone: Backbone, quality_hidden: int = 512, quality_reduce: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.quality = QualityHead(backbone.feature_dim, quality_hidden, backbone.feature_shape[0], quality_reduce)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.backbone.forward_features(x)
        embedding = F.normalize(self.backbone.forward_head(fmap), dim=1)
        return embedding, self.quality(fmap)

    def embed_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised embedding and the feature map, for training code that needs both."""
        fmap = self.backbone.forward_features(x)
        return self.backbone.forward_head(fmap), fmap


def build_model(cfg: ModelConfig) -> EQFaceNet:
    """Creates the network for a model config (unknown backbone names raise ValueError listing valid ones)."""
    backbone = BACKBONES.create(
        cfg.backbone, embedding_size=cfg.embedding_size, image_size=tuple(cfg.image_size), dropout=cfg.dropout
    )
    return EQFaceNet(backbone, cfg.quality_hidden, cfg.quality_reduce)
