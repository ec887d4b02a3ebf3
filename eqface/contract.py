"""The one inference contract shared by the model, the ONNX export, the Triton configs and the services.

Every place that names a tensor, a shape or a normalisation constant imports it from here; a test checks that the
exported ONNX file and both Triton model configurations agree with these constants. ``preprocess`` is the one way a
decoded image becomes the model's input (training, evaluation, export parity, the service, Triton's ``preprocess``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

INPUT_NAME = "input"
EMBEDDING_NAME = "embedding"
QUALITY_NAME = "quality"
IMAGE_BYTES_NAME = "image"  # bytes-in entry point: one encoded JPEG/PNG per batch item
# Per-item shape of IMAGE_BYTES_NAME (batch axis excluded): a request carries object/bytes [N, 1], one image per row.
IMAGE_BYTES_SHAPE = (1,)

INPUT_DTYPE = np.float32
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

# Aggregation thresholds calibrated for one model at export (``eqface.eval.calibration``). The same names are the
# keys of the ONNX file's metadata_props and of the parameters in its Triton model configs, where the aggregation
# service reads them (``eqface.aggregation.Thresholds``). Values are decimal strings; CALIBRATION_KEY holds a JSON
# description of how they were derived (rule, FMR, calibration set).
F_TH_KEY = "eqface_f_th"  # progressive QWFA similarity gate (Eq. 8-9)
S_TH_KEY = "eqface_s_th"  # progressive QWFA quality gate (Eq. 8-9)
QWFAF_S_TH_KEY = "eqface_qwfaf_s_th"  # QWFAF's quality filter
CALIBRATION_KEY = "eqface_calibration"
THRESHOLD_KEYS = (F_TH_KEY, S_TH_KEY, QWFAF_S_TH_KEY)
# Numeric precision of the served file ("int8" for ``eqface.export.quantize`` output; absent means fp32): a key of the
# ONNX metadata_props and a parameter of its Triton model config.
PRECISION_KEY = "eqface_precision"
PRECISIONS = ("fp32", "int8")


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


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Decoded images (uint8 [H, W, 3], or [H, W] grey) → the model input float32 [N, 3, *size].

    Each image is fitted with ``fit_to_size`` (centre crop to the model's aspect, then a bilinear resize), then
    normalised with ``normalize_pixels``. Training fits the same way (``eqface.data.dataset.AugmentedFaces``; its
    augmentation runs between the two steps), so a face fed to a deployed model is framed as during training: a
    plain resize would squeeze a 112×112 ArcFace crop into 112×96 instead of cutting the 96-wide template out of it.
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    return normalize_pixels(np.stack([fit_to_size(image, size) for image in images]))


def normalize_pixels(images_uint8: np.ndarray) -> np.ndarray:
    """Maps uint8 RGB images [N, H, W, 3] to the model input float32 [N, 3, H, W]: (x − PIXEL_MEAN) / PIXEL_SCALE."""
    x = images_uint8.astype(INPUT_DTYPE)
    x = (x - PIXEL_MEAN) / PIXEL_SCALE
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def fit_to_size(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crops to the target aspect, then resizes (bilinear) to ``size`` = (height, width); RGB uint8 out.

    An ArcFace-aligned 112×112 crop fitted to 112×96 loses 8 px per side, which is exactly the 96-wide alignment
    template that MobileFaceNet/SphereFace models were trained on.
    """
    img = to_rgb(img)
    if img.shape[:2] == tuple(size):
        return img
    img = center_crop_to_aspect(img, size)
    if img.shape[:2] == tuple(size):
        return np.ascontiguousarray(img)
    # Pillow is imported where it resizes: the training code imports this module's constants on machines that
    # have only torch and numpy (bench/gpu_check.sh on a bare GPU host).
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size[1], size[0]), Image.BILINEAR))


def center_crop_to_aspect(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crops the centre of ``img`` to the aspect ratio of ``size`` = (height, width)."""
    h, w = img.shape[:2]
    th, tw = size
    if h * tw > w * th:  # too tall
        new_h = max(1, round(w * th / tw))
        top = (h - new_h) // 2
        return img[top : top + new_h]
    new_w = max(1, round(h * tw / th))
    left = (w - new_w) // 2
    return img[:, left : left + new_w]


def to_rgb(img: np.ndarray) -> np.ndarray:
    """Grayscale [H, W] or [H, W, 1] → RGB [H, W, 3]; RGB passes through; RGBA drops alpha (the model sees RGB)."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[:, :, :3]
    raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {img.shape}")
