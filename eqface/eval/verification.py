"""1:1 verification accuracy by the k-fold protocol of LFW: each fold is scored at a threshold fitted on the others."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqface.eval.pairs import check_scores


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of ``kfold_accuracy``.

    Attributes:
        mean: mean of the fold accuracies.
        std: population standard deviation (ddof=0) of the fold accuracies, as LFW results are usually reported.
        fold_accuracies: accuracy on each held-out fold, in fold order.
        thresholds: the threshold fitted on the other folds and applied to each fold.
    """

    mean: float
    std: float
    fold_accuracies: tuple[float, ...]
    thresholds: tuple[float, ...]


def fold_indices(n: int, n_folds: int = 10, shuffle: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Splits ``range(n)`` into ``n_folds`` folds.

    Without shuffling the folds are contiguous, as the LFW pair lists are laid out; the first ``n % n_folds`` folds
    get one extra item (the same split as ``sklearn.model_selection.KFold``). With ``shuffle`` the items are first
    permuted by ``numpy.random.default_rng(seed)``; each fold's indices are returned sorted.

    Raises:
        ValueError: unless ``2 <= n_folds <= n``.
    """
    if not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be between 2 and the number of pairs ({n}), got {n_folds}")
    items = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [np.sort(fold) for fold in np.array_split(items, n_folds)]


def accuracy_at(scores: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of the rule "same identity iff score >= t" for every threshold t.

    Args:
        scores: pair similarities, shape [P].
        issame: ground truth, shape [P].
        thresholds: candidate thresholds, shape [T].

    Returns:
        Accuracies, shape [T].
    """
    scores, issame = check_scores(scores, issame)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    genuine = np.sort(scores[issame])
    impostor = np.sort(scores[~issame])
    true_accepts = len(genuine) - np.searchsorted(genuine, thresholds, side="left")
    true_rejects = np.searchsorted(impostor, thresholds, side="left")
    return (true_accepts + true_rejects) / len(scores)


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Thresholds that realise every distinct decision on ``scores``.

    The lowest score (accept all), the midpoints between consecutive distinct scores, and the next float above the
    highest score (accept none). Midpoints keep the fitted threshold away from the training scores themselves.
    """
    unique = np.unique(np.asarray(scores, dtype=np.float64))
    midpoints = (unique[:-1] + unique[1:]) / 2
    return np.concatenate([unique[:1], midpoints, [np.nextafter(unique[-1], np.inf)]])


def best_threshold(scores: np.ndarray, issame: np.ndarray, thresholds: np.ndarray | None = None) -> float:
    """The threshold with the highest accuracy on these pairs; among equally accurate ones, the lowest.

    Args:
        scores: pair similarities, shape [P].
        issame: ground truth, shape [P].
        thresholds: candidates (for example insightface's fixed grid); by default ``candidate_thresholds(scores)``,
            which finds the exact optimum.
    """
    scores, issame = check_scores(scores, issame)
    if thresholds is None:
        thresholds = candidate_thresholds(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
        raise ValueError("thresholds must be a non-empty 1-D array of finite values")
    accuracies = accuracy_at(scores, issame, thresholds)
    best = np.flatnonzero(accuracies == accuracies.max())
    return float(np.min(thresholds[best]))


def kfold_accuracy(
    scores: np.ndarray,
    issame: np.ndarray,
    n_folds: int = 10,
    thresholds: np.ndarray | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
) -> VerificationResult:
    """Verification accuracy by k-fold cross-validation of the decision threshold (the LFW protocol).

    For each fold, the threshold is fitted (``best_threshold``) on the other ``n_folds - 1`` folds and the fold's
    accuracy is measured at it: the threshold never sees the pairs it is scored on.

    Args:
        scores: pair similarities (higher = more alike), shape [P].
        issame: ground truth, shape [P].
        n_folds: number of folds (10 for LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).
        thresholds: candidate thresholds; by default the exact optimum on each training split.
        shuffle: permute pairs before splitting (use when pairs are not already interleaved across folds).
        seed: seed of the permutation when ``shuffle`` is set.

    Raises:
        ValueError: on invalid scores/labels or an impossible number of folds.
    """
    scores, issame = check_scores(scores, issame)
    accuracies, fitted = [], []
    for fold in fold_indices(len(scores), n_folds, shuffle, seed):
        train = np.ones(len(scores), dtype=bool)
        train[fold] = False
        threshold = best_threshold(scores[train], issame[train], thresholds)
        accuracies.append(float(accuracy_at(scores[fold], issame[fold], np.array([threshold]))[0]))
        fitted.append(threshold)
    return VerificationResult(
        mean=float(np.mean(accuracies)),
        std=float(np.std(accuracies)),
        fold_accuracies=tuple(accuracies),
        thresholds=tuple(fitted),
    )
