"""Held-out degradation families: each changes the image the way it says, deterministically, and none of them is a
family that the training code generates."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from eqface.data import augment, synthetic
from eqface.eval import conditions
from eqface.eval.sharpness import laplacian_variance


@pytest.fixture
def face() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:112]
    img = (128 + 60 * np.sin(xx / 5.0) * np.cos(yy / 7.0))[..., None] + rng.normal(0, 8, (112, 112, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("family", sorted(conditions.FAMILIES))
def test_family_is_deterministic_and_changes_the_image(face, family) -> None:
    a = conditions.apply(face, family, np.random.default_rng(5))
    b = conditions.apply(face, family, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == face.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - face.astype(int)).mean() > 2


@pytest.mark.parametrize("family", ["jpeg", "motion_blur", "rescale"])
def test_detail_destroying_families_lower_sharpness(face, family) -> None:
    out = conditions.apply(face, family, np.random.default_rng(1))
    assert laplacian_variance(out.mean(axis=2).astype(np.uint8)) < laplacian_variance(
        face.mean(axis=2).astype(np.uint8)
    )


def test_motion_kernel_is_a_normalised_line() -> None:
    k = conditions.motion_kernel(9, 0.0)
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1.0)
    assert np.count_nonzero(k[4]) == 9 and np.count_nonzero(k) == 9  # horizontal: the centre row only
    vertical = conditions.motion_kernel(9, 90.0)
    assert np.count_nonzero(vertical[:, 4]) == 9


def test_misalign_moves_the_content(face) -> None:
    out = conditions.misalign(face, np.random.default_rng(2))
    centre = (slice(40, 72), slice(40, 72))
    assert np.abs(out[centre].astype(int) - face[centre].astype(int)).mean() > 5


def test_no_family_is_a_training_degradation() -> None:
    assert not set(conditions.FAMILIES) & set(augment.DEGRADATIONS)
    training_source = inspect.getsource(augment) + inspect.getsource(synthetic)
    for marker in ("JPEG", "LANCZOS", "affine_transform", "motion"):
        assert marker not in training_source, f"training code now uses {marker}: the held-out families overlap it"


def test_unknown_family_and_bad_image() -> None:
    with pytest.raises(ValueError, match="valid: jpeg"):
        conditions.apply(np.zeros((4, 4, 3), np.uint8), "fog", np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8 RGB"):
        conditions.apply(np.zeros((4, 4), np.uint8), "jpeg", np.random.default_rng(0))
