"""Checks a stated input normalisation on real faces: a wrong one must fail loudly, not cost accuracy silently.

The stated setting's genuine-vs-impostor AUC (all pairs of a few hundred faces of identities the recogniser was not
trained on by us) must reach ``min_auc``, and no alternative — the channel flip or a setting common among public face
recognisers — may beat it by more than ``max_deficit``. A recogniser that is nearly invariant to a change (many are
to RGB↔BGR) passes with either setting: the check refuses what measurably hurts, and reports every AUC it measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eqface.byor.normalisation import COMMON_SETTINGS, InputNormalisation
from eqface.eval.roc import auc

# Documented thresholds, measured with the shared photo_analyze MobileFaceNet on CelebA held-out faces: its correct
# setting scores 0.969 (300 faces), raw pixels 0.67, x/255 0.958, BGR 0.968; on 150 faces an ImageNet-BGR setting
# beat the correct one by 0.010 by chance, so the margin is twice that.
DEFAULT_MIN_AUC = 0.90
DEFAULT_MAX_DEFICIT = 0.02


class NormalisationCheckError(ValueError):
    """The stated normalisation failed the check on real faces; the message gives the measured AUCs."""


@dataclass(frozen=True)
class NormalisationCheck:
    setting: str
    auc: float
    alternatives: dict[str, float]
    faces: int
    min_auc: float
    max_deficit: float

    @property
    def best_alternative(self) -> tuple[str, float]:
        name = max(self.alternatives, key=self.alternatives.__getitem__)
        return name, self.alternatives[name]

    @property
    def failure(self) -> str | None:
        """Why the setting is refused, or None when it passes."""
        if self.auc < self.min_auc:
            return (
                f"input normalisation {self.setting} gives verification AUC {self.auc:.4f} on {self.faces} real "
                f"faces, below {self.min_auc}: wrong --mean/--std/--bgr, or not a face recogniser "
                f"(alternatives: {self._listing()})"
            )
        name, best = self.best_alternative
        if best - self.auc > self.max_deficit:
            return (
                f"input normalisation {self.setting} gives AUC {self.auc:.4f} on {self.faces} real faces but {name} "
                f"gives {best:.4f} (more than {self.max_deficit} better): check --mean/--std/--bgr "
                f"(all: {self._listing()})"
            )
        return None

    def _listing(self) -> str:
        return ", ".join(f"{k}: {v:.4f}" for k, v in self.alternatives.items())

    def to_dict(self) -> dict:
        return {
            "setting": self.setting,
            "auc": self.auc,
            "alternatives": self.alternatives,
            "faces": self.faces,
            "min_auc": self.min_auc,
            "max_deficit": self.max_deficit,
            "passed": self.failure is None,
        }


def all_pairs_auc(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Genuine-vs-impostor cosine AUC over every unordered pair of ``embeddings`` [N, D]."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    a, b = np.triu_indices(len(labels), 1)
    scores = np.einsum("ij,ij->i", unit[a], unit[b])
    return auc(scores, labels[a] == labels[b])


def alternatives_to(stated: InputNormalisation) -> dict[str, InputNormalisation]:
    """The settings the stated one is compared with: its channel flip and the common ones (both orders)."""
    out = {stated.flipped().describe(): stated.flipped()}
    for setting in COMMON_SETTINGS.values():
        for candidate in (setting, setting.flipped()):
            if candidate.describe() != stated.describe():
                out.setdefault(candidate.describe(), candidate)
    return out


def check_normalisation(
    embed: Callable[[np.ndarray], np.ndarray],
    images_rgb: np.ndarray,
    labels: np.ndarray,
    stated: InputNormalisation,
    min_auc: float = DEFAULT_MIN_AUC,
    max_deficit: float = DEFAULT_MAX_DEFICIT,
) -> NormalisationCheck:
    """Measures the AUC of ``stated`` and its alternatives; ``embed`` maps a normalised batch to embeddings."""
    if len(np.unique(labels)) < 2 or np.bincount(np.unique(labels, return_inverse=True)[1]).max() < 2:
        raise ValueError("the normalisation check needs at least two identities and one genuine pair")
    measured = {name: all_pairs_auc(embed(s.apply(images_rgb)), labels) for name, s in alternatives_to(stated).items()}
    return NormalisationCheck(
        setting=stated.describe(),
        auc=all_pairs_auc(embed(stated.apply(images_rgb)), labels),
        alternatives=measured,
        faces=len(labels),
        min_auc=min_auc,
        max_deficit=max_deficit,
    )
