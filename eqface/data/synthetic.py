"""A built-in synthetic face generator, so the main job and the tests run on a machine with no face data.

Each identity is a drawn face (skin tone, head shape, eye/brow/mouth geometry, a smooth texture) on a smooth
background; each sample jitters pose and exposure, and a chosen fraction gets one realistic degradation of known
strength (``extras['degradation']``: 0 for clean samples), which gives a ground truth for the quality score.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from eqface.config import SyntheticConfig
from eqface.data.augment import DEGRADATIONS, degrade
from eqface.data.sources import ArraySource

SKIN_TONES = np.array([[235, 195, 170], [205, 150, 120], [160, 110, 80], [110, 75, 55]], dtype=np.float64)
IRIS_COLOURS = np.array([[60, 40, 20], [40, 90, 140], [70, 110, 60]], dtype=np.uint8)


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], grid: int, channels: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, size=(grid, grid, channels)).astype(np.uint8)
    img = Image.fromarray(coarse.squeeze() if channels == 1 else coarse)
    return np.asarray(img.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32)


def identity_prototype(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Draws one identity's canonical face, uint8 RGBA [H, W, 4] (alpha: the head; the background varies per sample)."""
    h, w = size
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    # Colours are shared across identities (a few skin tones) so identity lives in geometry and fine detail, which
    # blur, low resolution and noise destroy: that is what makes the degradations matter for recognition.
    skin = tuple(int(v) for v in SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-12, 12, size=3))
    hw, hh = rng.uniform(0.30, 0.42) * w, rng.uniform(0.38, 0.47) * h
    cx, cy = w / 2, h * rng.uniform(0.50, 0.56)
    draw.ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=skin)
    ImageDraw.Draw(mask).ellipse([cx - hw, cy - hh, cx + hw, cy + hh], fill=255)
    eye_dx, eye_y = rng.uniform(0.12, 0.2) * w, cy - rng.uniform(0.08, 0.18) * h
    eye_r = rng.uniform(0.035, 0.06) * w
    iris = tuple(int(v) for v in IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))])
    for sx in (-1, 1):
        ex = cx + sx * eye_dx
        draw.ellipse([ex - eye_r * 1.6, eye_y - eye_r, ex + eye_r * 1.6, eye_y + eye_r], fill=(245, 245, 245))
        draw.ellipse([ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r], fill=iris)
        brow_y = eye_y - rng.uniform(1.8, 3.0) * eye_r
        draw.line(
            [ex - 2 * eye_r, brow_y + sx * rng.uniform(-2, 2), ex + 2 * eye_r, brow_y], fill=(40, 30, 20), width=3
        )
    nose_len = rng.uniform(0.08, 0.16) * h
    draw.line([cx, eye_y + eye_r, cx + rng.uniform(-3, 3), eye_y + eye_r + nose_len], fill=(90, 60, 50), width=2)
    mouth_y, mouth_w = eye_y + eye_r + nose_len + rng.uniform(0.06, 0.12) * h, rng.uniform(0.12, 0.24) * w
    lips = tuple(int(v) for v in rng.uniform([120, 20, 30], [220, 90, 100]))
    draw.ellipse([cx - mouth_w, mouth_y - rng.uniform(2, 6), cx + mouth_w, mouth_y + rng.uniform(2, 8)], fill=lips)
    dot = max(1.0, 0.012 * w)
    for _ in range(rng.integers(6, 13)):  # moles/freckles: identity-specific fine detail
        px, py = cx + rng.uniform(-0.8, 0.8) * hw, cy + rng.uniform(-0.2, 0.8) * hh
        draw.ellipse([px - dot, py - dot, px + dot, py + dot], fill=(70, 45, 35))
    face = np.asarray(canvas, dtype=np.float32)
    texture = _smooth_field(rng, size, 10, 1)[:, :, None] - 128.0
    face = np.clip(face + 0.3 * texture, 0, 255).astype(np.uint8)
    return np.dstack([face, np.asarray(mask)])


def render_sample(proto: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One natural-looking view of an identity: small rotation/shift/scale, exposure change, sensor noise."""
    h, w = proto.shape[:2]
    background = _smooth_field(rng, (h, w), 3, 3) * 0.6 + 30
    alpha = proto[:, :, 3:4].astype(np.float32) / 255.0
    composed = (proto[:, :, :3] * alpha + background * (1 - alpha)).astype(np.uint8)
    angle = rng.uniform(-8, 8)
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, size=2) * (w, h)
    img = Image.fromarray(composed).rotate(
        angle, resample=Image.BILINEAR, translate=tuple(shift), fillcolor=(60, 60, 60)
    )
    if scale != 1.0:
        sw, sh = int(round(w * scale)), int(round(h * scale))
        img = img.resize((sw, sh), Image.BILINEAR)
        left, top = (sw - w) // 2, (sh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    cast = rng.uniform(0.85, 1.15) * rng.uniform(0.88, 1.12, size=3)  # exposure and white balance
    out = np.asarray(img, dtype=np.float32) * cast + rng.normal(0, 3.0, size=(h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def generate_synthetic(cfg: SyntheticConfig, image_size: tuple[int, int] = (112, 112), seed: int = 0) -> ArraySource:
    """Builds the whole synthetic set in memory (deterministic for a seed)."""
    if cfg.identities < 2 or cfg.images_per_identity < 2:
        raise ValueError("synthetic data needs at least 2 identities with at least 2 images each")
    rng = np.random.default_rng([seed, 0])
    protos = [identity_prototype(rng, image_size) for _ in range(cfg.identities)]
    n = cfg.identities * cfg.images_per_identity
    images = np.empty((n, *image_size, 3), dtype=np.uint8)
    strength = np.zeros(n, dtype=np.float32)
    kind = np.full(n, -1, dtype=np.int16)
    for i in range(n):
        ident, k = divmod(i, cfg.images_per_identity)
        srng = np.random.default_rng([seed, 1, ident, k])
        img = render_sample(protos[ident], srng)
        if srng.random() < cfg.degraded_fraction:
            kind[i] = srng.integers(len(DEGRADATIONS))
            strength[i] = srng.uniform(0.3, 1.0)
            img = degrade(img, DEGRADATIONS[kind[i]], float(strength[i]), srng)
        images[i] = img
    labels = np.repeat(np.arange(cfg.identities), cfg.images_per_identity)
    names = [f"synthetic:{i // cfg.images_per_identity}/{i % cfg.images_per_identity}" for i in range(n)]
    return ArraySource(images, labels, names, extras={"degradation": strength, "degradation_kind": kind})
