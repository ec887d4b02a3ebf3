"""Augmentations and realistic degradations (resolution drop, blur, noise, occlusion, uneven lighting).

Every function is pure: uint8 RGB image + a numpy Generator in, uint8 RGB image out. Degradations take a strength in
[0, 1] so experiments and the synthetic generator can dial them; ``Augmenter`` draws them from an AugmentConfig.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from eqface.config import AugmentConfig


def resolution_drop(img: np.ndarray, size: int) -> np.ndarray:
    """Downscales the longer side to ``size`` px and back (the official EQFace code uses 60/80/100)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    pil = Image.fromarray(img).resize(small, Image.BILINEAR)
    return np.asarray(pil.resize((w, h), Image.BILINEAR))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=sigma)))


def gaussian_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    noisy = img.astype(np.float32) + rng.normal(0.0, std, size=img.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def occlusion(img: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Covers a random rectangle of about ``frac`` of the image area with a flat random colour."""
    h, w = img.shape[:2]
    area = frac * h * w
    aspect = rng.uniform(0.5, 2.0)
    oh = int(min(h, max(1, round(np.sqrt(area * aspect)))))
    ow = int(min(w, max(1, round(area / oh))))
    top, left = rng.integers(0, h - oh + 1), rng.integers(0, w - ow + 1)
    out = img.copy()
    out[top : top + oh, left : left + ow] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return out


def directional_lighting(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Shades the face from a random direction (one side dark) and darkens it overall, like off-axis light."""
    h, w = img.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / max(w - 1, 1) - 0.5) * np.cos(angle) + (yy / max(h - 1, 1) - 0.5) * np.sin(angle)) * 2  # [-1, 1]
    shade = np.clip(1.0 - strength * (0.5 + 0.5 * ramp) * 1.2, 0.03, 1.0) * (1.0 - 0.5 * strength)
    out = img.astype(np.float32) * shade[:, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def degrade(img: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One named degradation at ``strength`` in [0, 1] (0 = untouched, 1 = severe)."""
    if kind == "resolution":
        return resolution_drop(img, int(round(max(img.shape[:2]) * (1.0 - 0.85 * strength))))
    if kind == "blur":
        return gaussian_blur(img, 0.5 + 4.5 * strength)
    if kind == "noise":
        return gaussian_noise(img, 5.0 + 45.0 * strength, rng)
    if kind == "occlusion":
        return occlusion(img, 0.1 + 0.5 * strength, rng)
    if kind == "lighting":
        return directional_lighting(img, strength, rng)
    raise ValueError(f"unknown degradation {kind!r}; valid: {', '.join(DEGRADATIONS)}")


DEGRADATIONS = ("resolution", "blur", "noise", "occlusion", "lighting")


class Augmenter:
    """Applies an AugmentConfig to one image with the caller's Generator (deterministic per sample)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        if c.hflip and rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.ascontiguousarray(img)
        if c.lighting_p and rng.random() < c.lighting_p:
            img = directional_lighting(img, rng.uniform(*c.lighting_strength), rng)
        if c.resolution_drop_p and rng.random() < c.resolution_drop_p:
            img = resolution_drop(img, int(rng.choice(c.resolution_sizes)))
        if c.blur_p and rng.random() < c.blur_p:
            img = gaussian_blur(img, rng.uniform(*c.blur_sigma))
        if c.occlusion_p and rng.random() < c.occlusion_p:
            img = occlusion(img, rng.uniform(*c.occlusion_frac), rng)
        if c.noise_p and rng.random() < c.noise_p:
            img = gaussian_noise(img, rng.uniform(*c.noise_std), rng)
        return img
