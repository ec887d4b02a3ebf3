"""Helpers for tests that feed real faces: the pack they come from and the contract's own preprocessing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from eqface import contract
from eqface.data.decode import decode_image

FACE_PACK = "celeba_wild_subset_rgb112.npz"


def preprocess_like_training(jpegs: list[bytes], image_size: tuple[int, int]) -> np.ndarray:
    """What the network is fed for these files: the one decoder, then ``contract.preprocess`` ([N, 3, H, W])."""
    return contract.preprocess([decode_image(b, f"image {i}") for i, b in enumerate(jpegs)], image_size)


def encoded(fmt: str, size: tuple[int, int] = (112, 112), mode: str = "RGB", noise: bool = False) -> bytes:
    """An image of ``size`` = (width, height) encoded as ``fmt``: flat grey, or noise (so a JPEG has a long scan)."""
    from PIL import Image

    if noise:
        pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(mode)
    else:
        image = Image.new(mode, size, color=120)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels but holds one tiny compressed row: a decompression bomb's
    shape, cheap to build, that a decoder must refuse from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def decode_cases() -> dict[str, tuple[bytes, str | None]]:
    """One set of encoded images, name → (data, None if the default ``ImageLimits`` accept it, else a fragment of the
    error). The decoder's unit tests and the service-vs-Triton comparison both run it."""
    jpeg = encoded("JPEG", noise=True)
    return {
        "jpeg": (jpeg, None),
        "png": (encoded("PNG"), None),
        "grey png": (encoded("PNG", mode="L"), None),
        "palette png": (encoded("PNG", mode="P"), None),
        "rgba png": (encoded("PNG", mode="RGBA"), None),
        "grey jpeg, not square": (encoded("JPEG", size=(90, 130), mode="L"), None),
        "empty": (b"", "empty image data"),
        "garbage": (b"not an image at all", "not a readable JPEG or PNG image"),
        "jpeg truncated in the header": (jpeg[:100], "cannot decode image"),
        "jpeg truncated in the scan": (jpeg[: len(jpeg) // 2], "truncated"),
        "png truncated": (encoded("PNG", noise=True)[:300], "cannot decode image"),
        "gif": (encoded("GIF"), "not a readable JPEG or PNG image"),
        "bmp": (encoded("BMP"), "not a readable JPEG or PNG image"),
        "more pixels than the limit": (encoded("PNG", size=(4001, 4000)), "4001x4000 pixels; the limit is 16000000"),
        "a bomb's header": (png_header_only(100_000, 100_000), "100000x100000 pixels"),
        "more bytes than the limit": (
            encoded("PNG", size=(1300, 1100), noise=True),
            "bytes; the limit is 4194304 bytes",
        ),
    }
