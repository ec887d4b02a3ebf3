"""Video-like frames for E3/E4: real faces, some of them hit by a seeded realistic degradation, embedded once.

A frame is (image index, degradation kind or clean, strength). Clean frames reuse the cached clean embeddings; only the
degraded frames of a draw are embedded, so a repeat costs one forward pass per degraded frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eqface import contract
from eqface.data.augment import degrade
from experiments.common import Embeddings, ModelRef, embed_images

KINDS = ("resolution", "blur", "noise", "occlusion")  # the degradations a camera stream typically shows
CLEAN = -1


@dataclass(frozen=True)
class FrameSpec:
    """Which frames a draw uses and how each was degraded (parallel arrays)."""

    image_index: np.ndarray  # [F] index into the image set
    kind: np.ndarray  # [F] index into KINDS, CLEAN (-1) for an untouched frame
    strength: np.ndarray  # [F] in [0, 1]; 0 for clean frames


def draw_degradations(
    image_index: np.ndarray, p: float, strength_range: tuple[float, float], rng: np.random.Generator
) -> FrameSpec:
    """Each frame is degraded with probability ``p`` by a kind drawn uniformly from KINDS, at a uniform strength."""
    n = len(image_index)
    hit = rng.random(n) < p
    kind = np.where(hit, rng.integers(len(KINDS), size=n), CLEAN)
    strength = np.where(hit, rng.uniform(*strength_range, size=n), 0.0)
    return FrameSpec(np.asarray(image_index, dtype=np.int64), kind.astype(np.int64), strength)


def embed_frames(
    ref: ModelRef, images: Sequence[np.ndarray], clean: Embeddings, spec: FrameSpec, seed: Sequence[int]
) -> Embeddings:
    """Embeddings of the frames of ``spec``: cached for clean frames, computed for degraded ones.

    The degradation of frame k draws from ``default_rng([*seed, k])`` and is applied to the network-sized image.
    """
    out = clean.take(spec.image_index)
    hit = np.flatnonzero(spec.kind != CLEAN)
    if len(hit) == 0:
        return out
    frames = [
        degrade(
            contract.fit_to_size(images[spec.image_index[k]], ref.image_size),
            KINDS[spec.kind[k]],
            float(spec.strength[k]),
            np.random.default_rng([*seed, int(k)]),
        )
        for k in hit
    ]
    e = embed_images(ref.net, frames, ref.image_size)
    emb, quality, raw = out.emb.copy(), out.quality.copy(), out.raw_norm.copy()
    emb[hit], quality[hit], raw[hit] = e.emb, e.quality, e.raw_norm
    return Embeddings(emb, quality, raw)


def quality_by_condition(quality: np.ndarray, kind: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean/std/count of the quality of clean frames and of each degradation kind."""
    out = {}
    for k, name in [(CLEAN, "clean"), *enumerate(KINDS)]:
        q = quality[kind == k]
        if q.size:
            out[name] = {"n": int(q.size), "mean": float(q.mean()), "std": float(q.std())}
    return out
