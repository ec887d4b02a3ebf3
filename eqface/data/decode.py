"""The one image decoder: encoded bytes → RGB uint8 [H, W, 3], within explicit limits, with one error type.

Every reader of encoded images goes through ``decode_image``: training data, verification packs, the aggregation
service, Triton's ``preprocess`` model, the camera's gallery photos. The service and the Triton model use the same
default ``ImageLimits``, so an image one of them accepts the other accepts too.

The pixel count is checked from the header, before any pixel is decoded. Pillow's own decompression-bomb check
(``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide global that warns through ``warnings``) is not used: the format
plugin reads the header directly, so nothing global is read-modified-written and no warning filter is touched
(``warnings.catch_warnings`` is not thread-safe, and the service decodes in a thread pool).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

MiB = 1 << 20


class ImageDecodeError(ValueError):
    """Encoded image data that is empty, too large, of a format not allowed, or unreadable; the message names its
    source (a file, a record, a request's image)."""


@dataclass(frozen=True)
class ImageLimits:
    """What ``decode_image`` accepts. The defaults are the serving limits (clients send JPEG or PNG face crops).

    Attributes:
        max_bytes: largest encoded size.
        max_pixels: largest width × height, checked from the header before decoding (a decompression bomb stops
            there). Pillow's own hard bound, 2 × ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 M), still applies to
            multi-frame formats (GIF, TIFF, WebP) that check each frame themselves.
        formats: Pillow format names tried, in order.
    """

    max_bytes: int = 4 * MiB
    max_pixels: int = 16_000_000
    formats: tuple[str, ...] = ("JPEG", "PNG")

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"image limits must be positive, got {self.max_bytes} bytes, {self.max_pixels} pixels")
        if not self.formats or any(not f or f != f.upper() for f in self.formats):
            raise ValueError(f"formats must be upper-case Pillow format names, got {self.formats!r}")


# Files an operator chose (training folders and packs, gallery photos): larger, and every format the image-folder
# reader lists (PGM is Pillow's PPM plugin, TIF its TIFF plugin).
FILE_LIMITS = ImageLimits(
    max_bytes=64 * MiB, max_pixels=64_000_000, formats=("JPEG", "PNG", "BMP", "PPM", "WEBP", "TIFF")
)


def decode_image(data: bytes, source: str = "image", limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decodes ``data`` to RGB uint8 [H, W, 3] (grayscale and palette images are expanded, alpha is dropped).

    Args:
        data: the encoded image.
        source: what the data is (a path, ``record 12``, ``image 3``); every error message starts with it.
        limits: the bytes, pixels and formats accepted.

    Raises:
        ImageDecodeError: empty data, more than ``limits.max_bytes``, a format outside ``limits.formats``, more than
            ``limits.max_pixels`` pixels, or truncated/corrupt data.
    """
    if not data:
        raise ImageDecodeError(f"{source}: empty image data")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(f"{source}: {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    image = _open_header(bytes(data), limits.formats, source)
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageDecodeError(f"{source}: {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
        try:
            rgb = image.convert("RGB")  # decodes every pixel: truncated or corrupt data fails here
        except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombWarning) as exc:
            # DecompressionBombError is a ValueError; the warning arrives as an exception only under -W error
            raise ImageDecodeError(
                f"{source}: cannot decode image (corrupt or truncated {image.format}: {exc})"
            ) from None
    return np.asarray(rgb, dtype=np.uint8)


def _open_header(data: bytes, formats: tuple[str, ...], source: str) -> ImageFile.ImageFile:
    """``PIL.Image.open`` restricted to ``formats``, without its global decompression-bomb check: the first plugin
    whose signature matches reads the header (size, mode); no pixel is decoded."""
    Image.init()  # registers every format plugin once (what Image.open does on demand)
    prefix, problem = data[:16], ""
    for name in formats:
        if name not in Image.OPEN:
            raise ValueError(f"Pillow has no {name!r} format; known: {', '.join(sorted(Image.OPEN))}")
        factory, accept = Image.OPEN[name]
        matched = True if accept is None else accept(prefix)
        if not matched or isinstance(matched, str):  # a str is Pillow's "looks like it, but unsupported" note
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError) as exc:
            problem = f": {name} header unreadable: {exc}"  # Image.open moves on to the next plugin the same way
    allowed = " or ".join([", ".join(formats[:-1]), formats[-1]] if len(formats) > 1 else formats)
    raise ImageDecodeError(f"{source}: cannot decode image (not a readable {allowed} image{problem})")
