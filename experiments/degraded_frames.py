"""Video-like frames for E3/E4: real faces, some of them hit by a seeded degradation of one family, embedded once.

Two degradation families, always reported apart:

- ``training``: ``eqface.data.augment.degrade`` (resolution, blur, noise, occlusion), the generator and ranges that
  Step 2 trained the quality branch on (``quality_augment``); a gain here can be in-distribution artefact detection.
- ``held_out``: ``eqface.eval.conditions`` (JPEG, motion blur, exposure, rescale, misalign), which no training code
  generates; a gain here is evidence that the quality predicts recognition errors it never saw.

A frame is (image index, kind within the family or clean, strength). Clean frames reuse the cached clean embeddings;
only the degraded frames of a draw are embedded, so a repeat costs one forward pass per degraded frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eqface import contract
from eqface.data.augment import degrade
from eqface.eval import conditions
from experiments.common import Embeddings, ModelRef, embed_images

TRAINING = "training"
HELD_OUT = "held_out"
FAMILIES: dict[str, tuple[str, ...]] = {
    TRAINING: ("resolution", "blur", "noise", "occlusion"),  # the kinds of `degrade` a camera stream typically shows
    HELD_OUT: tuple(conditions.FAMILIES),
}
FAMILY_LABELS = {
    TRAINING: "training-distribution degradations (the generator Step 2 trained on)",
    HELD_OUT: "held-out degradations (`eqface.eval.conditions`; no training code generates them)",
}
FAMILY_SOURCES = {
    TRAINING: "`eqface.data.augment.degrade` at a strength uniform in the given range",
    HELD_OUT: "`eqface.eval.conditions.apply`, each family drawing its own strength within its fixed ranges "
    "(JPEG quality 5–20, motion kernel 7–21 px, gain 1.8–3.0 or gamma 0.25–0.45, Lanczos down to 14–28 px and up, "
    "a 3–8 px / 3–10° / 4–10 % similarity warp)",
}
KINDS = FAMILIES[TRAINING]  # kept for callers that only know the training family
CLEAN = -1


def family_kinds(family: str) -> tuple[str, ...]:
    """The degradation kinds of ``family``; an unknown family raises ValueError listing the valid ones."""
    if family not in FAMILIES:
        raise ValueError(f"unknown degradation family {family!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[family]


@dataclass(frozen=True)
class FrameSpec:
    """Which frames a draw uses and how each was degraded (parallel arrays)."""

    family: str  # a key of FAMILIES
    image_index: np.ndarray  # [F] index into the image set
    kind: np.ndarray  # [F] index into family_kinds(family), CLEAN (-1) for an untouched frame
    strength: np.ndarray  # [F] in [0, 1]; 0 for clean frames; unused by the held-out family (it draws its own)


def draw_degradations(
    image_index: np.ndarray,
    p: float,
    strength_range: tuple[float, float],
    rng: np.random.Generator,
    family: str = TRAINING,
) -> FrameSpec:
    """Each frame is degraded with probability ``p`` by a kind drawn uniformly from the family, at a uniform strength.

    The hit mask is drawn first, so two families drawn from equally seeded generators degrade the same frames.
    """
    kinds = family_kinds(family)
    n = len(image_index)
    hit = rng.random(n) < p
    kind = np.where(hit, rng.integers(len(kinds), size=n), CLEAN)
    strength = np.where(hit, rng.uniform(*strength_range, size=n), 0.0)
    return FrameSpec(family, np.asarray(image_index, dtype=np.int64), kind.astype(np.int64), strength)


def degrade_frame(img: np.ndarray, family: str, kind: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One degraded frame: the common interface over both families (uint8 network-sized RGB in and out)."""
    name = family_kinds(family)[kind]
    if family == TRAINING:
        return degrade(img, name, strength, rng)
    return conditions.apply(img, name, rng)


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
        degrade_frame(
            contract.fit_to_size(images[spec.image_index[k]], ref.image_size),
            spec.family,
            int(spec.kind[k]),
            float(spec.strength[k]),
            np.random.default_rng([*seed, int(k)]),
        )
        for k in hit
    ]
    e = embed_images(ref.net, frames, ref.image_size)
    emb, quality, raw = out.emb.copy(), out.quality.copy(), out.raw_norm.copy()
    emb[hit], quality[hit], raw[hit] = e.emb, e.quality, e.raw_norm
    return Embeddings(emb, quality, raw)


def quality_by_condition(quality: np.ndarray, kind: np.ndarray, family: str = TRAINING) -> dict[str, dict[str, float]]:
    """Mean/std/count of the quality of clean frames and of each degradation kind of ``family``."""
    out = {}
    for k, name in [(CLEAN, "clean"), *enumerate(family_kinds(family))]:
        q = quality[kind == k]
        if q.size:
            out[name] = {"n": int(q.size), "mean": float(q.mean()), "std": float(q.std())}
    return out
