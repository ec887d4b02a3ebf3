"""The one held-out evaluation of a trained network: verification and quality on identities it never saw.

``eqface train``'s summary and the pipeline's evaluate step both read an :class:`HeldOutEvaluation`: same pairs,
same 10-fold protocol, same degradations at the same strength, AUC from ``eqface.eval.roc``. Quality is measured on
the held-out faces as they are and under each realistic degradation, so one can see whether the branch discriminates
(the failure mode of the official code is s ≈ 1 everywhere). It lives in ``train`` rather than ``eval`` because it
runs the network (``eval`` is pure numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eqface import contract
from eqface.data.augment import DEGRADATIONS, degrade
from eqface.data.sources import ArraySource, FaceSource
from eqface.eval.edc import EdcCurve, edc_curve, pair_quality, random_quality
from eqface.eval.pairs import cosine_scores, make_pairs
from eqface.eval.roc import RocCurve, auc, max_false_accepts, roc_curve, tar_at_far
from eqface.eval.verification import kfold_accuracy
from eqface.models import EQFaceNet
from eqface.train.trainer import embed_source

DEGRADATION_STRENGTH = 0.7
MAX_PAIRS = 3000
FARS = (1e-4, 1e-3, 1e-2, 1e-1)
# EDC starts at the lowest of these FMRs that the impostor pairs can reach (a small held-out set cannot reach 1e-3).
EDC_START_FMRS = (1e-3, 1e-2, 1e-1)
EDC_DISCARD_LIMIT = 0.2


@dataclass(frozen=True)
class HeldOutEvaluation:
    """Everything measured on the held-out identities; the arrays are kept for plots."""

    identities: int
    images: int
    accuracy: float  # 10-fold verification accuracy
    accuracy_std: float
    auc: float
    roc: RocCurve
    tar: dict[float, float | None]  # TAR at each of FARS (None: not reachable with this many impostor pairs)
    scores: np.ndarray
    issame: np.ndarray
    quality: dict[str, np.ndarray]  # "clean" and each degradation → per-image quality
    edc: EdcCurve | None  # None when no start FMR is reachable
    edc_random: EdcCurve | None
    degradation: np.ndarray | None = None  # synthetic ground truth: degradation strength per image (0 = clean)

    @property
    def genuine_pairs(self) -> int:
        return int(self.issame.sum())

    @property
    def impostor_pairs(self) -> int:
        return int((~self.issame).sum())

    @property
    def spearman(self) -> float | None:
        """Spearman correlation of clean quality with the synthetic degradation strength, when the data has it."""
        if self.degradation is None:
            return None
        from scipy.stats import spearmanr

        return float(spearmanr(self.quality["clean"], self.degradation).statistic)


def held_out_pairs(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine and impostor pairs (a, b, issame): every genuine pair up to MAX_PAIRS, as many impostors (>= 10)."""
    counts = np.bincount(labels)
    n_genuine = int(min(MAX_PAIRS, (counts * (counts - 1) // 2).sum()))
    n_total = len(labels) * (len(labels) - 1) // 2
    n_impostor = int(min(max(n_genuine, 10), n_total - n_genuine, MAX_PAIRS))
    return make_pairs(labels, n_genuine, n_impostor, np.random.default_rng(seed))


def degraded_copy(source: FaceSource, image_size: tuple[int, int], kind: str, seed: int) -> ArraySource:
    """Every image of ``source`` fitted to ``image_size`` and degraded by ``kind`` at DEGRADATION_STRENGTH."""
    images = np.stack(
        [
            degrade(
                contract.fit_to_size(source.image(i), image_size),
                kind,
                DEGRADATION_STRENGTH,
                np.random.default_rng([seed, i]),
            )
            for i in range(len(source))
        ]
    )
    return ArraySource(images, source.labels)


def evaluate_held_out(
    net: EQFaceNet, held_out: FaceSource, image_size: tuple[int, int], device: torch.device, seed: int = 0
) -> HeldOutEvaluation:
    """Embeds the held-out faces (clean and under each degradation) and scores verification and quality."""
    emb, q = embed_source(net, held_out, image_size, device, desc="held-out faces")
    quality = {"clean": q}
    for kind in DEGRADATIONS:
        quality[kind] = embed_source(
            net, degraded_copy(held_out, image_size, kind, seed), image_size, device, desc=kind
        )[1]
    a, b, same = held_out_pairs(held_out.labels, seed)
    scores = cosine_scores(emb[a], emb[b])
    verification = kfold_accuracy(scores, same)
    edc, edc_random = _edc_curves(scores, same, pair_quality(q, a, b), pair_quality(random_quality(len(q), seed), a, b))
    return HeldOutEvaluation(
        identities=held_out.num_classes,
        images=len(held_out),
        accuracy=verification.mean,
        accuracy_std=verification.std,
        auc=auc(scores, same),
        roc=roc_curve(scores, same),
        tar=tar_at_far(scores, same, FARS),
        scores=scores,
        issame=same,
        quality=quality,
        edc=edc,
        edc_random=edc_random,
        degradation=held_out.extras.get("degradation"),
    )


def _edc_curves(scores, same, pair_q, random_q) -> tuple[EdcCurve | None, EdcCurve | None]:
    n_impostor = int((~same).sum())
    for fmr in EDC_START_FMRS:
        if max_false_accepts(fmr, n_impostor) is not None:
            return edc_curve(scores, same, pair_q, fmr), edc_curve(scores, same, random_q, fmr)
    return None, None
