"""Error-versus-Discard curves (EDC) for face quality assessment, their partial area (pAUC), and baseline qualities.

A comparison's quality is the lower of its two images' qualities. The comparison score threshold is fixed once, at the
starting FMR over all impostor comparisons; then the lowest-quality comparisons (genuine and impostor alike) are
discarded step by step and the FNMR of the remaining genuine comparisons is measured at that fixed threshold. A quality
score that predicts recognition errors makes the FNMR fall quickly, i.e. gives a small pAUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqface.eval.pairs import check_scores
from eqface.eval.roc import RATE_TOLERANCE

DEFAULT_START_FMR = 1e-3
_WEIGHT_EPSILON = 1e-9  # cumulative sums of float weights leave this much where nothing is left


@dataclass(frozen=True)
class EdcCurve:
    """An EDC, one point per achievable discard fraction.

    Attributes:
        discard_fractions: fraction of all comparisons discarded at each point, increasing from 0.
        fnmr: FNMR of the genuine comparisons kept at each point.
        min_quality: pair quality of the lowest-quality comparison kept at each point.
        threshold: comparison score threshold (accept iff score >= threshold), fixed at ``start_fmr``.
        start_fmr: FMR over all impostor comparisons that fixed the threshold.
    """

    discard_fractions: np.ndarray
    fnmr: np.ndarray
    min_quality: np.ndarray
    threshold: float
    start_fmr: float


def pair_quality(quality: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray) -> np.ndarray:
    """Quality of each comparison from per-image qualities: min(q[idx_a], q[idx_b])."""
    quality = np.asarray(quality, dtype=np.float64)
    if quality.ndim != 1 or not np.all(np.isfinite(quality)):
        raise ValueError(f"quality must be a finite 1-D array, got shape {quality.shape}")
    return np.minimum(quality[np.asarray(idx_a)], quality[np.asarray(idx_b)])


def edc_curve(
    scores: np.ndarray,
    issame: np.ndarray,
    pair_qualities: np.ndarray,
    start_fmr: float = DEFAULT_START_FMR,
) -> EdcCurve:
    """The FNMR-EDC of a quality measure.

    Ties: comparisons of equal pair quality are kept or discarded together, so a point exists only where a quality
    threshold separates the discarded comparisons from the kept ones. The curve is therefore independent of the order
    of the comparisons, and a constant quality gives the single point (0, FNMR at the starting FMR). The curve holds
    every such point up to the highest quality level (discarding it would leave nothing) and stops before the first
    point that would leave no genuine comparison; clip the x-axis to plot a range such as [0, 0.3].

    Args:
        scores: comparison scores (higher = more alike), shape [M].
        issame: ground truth, shape [M].
        pair_qualities: quality of each comparison, shape [M] (see ``pair_quality``).
        start_fmr: FMR that fixes the score threshold; needs at least 1/start_fmr impostor comparisons.

    Raises:
        ValueError: on invalid input, or when ``start_fmr`` is not reachable with the impostor comparisons given.
    """
    comparisons = SortedComparisons(scores, issame, pair_qualities)
    return comparisons.curve(np.ones(len(comparisons.scores)), start_fmr)


class SortedComparisons:
    """Comparisons sorted once by score and by quality, so that many weightings of them cost O(M) each.

    A weighting gives comparison k the multiplicity ``weights[k]`` (a bootstrap over identities resamples identities
    and weights each comparison by how often its identities were drawn); unit weights give ``edc_curve``.
    """

    def __init__(self, scores: np.ndarray, issame: np.ndarray, pair_qualities: np.ndarray) -> None:
        self.scores, self.issame = check_scores(scores, issame)
        quality = np.asarray(pair_qualities, dtype=np.float64)
        if quality.shape != self.scores.shape or not np.all(np.isfinite(quality)):
            raise ValueError(f"pair_qualities must be finite with shape {self.scores.shape}, got {quality.shape}")
        self._by_score = np.argsort(-self.scores, kind="stable")
        self._sorted_scores = self.scores[self._by_score]
        # for each position in score order, the last position of its score level (ties end together)
        self._score_level_ends = np.searchsorted(-self._sorted_scores, -self._sorted_scores, side="right") - 1
        self._by_quality = np.argsort(quality, kind="stable")
        self._sorted_quality = quality[self._by_quality]
        self._issame_by_quality = self.issame[self._by_quality]
        self._scores_by_quality = self.scores[self._by_quality]
        self._issame_by_score = self.issame[self._by_score]
        # one point per quality level: where each level starts in the quality order
        self._levels = np.searchsorted(self._sorted_quality, np.unique(self._sorted_quality), side="left")

    def threshold(self, weights: np.ndarray, far: float) -> float | None:
        """The lowest threshold t such that accepting "score >= t" gives a weighted FAR <= far.

        Ties are never split. inf when even the highest impostor score cannot be accepted; None when ``far`` is not
        reachable (the impostor weight is below 1/far), as ``eqface.eval.roc.threshold_at_far`` for unit weights.
        """
        impostor_weight = np.where(self._issame_by_score, 0.0, weights[self._by_score])
        total = impostor_weight.sum()
        allowed = far * total + RATE_TOLERANCE
        if allowed < 1:
            return None
        accepted = np.cumsum(impostor_weight)
        over = (
            accepted[self._score_level_ends] > allowed
        )  # accepting everything down to this score's level breaks the budget
        if not over.any():
            return float(self._sorted_scores[-1])
        first_over = int(np.argmax(over))  # scores are descending: the budget breaks at this score's level
        breaking_score = self._sorted_scores[first_over]
        above = self._sorted_scores[self._sorted_scores > breaking_score]
        return float(above[-1]) if len(above) else float("inf")

    def curve(
        self, weights: np.ndarray, start_fmr: float = DEFAULT_START_FMR, threshold: float | None = None
    ) -> EdcCurve:
        """The EDC of these comparisons with the given non-negative multiplicities (see ``edc_curve``).

        ``threshold``: the score threshold at ``start_fmr`` for these weights when the caller already has it (it
        depends on scores and weights only, so several quality measures of one replicate share it).
        """
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != self.scores.shape or np.any(weights < 0):
            raise ValueError(f"weights must be non-negative with shape {self.scores.shape}, got {weights.shape}")
        if threshold is None:
            threshold = self.threshold(weights, start_fmr)
        if threshold is None:
            n_impostor = float(np.sum(weights[~self.issame]))
            raise ValueError(
                f"start FMR {start_fmr} is not reachable with {n_impostor:g} impostor comparisons "
                f"(needs at least {int(np.ceil(1 / start_fmr))})"
            )
        w = weights[self._by_quality]
        genuine = np.where(self._issame_by_quality, w, 0.0)
        errors = np.where(self._issame_by_quality & (self._scores_by_quality < threshold), w, 0.0)
        discarded = self._levels
        genuine_left = genuine.sum() - np.concatenate([[0.0], np.cumsum(genuine)])[discarded]
        errors_left = errors.sum() - np.concatenate([[0.0], np.cumsum(errors)])[discarded]
        fractions = np.concatenate([[0.0], np.cumsum(w)])[discarded] / w.sum()
        keep = genuine_left > _WEIGHT_EPSILON  # non-increasing along the curve, so this cuts a tail
        return EdcCurve(
            discard_fractions=fractions[keep],
            fnmr=errors_left[keep] / genuine_left[keep],
            min_quality=self._sorted_quality[discarded[keep]],
            threshold=threshold,
            start_fmr=start_fmr,
        )


def edc_pauc(curve: EdcCurve, discard_limit: float = 0.2, normalise: bool = False) -> float:
    """Partial area under the EDC from discard fraction 0 to ``discard_limit`` (trapezoid rule).

    Between points the FNMR is interpolated linearly; beyond the curve's last point (no further discard possible, or
    none that would keep a genuine comparison) it stays at the last FNMR. Lower is better.

    Normalisation: by default the area is raw (FNMR × discard fraction; a flat curve at FNMR f gives f·limit). With
    ``normalise=True`` it is divided by ``discard_limit``, i.e. the mean FNMR over [0, limit], so values at different
    limits are comparable (a flat curve gives f).

    Raises:
        ValueError: unless 0 < discard_limit <= 1.
    """
    if not 0 < discard_limit <= 1:
        raise ValueError(f"discard_limit must lie in (0, 1], got {discard_limit}")
    inside = curve.discard_fractions < discard_limit
    x = np.concatenate([curve.discard_fractions[inside], [discard_limit]])
    y = np.concatenate([curve.fnmr[inside], [np.interp(discard_limit, curve.discard_fractions, curve.fnmr)]])
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))
    return area / discard_limit if normalise else area


def random_quality(n: int, seed: int = 0) -> np.ndarray:
    """Baseline: per-image qualities drawn uniformly from [0, 1) by ``numpy.random.default_rng(seed)``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return np.random.default_rng(seed).random(n)


def embedding_norm_quality(raw_features: np.ndarray) -> np.ndarray:
    """Baseline (MagFace-style): the L2 norm of each feature *before* normalisation, shape [N].

    EDC only uses the order of qualities, so the norms are not rescaled to [0, 1].
    """
    raw_features = np.asarray(raw_features, dtype=np.float64)
    if raw_features.ndim != 2 or not np.all(np.isfinite(raw_features)):
        raise ValueError(f"raw_features must be a finite [N, D] array, got shape {raw_features.shape}")
    return np.linalg.norm(raw_features, axis=1)
