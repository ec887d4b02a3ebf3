"""InputNormalisation: per-channel values, the contract → recogniser affine map, and the check's verdict."""

from __future__ import annotations

import numpy as np
import pytest

from eqface import contract
from eqface.byor.norm_check import NormalisationCheck, all_pairs_auc, alternatives_to
from eqface.byor.normalisation import InputNormalisation


def test_scalar_values_broadcast_and_bad_values_are_refused():
    n = InputNormalisation(mean=127.0, std=(128.0,))
    assert n.mean == (127.0,) * 3 and n.std == (128.0,) * 3
    with pytest.raises(ValueError, match="1 or 3 values"):
        InputNormalisation(mean=(1.0, 2.0))
    with pytest.raises(ValueError, match="must not be 0"):
        InputNormalisation(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="channel_order"):
        InputNormalisation(channel_order="RBG")


def test_apply_by_hand():
    pixel = np.array([[[[10, 20, 30]]]], dtype=np.uint8)  # one 1×1 RGB image
    rgb = InputNormalisation(mean=(0, 10, 20), std=(1, 2, 5)).apply(pixel)
    np.testing.assert_allclose(rgb.ravel(), [10, 5, 2])
    bgr = InputNormalisation(mean=(0, 10, 20), std=(1, 2, 5), channel_order="BGR").apply(pixel)
    np.testing.assert_allclose(bgr.ravel(), [30, 5, -2])  # B=30, G=(20-10)/2, R=(10-20)/5


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_contract_input_maps_exactly_onto_the_recogniser_input(order):
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    n = InputNormalisation(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), channel_order=order)
    c = contract.normalize_pixels(images)
    if n.flips_channels:
        c = c[:, ::-1]
    scale, bias = n.from_contract()
    np.testing.assert_allclose(c * scale[None, :, None, None] + bias[None, :, None, None], n.apply(images), atol=1e-5)


def test_flipped_reverses_the_per_channel_numbers():
    n = InputNormalisation(mean=(1, 2, 3), std=(4, 5, 6))
    assert n.flipped() == InputNormalisation(mean=(3, 2, 1), std=(6, 5, 4), channel_order="BGR")
    assert n.flipped().flipped() == n


def test_alternatives_hold_the_flip_and_never_the_stated_setting():
    stated = InputNormalisation(mean=127.0, std=128.0)
    alternatives = alternatives_to(stated)
    assert stated.flipped().describe() in alternatives
    assert stated.describe() not in alternatives
    assert "RGB, (x − 0) / 1" in alternatives  # raw pixels: the classic forgotten normalisation


def test_all_pairs_auc_by_hand():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    assert all_pairs_auc(emb, np.array([0, 0, 1])) == 1.0  # the one genuine pair has the highest cosine


def _check(stated: float, **alternatives: float) -> NormalisationCheck:
    return NormalisationCheck("stated", stated, dict(alternatives), 300, min_auc=0.9, max_deficit=0.02)


def test_verdict():
    assert _check(0.97, flip=0.965, other=0.985).failure is None  # within the margin: nearly invariant, passes
    assert "below 0.9" in _check(0.66, flip=0.62).failure
    message = _check(0.95, flip=0.975).failure
    assert "flip gives 0.9750" in message and "check --mean/--std/--bgr" in message
