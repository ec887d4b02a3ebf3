"""SER-FIQ (Terhörst et al., CVPR 2020): quality as the robustness of an image's embedding to dropout at inference.

The network is run ``m`` times with dropout active on its last layers; a sample whose stochastic embeddings stay close
together is a good sample. Quality = 2·σ(−2/m² · Σ_{i<j} ‖x_i − x_j‖) over the L2-normalised stochastic embeddings
x_1..x_m, in (0, 1]: 1 when every pass agrees. No training; an unsupervised peer on the same network.
"""

from __future__ import annotations

import numpy as np


def serfiq_quality(stochastic: np.ndarray) -> np.ndarray:
    """Quality of each image from its stochastic embeddings [N, m, D] (m >= 2 passes), shape [N].

    Raises:
        ValueError: unless the input is a finite [N, m, D] array with m >= 2.
    """
    x = np.asarray(stochastic, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"stochastic embeddings must be a finite [N, m >= 2, D] array, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    m = x.shape[1]
    i, j = np.triu_indices(m, k=1)
    distances = np.linalg.norm(x[:, i] - x[:, j], axis=2).sum(axis=1)
    return 2.0 / (1.0 + np.exp(2.0 * distances / m**2))
