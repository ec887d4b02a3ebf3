"""The client-side quality proxy: what the client can tell about a face before the aggregator answers, used only to
choose which frames to drop when it cannot keep up (the model's quality arrives later, with the answer).

    proxy = detector score × size factor × sharpness factor, each in [0, 1]

- size factor = min(1, 1 / scale): ``scale`` is template pixels per frame pixel of the alignment, so a face smaller
  than the 112×112 template (upsampled, lost detail) counts less, a larger one counts fully;
- sharpness factor = v / (v + SHARPNESS_HALF) with v the variance of the Laplacian of the aligned crop's grey centre
  (the eyes-nose-mouth area; the crop's borders hold background). Blur and heavy compression lower it.
"""

from __future__ import annotations

import numpy as np

from eqface.eval.sharpness import laplacian_variance, to_grayscale

# Laplacian variance (``eqface.eval.sharpness``) at which the sharpness factor is 1/2. Measured on 100 of the CelebA
# pack's aligned crops (evenly spaced over the pack), on the centre below: clean median 890 (5th percentile 190),
# Gaussian blur (PIL, radius 1) median 93, radius 2 median 20. 130 ≈ √(93·190): most faces blurred by one pixel count
# under 1/2, 19 in 20 clean ones 0.59 or more.
SHARPNESS_HALF = 130.0
_CENTRE = (slice(28, 100), slice(24, 88))  # rows, columns of the 112×112 crop around the template's points


def sharpness_factor(aligned: np.ndarray) -> float:
    """v / (v + SHARPNESS_HALF) for the variance of the Laplacian v of an aligned RGB uint8 crop's grey centre."""
    v = laplacian_variance(to_grayscale(aligned[_CENTRE]))
    return v / (v + SHARPNESS_HALF)


def size_factor(scale: float) -> float:
    return float(min(1.0, 1.0 / scale)) if scale > 0 else 0.0


def quality_proxy(score: float, scale: float, aligned: np.ndarray) -> float:
    """The proxy in [0, 1] for one aligned face (see the module docstring)."""
    return float(np.clip(score, 0.0, 1.0)) * size_factor(scale) * sharpness_factor(aligned)
