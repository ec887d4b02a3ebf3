"""Variance-of-Laplacian sharpness on images small enough to convolve by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.eval.sharpness import laplacian_variance, sharpness_quality, to_grayscale


def test_constant_image_has_zero_sharpness() -> None:
    assert laplacian_variance(np.full((5, 4), 77, dtype=np.uint8)) == 0.0


def test_single_bright_pixel_hand_computed() -> None:
    # Laplacian with mirrored borders: centre 0·4 - 4·4 = -16, its 4 neighbours +4 +4 (mirror) = 8, corners 0.
    # mean = (-16 + 4·8)/9 = 16/9; E[x²] = (256 + 4·64)/9 = 512/9; var = 512/9 - 256/81 = 4352/81
    image = np.zeros((3, 3), dtype=np.uint8)
    image[1, 1] = 4
    assert laplacian_variance(image) == pytest.approx(4352 / 81)


def test_blur_lowers_sharpness() -> None:
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    blurred = np.full((8, 8), 128, dtype=np.uint8)
    assert laplacian_variance(checker) > laplacian_variance(blurred)


def test_to_grayscale_bt601() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    # 0.299·255 = 76.2, 0.587·255 = 149.7, 0.114·255 = 29.1 (PIL's "L" gives the same 76, 150, 29)
    np.testing.assert_array_equal(to_grayscale(rgb), [[76, 150, 29, 255]])


def test_sharpness_quality_batches_rgb_and_gray() -> None:
    gray = np.zeros((2, 3, 3), dtype=np.uint8)
    gray[1, 1, 1] = 4
    np.testing.assert_allclose(sharpness_quality(gray), [0.0, 4352 / 81])
    rgb = np.repeat(gray[..., None], 3, axis=-1)  # equal channels: gray level unchanged
    np.testing.assert_allclose(sharpness_quality(rgb), [0.0, 4352 / 81])


@pytest.mark.parametrize(
    "image",
    [np.zeros((3, 3), dtype=np.float32), np.zeros((2, 5), dtype=np.uint8), np.zeros((3, 3, 3), dtype=np.uint8)],
)
def test_laplacian_variance_rejects_bad_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="grayscale uint8"):
        laplacian_variance(image)


def test_batch_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="images"):
        sharpness_quality(np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        to_grayscale(np.zeros((1, 3, 3, 3), dtype=np.float64))
