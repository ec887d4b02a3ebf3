"""The one image decoder: what it accepts and refuses, the message naming the source, and no global side effects."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from eqface.data.decode import FILE_LIMITS, ImageDecodeError, ImageLimits, decode_image
from eqface.service.config import ServiceConfig
from tests.support.images import decode_cases, encoded, png_header_only

CASES = decode_cases()


@pytest.mark.parametrize("name", CASES)
def test_each_case_is_accepted_or_refused_with_a_message_naming_its_source(name: str) -> None:
    data, error = CASES[name]
    if error is None:
        rgb = decode_image(data, f"case {name}")
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        return
    with pytest.raises(ImageDecodeError, match=f"^case {name}: ") as info:
        decode_image(data, f"case {name}")
    assert error in str(info.value)
    assert isinstance(info.value, ValueError)


def test_pixels_survive_decoding() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), rgb)
    grey = decode_image(encoded("PNG", size=(3, 2), mode="L"))  # flat 120 grey, expanded to RGB
    np.testing.assert_array_equal(grey, np.full((2, 3, 3), 120, np.uint8))


def test_decoding_changes_no_global_and_warns_nothing() -> None:
    pillow_limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_image(CASES["jpeg"][0])
        for data in (png_header_only(20_000, 20_000), png_header_only(100_000, 100_000)):  # above Pillow's bounds
            with pytest.raises(ImageDecodeError, match="pixels; the limit is"):
                decode_image(data)
    assert caught == []  # Pillow's DecompressionBombWarning is never raised: the header check comes first
    assert Image.MAX_IMAGE_PIXELS == pillow_limit and warnings.filters == filters


def test_limits_are_explicit_and_checked() -> None:
    png = encoded("PNG", size=(20, 10))
    assert decode_image(png, limits=ImageLimits(max_bytes=len(png), max_pixels=200)).shape == (10, 20, 3)
    with pytest.raises(ImageDecodeError, match=f"{len(png)} bytes; the limit is {len(png) - 1} bytes"):
        decode_image(png, limits=ImageLimits(max_bytes=len(png) - 1))
    with pytest.raises(ImageDecodeError, match="20x10 pixels; the limit is 199 pixels"):
        decode_image(png, limits=ImageLimits(max_pixels=199))
    with pytest.raises(ImageDecodeError, match="not a readable JPEG image"):
        decode_image(png, limits=ImageLimits(formats=("JPEG",)))
    assert decode_image(encoded("BMP"), "photo.bmp", FILE_LIMITS).shape == (112, 112, 3)
    assert decode_image(encoded("TIFF"), "scan.tif", FILE_LIMITS).shape == (112, 112, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ImageLimits().max_bytes = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError, match="upper-case"):
        ImageLimits(formats=("jpeg",))
    with pytest.raises(ValueError, match="no 'NOPE' format"):
        decode_image(png, limits=ImageLimits(formats=("NOPE",)))


def test_the_service_defaults_are_the_decoders_defaults() -> None:
    """Triton's preprocess model decodes with ``ImageLimits()``; the service with its config's limits: the same."""
    config, limits = ServiceConfig(), ImageLimits()
    assert (config.max_image_bytes, config.max_image_pixels) == (limits.max_bytes, limits.max_pixels)
