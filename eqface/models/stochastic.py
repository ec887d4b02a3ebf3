"""Stochastic forward passes for SER-FIQ: dropout on the backbone's feature map, the embedding head run m times."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from eqface.models.backbone import Backbone

DEFAULT_PASSES = 100
DEFAULT_DROPOUT = 0.5  # SER-FIQ's setting


@torch.no_grad()
def stochastic_embeddings(
    backbone: Backbone,
    x: torch.Tensor,
    passes: int = DEFAULT_PASSES,
    p: float = DEFAULT_DROPOUT,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Embeddings [N, passes, D] of images [N, 3, H, W], each pass with its own dropout mask on the feature map.

    The feature map is computed once (deterministically, in eval mode); only the head — the layers SER-FIQ perturbs,
    the ones after the last spatial map — runs ``passes`` times. The masks come from ``generator`` so a run repeats.
    """
    if passes < 2 or not 0 < p < 1:
        raise ValueError(f"need passes >= 2 and 0 < p < 1, got passes={passes}, p={p}")
    was_training = backbone.training
    backbone.eval()
    try:
        fmap = backbone.forward_features(x)
        outputs = []
        for _ in range(passes):
            keep = torch.rand(fmap.shape, generator=generator, device=fmap.device) >= p
            outputs.append(F.normalize(backbone.forward_head(fmap * keep / (1 - p)), dim=1))
        return torch.stack(outputs, dim=1)
    finally:
        backbone.train(was_training)
