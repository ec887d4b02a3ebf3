"""Aggregation thresholds calibrated to one model from a labelled calibration set: pure numpy, no I/O.

The paper's s_th = 0.3 and f_th = 0.5 fit the paper's model; another model's quality and similarity scales differ
(on the CelebA MobileFaceNet 420 of 645 E3 templates fell back to the plain mean at s_th = 0.3). The rules, given
embeddings, qualities and identities of faces the model did not train on, and the deployment FMR:

1. **Verification threshold t** = the similarity at which the calibration impostor pairs reach the deployment FMR:
   at most floor(FMR · n_impostor) impostor pairs score above t (``similarity_threshold``).
2. **f_th = t.** The progressive gate merges a frame only if its similarity to the subject's template is > f_th,
   so a frame of another person (a tracker switch) is merged with probability at most FMR — the same risk the
   deployment accepts for a 1:1 match.
3. **s_th** = the highest quality at which a genuine comparison is more likely to fail than to pass at t. Each
   genuine pair's quality is the lower of its two images' (the EDC convention: the weaker image limits the
   comparison); the false non-match rate as a function of that quality is fitted as a non-increasing step function
   (isotonic regression), and s_th is the largest pair quality whose fitted FNMR is above ``max_fnmr`` (default
   0.5): frames at or below s_th mostly fail verification at the deployment FMR, so merging them moves a template
   away from the person more often than towards. No quality above ``max_fnmr`` → s_th = 0 (no frame hurts).
   The gate never rejects more than ``max_reject`` of the calibration images (s_th is capped at that quantile of
   their qualities), so a model whose genuine pairs mostly fail at this FMR keeps its better frames instead of
   rejecting every frame.
4. **QWFAF's threshold = s_th.** QWFAF asks the same question of a batch (keep the frames that help verification;
   if the set's mean quality is in the hurting range, fall back to the plain mean), so one calibrated quality answers
   both; it is stored under its own key so a later rule can set it apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqface.aggregation import Thresholds, check_features

DEFAULT_FMR = 1e-3
DEFAULT_MAX_FNMR = 0.5
DEFAULT_MAX_REJECT = 0.5
DEFAULT_MAX_IMAGES = 2000  # 2 M pairs: a few seconds and ~50 MB


@dataclass(frozen=True)
class CalibrationSettings:
    """The deployment operating point and the limits of the rules (see the module docstring).

    Attributes:
        fmr: deployment false match rate; the calibration set needs at least 1/fmr impostor pairs.
        max_fnmr: a pair quality whose fitted FNMR at the FMR threshold is above this hurts (s_th rule).
        max_reject: largest fraction of the calibration images the quality gate may reject.
        max_images: images used (an evenly spaced subset of a larger set, so all identities stay represented).
    """

    fmr: float = DEFAULT_FMR
    max_fnmr: float = DEFAULT_MAX_FNMR
    max_reject: float = DEFAULT_MAX_REJECT
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        if not 0 < self.fmr < 1:
            raise ValueError(f"fmr must be in (0, 1), got {self.fmr}")
        if not 0 < self.max_fnmr < 1:
            raise ValueError(f"max_fnmr must be in (0, 1), got {self.max_fnmr}")
        if not 0 <= self.max_reject <= 1:
            raise ValueError(f"max_reject must be in [0, 1], got {self.max_reject}")
        if self.max_images < 2:
            raise ValueError(f"max_images must be >= 2, got {self.max_images}")


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds and the figures they came from."""

    thresholds: Thresholds
    settings: CalibrationSettings
    images: int
    identities: int
    genuine_pairs: int
    impostor_pairs: int
    fnmr_at_threshold: float  # over all genuine pairs, at t = f_th
    capped: bool  # s_th was limited by max_reject

    def describe(self) -> dict[str, object]:
        """A JSON-ready summary (stored beside the thresholds as ``contract.CALIBRATION_KEY``)."""
        return {
            "rule": "eqface.eval.calibration (f_th: impostor similarity at FMR; s_th: pair quality with FNMR > "
            "max_fnmr; qwfaf_s_th = s_th)",
            "fmr": self.settings.fmr,
            "max_fnmr": self.settings.max_fnmr,
            "max_reject": self.settings.max_reject,
            "images": self.images,
            "identities": self.identities,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
            "fnmr_at_threshold": round(self.fnmr_at_threshold, 6),
            "s_th_capped": self.capped,
        }


def similarity_threshold(impostor_scores: np.ndarray, fmr: float) -> float:
    """The t at which "accept iff score > t" accepts at most floor(fmr · n) of the impostor scores.

    t is the (a+1)-th highest impostor score, a = floor(fmr · n); ties at t are rejected, so the empirical FMR is at
    most ``fmr``.

    Raises:
        ValueError: fewer than 1/fmr impostor scores (the FMR cannot be measured) or non-finite scores.
    """
    from eqface.eval.roc import max_false_accepts  # roc imports scikit-learn: kept out of `eqface export --help`

    scores = np.asarray(impostor_scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(scores)):
        raise ValueError("impostor scores contain NaN or inf")
    allowed = max_false_accepts(fmr, len(scores))
    if allowed is None:
        raise ValueError(
            f"{len(scores)} impostor pairs cannot measure FMR {fmr:g} (need >= {int(np.ceil(1 / fmr))}): "
            "calibrate on more identities or at a larger FMR"
        )
    return float(np.partition(scores, len(scores) - 1 - allowed)[len(scores) - 1 - allowed])


def fnmr_by_quality(pair_quality: np.ndarray, failed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-increasing fit of P(genuine pair fails | pair quality): ``(sorted qualities, fitted FNMR)``.

    Isotonic regression (pool adjacent violators): the best least-squares fit of the 0/1 failures by a step function
    that never rises with quality — the assumption that makes "the quality below which images hurt" well defined.
    """
    from sklearn.isotonic import IsotonicRegression

    q = np.asarray(pair_quality, dtype=np.float64)
    y = np.asarray(failed, dtype=np.float64)
    if q.ndim != 1 or q.shape != y.shape or len(q) == 0:
        raise ValueError(f"pair_quality and failed must be 1-D of equal non-zero length, got {q.shape}, {y.shape}")
    order = np.argsort(q, kind="stable")
    fitted = IsotonicRegression(increasing=False).fit_transform(q[order], y[order])
    return q[order], fitted


def quality_threshold(
    pair_quality: np.ndarray, failed: np.ndarray, image_quality: np.ndarray, max_fnmr: float, max_reject: float
) -> tuple[float, bool]:
    """s_th by rule 3 of the module docstring: ``(s_th, capped)``."""
    q, fitted = fnmr_by_quality(pair_quality, failed)
    hurting = np.flatnonzero(fitted > max_fnmr)
    s_th = float(q[hurting[-1]]) if len(hurting) else 0.0
    cap = float(np.quantile(np.asarray(image_quality, dtype=np.float64), max_reject, method="lower"))
    if s_th > cap:
        return cap, True
    return s_th, False


def calibrate(
    embeddings: np.ndarray,
    qualities: np.ndarray,
    identities: np.ndarray,
    settings: CalibrationSettings = CalibrationSettings(),
) -> Calibration:
    """Thresholds for one model from its outputs on a calibration set (rules in the module docstring).

    Args:
        embeddings: [N, D] model embeddings (normalised here).
        qualities: [N] model qualities in [0, 1].
        identities: [N] integer identity labels; at least two identities, some with two or more images.

    Raises:
        ValueError: invalid arrays, no genuine pair, or too few impostor pairs for ``settings.fmr``.
    """
    check_features(embeddings, qualities)
    labels = np.asarray(identities)
    if labels.shape != (len(qualities),):
        raise ValueError(f"identities must have shape [{len(qualities)}], got {labels.shape}")
    keep = evenly_spaced(len(labels), settings.max_images)
    f = np.asarray(embeddings, dtype=np.float64)[keep]
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    s, labels = np.asarray(qualities, dtype=np.float64)[keep], labels[keep]
    idx_a, idx_b = np.triu_indices(len(labels), k=1)
    scores = (f @ f.T)[idx_a, idx_b]
    genuine = labels[idx_a] == labels[idx_b]
    if not genuine.any():
        raise ValueError("the calibration set has no two images of one identity")
    t = similarity_threshold(scores[~genuine], settings.fmr)
    failed = scores[genuine] <= t
    pair_q = np.minimum(s[idx_a], s[idx_b])[genuine]
    s_th, capped = quality_threshold(pair_q, failed, s, settings.max_fnmr, settings.max_reject)
    return Calibration(
        thresholds=Thresholds(f_th=float(np.clip(t, -1.0, 1.0)), s_th=s_th, qwfaf_s_th=s_th),
        settings=settings,
        images=len(labels),
        identities=len(np.unique(labels)),
        genuine_pairs=int(genuine.sum()),
        impostor_pairs=int((~genuine).sum()),
        fnmr_at_threshold=float(failed.mean()),
        capped=capped,
    )


def evenly_spaced(n: int, limit: int) -> np.ndarray:
    """Evenly spaced indices when n exceeds ``limit`` (keeps every part of an identity-sorted set)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
