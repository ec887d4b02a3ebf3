"""``contract.preprocess``: decoded images → the model input, with values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eqface import contract


def test_normalisation_and_layout_by_hand() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (0, 128, 255)  # R, G, B of the top-left pixel
    image[1, 1] = (255, 255, 255)
    x = contract.preprocess([image], (2, 2))
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32 and x.flags.c_contiguous
    # (v − 127.5) / 128: 0 → −0.99609375, 128 → 0.00390625, 255 → 0.99609375
    np.testing.assert_array_equal(x[0, :, 0, 0], [-0.99609375, 0.00390625, 0.99609375])
    np.testing.assert_array_equal(x[0, :, 1, 1], [0.99609375] * 3)
    np.testing.assert_array_equal(x[0, :, 0, 1], [-0.99609375] * 3)


def test_fit_crops_the_centre_to_the_aspect_before_resizing() -> None:
    # a 2×4 image fitted to 2×2 keeps columns 1 and 2 (a plain resize would average neighbouring columns)
    image = np.array([[10, 20, 30, 40], [50, 60, 70, 80]], np.uint8)
    x = contract.preprocess([image], (2, 2))  # grey in, three equal channels out
    expected = (np.array([[20, 30], [60, 70]], np.float32) - 127.5) / 128
    for channel in range(3):
        np.testing.assert_array_equal(x[0, channel], expected)
    # a 4×2 image (too tall) fitted to 2×2 keeps rows 1 and 2
    np.testing.assert_array_equal(contract.fit_to_size(image.T, (2, 2))[:, :, 0], [[20, 60], [30, 70]])


def test_arcface_112_crop_fits_the_96_wide_template() -> None:
    img = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(contract.fit_to_size(img, (112, 96)), img[:, 8:104])
    x = contract.preprocess([img, img], (112, 96))
    np.testing.assert_array_equal(x[1], contract.normalize_pixels(img[None, :, 8:104])[0])


def test_resize_after_the_crop() -> None:
    # 8×4: bright bands in rows 0-1 and 6-7, flat 100 in rows 2-5. The crop to a square keeps rows 2..5 only, so the
    # 2×2 resize sees flat 100; a resize without the crop would mix the bands in.
    img = np.full((8, 4, 3), 255, np.uint8)
    img[2:6] = 100
    np.testing.assert_array_equal(contract.fit_to_size(img, (2, 2)), np.full((2, 2, 3), 100, np.uint8))
    assert contract.fit_to_size(img, (4, 2)).shape == (4, 2, 3)  # same aspect: a plain bilinear resize


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="at least one image"):
        contract.preprocess([], (112, 112))
    with pytest.raises(ValueError, match="expected an image"):
        contract.preprocess([np.zeros((4, 4, 2), np.uint8)], (4, 4))
