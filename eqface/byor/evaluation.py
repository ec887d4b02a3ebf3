"""Held-out figures of an imported recogniser and its quality: verification AUC / TAR@FAR and EDC pAUC vs baselines.

Pure: embeddings, qualities and labels in, numbers out. Every unordered pair of the held-out faces is compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from eqface.eval.edc import edc_curve, edc_pauc, embedding_norm_quality, pair_quality, random_quality
from eqface.eval.pairs import make_pairs
from eqface.eval.roc import auc, tar_at_far
from eqface.eval.verification import kfold_accuracy

START_FMR = 1e-3
DISCARD_LIMIT = 0.2


@dataclass(frozen=True)
class HeldOutReport:
    faces: int
    identities: int
    genuine_pairs: int
    impostor_pairs: int
    auc: float
    tar_at_far_1e3: float | None
    accuracy_10fold: float  # on balanced sampled pairs (up to 3000 + 3000)
    pauc_quality: float  # EDC pAUC[0, 0.2] at FMR 1e-3, lower is better
    pauc_embedding_norm: float
    pauc_random: float
    quality_mean: float
    quality_std: float

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_report(raw_embedding: np.ndarray, quality: np.ndarray, labels: np.ndarray, seed: int = 0) -> HeldOutReport:
    """Figures for held-out faces: ``raw_embedding`` [N, D] before L2 normalisation, ``quality`` [N], ``labels``."""
    if not (len(raw_embedding) == len(quality) == len(labels)):
        raise ValueError(f"{len(raw_embedding)} embeddings, {len(quality)} qualities, {len(labels)} labels")
    unit = raw_embedding / np.maximum(np.linalg.norm(raw_embedding, axis=1, keepdims=True), 1e-12)
    a, b = np.triu_indices(len(labels), 1)
    scores = (unit @ unit.T)[a, b]  # one [N, N] product: gathering unit[a] would need P×D memory
    same = labels[a] == labels[b]

    def pauc(q: np.ndarray) -> float:
        return edc_pauc(edc_curve(scores, same, pair_quality(q, a, b), START_FMR), DISCARD_LIMIT)

    n_pairs = int(min(3000, same.sum(), (~same).sum()))
    ia, ib, issame = make_pairs(labels, n_pairs, n_pairs, np.random.default_rng(seed))
    balanced = np.einsum("ij,ij->i", unit[ia], unit[ib])  # at most 6000 pairs
    return HeldOutReport(
        faces=len(labels),
        identities=len(np.unique(labels)),
        genuine_pairs=int(same.sum()),
        impostor_pairs=int((~same).sum()),
        auc=auc(scores, same),
        tar_at_far_1e3=tar_at_far(scores, same, (START_FMR,))[START_FMR],
        accuracy_10fold=kfold_accuracy(balanced, issame).mean,
        pauc_quality=pauc(quality),
        pauc_embedding_norm=pauc(embedding_norm_quality(raw_embedding)),
        pauc_random=pauc(random_quality(len(labels), seed)),
        quality_mean=float(np.mean(quality)),
        quality_std=float(np.std(quality)),
    )
