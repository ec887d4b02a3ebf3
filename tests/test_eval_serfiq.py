"""SER-FIQ: the formula on hand-computed embeddings, and the dropout sampler on a real backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from eqface.eval.serfiq import serfiq_quality
from eqface.models.backbone import BACKBONES
from eqface.models.stochastic import stochastic_embeddings


def test_identical_passes_give_quality_one() -> None:
    x = np.tile(np.array([[[1.0, 0.0, 0.0]]]), (2, 5, 1))
    np.testing.assert_allclose(serfiq_quality(x), [1.0, 1.0])


def test_hand_computed_two_passes() -> None:
    # two orthogonal unit vectors: one pair, distance sqrt(2); q = 2·σ(−2/4·sqrt(2))
    x = np.array([[[1.0, 0.0], [0.0, 3.0]]])
    expected = 2 / (1 + math.exp(2 * math.sqrt(2) / 4))
    np.testing.assert_allclose(serfiq_quality(x), [expected])


def test_scattered_embeddings_score_lower() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    tight = centre + 0.05 * rng.normal(size=(10, 64))
    loose = centre + 1.0 * rng.normal(size=(10, 64))
    quality = serfiq_quality(np.stack([tight, loose]))
    assert quality[0] > quality[1]


@pytest.mark.parametrize("shape", [(4, 1, 8), (4, 8), (0, 3)])
def test_rejects_bad_shapes(shape) -> None:
    with pytest.raises(ValueError):
        serfiq_quality(np.zeros(shape))


def test_stochastic_embeddings_vary_per_pass_and_repeat_with_the_seed() -> None:
    torch.manual_seed(0)
    backbone = BACKBONES.create("tiny", embedding_size=16, image_size=(32, 32))
    x = torch.randn(3, 3, 32, 32)
    a = stochastic_embeddings(backbone, x, passes=6, generator=torch.Generator().manual_seed(1))
    b = stochastic_embeddings(backbone, x, passes=6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 6, 16)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[:, 0], a[:, 1])
    torch.testing.assert_close(a.norm(dim=2), torch.ones(3, 6))
    assert backbone.training  # the caller's mode is restored
