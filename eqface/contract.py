"""The one inference contract shared by the model, the ONNX export, the Triton configs and the services.

Every place that names a tensor, a shape or a normalisation constant imports it from here; a test checks that the
exported ONNX file and both Triton model configurations agree with these constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_NAME = "input"
EMBEDDING_NAME = "embedding"
QUALITY_NAME = "quality"
IMAGE_BYTES_NAME = "image"  # bytes-in entry point: one encoded JPEG/PNG per batch item
# Per-item shape of IMAGE_BYTES_NAME (batch axis excluded): a request carries object/bytes [N, 1], one image per row.
IMAGE_BYTES_SHAPE = (1,)

INPUT_DTYPE = np.float32
OUTPUT_DTYPE = np.float32
TRITON_FLOAT = "TYPE_FP32"
TRITON_BYTES = "TYPE_STRING"

DEFAULT_IMAGE_SIZE = (112, 112)  # (height, width)
DEFAULT_EMBEDDING_SIZE = 512
CHANNELS = 3  # RGB

PIXEL_MEAN = 127.5
PIXEL_SCALE = 128.0

ONNX_MODEL_NAME = "eqface_onnx"  # tensor in, (embedding, quality) out
PREPROCESS_MODEL_NAME = "preprocess"  # encoded image bytes in, normalised tensor out
ENSEMBLE_MODEL_NAME = "eqface"  # encoded image bytes in, (embedding, quality) out


@dataclass(frozen=True)
class InferenceSpec:
    """Shapes of one deployed model: per-item shapes (batch axis excluded), as Triton declares them."""

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    embedding_size: int = DEFAULT_EMBEDDING_SIZE

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (CHANNELS, *self.image_size)

    @property
    def image_bytes_shape(self) -> tuple[int]:
        return IMAGE_BYTES_SHAPE

    @property
    def embedding_shape(self) -> tuple[int]:
        return (self.embedding_size,)

    @property
    def quality_shape(self) -> tuple[int]:
        return (1,)


def normalize_pixels(images_uint8: np.ndarray) -> np.ndarray:
    """Maps uint8 RGB images [N, H, W, 3] to the model input float32 [N, 3, H, W]."""
    x = images_uint8.astype(np.float32)
    x = (x - PIXEL_MEAN) / PIXEL_SCALE
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
