"""Decoding and checking encoded face images (JPEG/PNG) before they go to Triton.

Every image is decoded here, even when Triton decodes it again (bytes mode): one corrupt image must be answered
INVALID_ARGUMENT on its own frame instead of failing the whole Triton batch it would share with other streams.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from eqface.contract import normalize_pixels
from eqface.data.image_ops import fit_to_size
from eqface.service.errors import InvalidArgument

_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Encoded JPEG/PNG bytes → RGB uint8 [H, W, 3]; InvalidArgument for empty, oversized or unreadable data."""
    if not data:
        raise InvalidArgument("image is empty")
    if len(data) > limits.max_bytes:
        raise InvalidArgument(f"image has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_FORMATS) as image:
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise InvalidArgument(f"image is {width}x{height}; the limit is {limits.max_pixels} pixels")
                rgb = image.convert("RGB")  # forces the full decode: truncated data fails here
    except InvalidArgument:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"image is not a readable JPEG or PNG ({type(exc).__name__}: {exc})") from None
    except Image.DecompressionBombWarning as exc:
        raise InvalidArgument(f"image is too large to decode safely: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)


def to_model_input(images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 images → the contract's model input float32 [N, 3, H, W].

    Geometry is training's own ``fit_to_size`` (the same function Triton's ``preprocess`` model uses), so tensor mode
    and bytes mode feed the network identical pixels.
    """
    return normalize_pixels(np.stack([fit_to_size(image, size) for image in images]))
