"""Helpers for tests that feed real faces: the pack they come from and training's own preprocessing."""

from __future__ import annotations

import numpy as np

from eqface import contract
from eqface.data.image_ops import decode_image, fit_to_size

FACE_PACK = "celeba_wild_subset_rgb112.npz"


def preprocess_like_training(jpegs: list[bytes], image_size: tuple[int, int]) -> np.ndarray:
    """What training feeds the network for these files: decode, fit to size, normalise (float32 [N, 3, H, W])."""
    return contract.normalize_pixels(np.stack([fit_to_size(decode_image(b), image_size) for b in jpegs]))
