"""k-fold verification accuracy on a six-pair example worked out by hand (scores are exact binary fractions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqface.eval.verification import (
    VerificationResult,
    accuracy_at,
    best_threshold,
    candidate_thresholds,
    fold_indices,
    kfold_accuracy,
)

# folds of two pairs each: (0, 1), (2, 3), (4, 5)
SCORES = np.array([0.875, 0.25, 0.75, 0.5, 0.625, 0.125])
ISSAME = np.array([True, False, True, False, False, True])


def test_accuracy_at_accepts_scores_equal_to_threshold() -> None:
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    issame = np.array([True, False, True, False])
    # t=0: all accepted (2 TP) -> 2/4; t=0.8: 0.9 TP, 0.8 FP, 0.3 FN, 0.1 TN -> 2/4;
    # t=0.85: 0.9 TP, 0.8 TN, 0.3 FN, 0.1 TN -> 3/4; t=1: nothing accepted (2 TN) -> 2/4
    np.testing.assert_allclose(accuracy_at(scores, issame, np.array([0.0, 0.8, 0.85, 1.0])), [0.5, 0.5, 0.75, 0.5])


def test_candidate_thresholds_are_midpoints_plus_ends() -> None:
    thresholds = candidate_thresholds(np.array([0.375, 0.125, 0.375, 0.75]))
    np.testing.assert_array_equal(thresholds[:3], [0.125, 0.25, 0.5625])
    assert thresholds[3] > 0.75 and thresholds[3] == np.nextafter(0.75, 1)


def test_best_threshold_exact_optimum() -> None:
    # candidates 0.125, 0.3125, 0.5625, 0.75, >0.875 give accuracies 1/2, 3/4, 1, 3/4, 1/2
    scores = np.array([0.125, 0.5, 0.625, 0.875])
    issame = np.array([False, False, True, True])
    assert best_threshold(scores, issame) == 0.5625


def test_best_threshold_ties_take_lowest() -> None:
    # genuine 0.25 below impostor 0.5: "accept all" (0.25) and "accept none" (>0.5) both score 1/2
    assert best_threshold(np.array([0.25, 0.5]), np.array([True, False])) == 0.25


def test_fold_indices_contiguous_like_lfw() -> None:
    folds = fold_indices(10, 3)
    assert [f.tolist() for f in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_fold_indices_shuffled_is_a_seeded_partition() -> None:
    folds = fold_indices(10, 3, shuffle=True, seed=5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert [len(f) for f in folds] == [4, 3, 3]
    assert [f.tolist() for f in folds] == [f.tolist() for f in fold_indices(10, 3, shuffle=True, seed=5)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in fold_indices(10, 3)]


def test_kfold_accuracy_hand_computed() -> None:
    # fold 0: train on pairs 2-5 -> best threshold 0.6875 (acc 3/4); test 0.875 TP, 0.25 TN -> 1
    # fold 1: train on pairs 0,1,4,5 -> 0.75; test 0.75 (>= 0.75) TP, 0.5 TN -> 1
    # fold 2: train on pairs 0-3 -> 0.625 (acc 1); test 0.625 impostor accepted (FP), 0.125 FN -> 0
    result = kfold_accuracy(SCORES, ISSAME, n_folds=3)
    assert isinstance(result, VerificationResult)
    assert result.fold_accuracies == (1.0, 1.0, 0.0)
    assert result.thresholds == (0.6875, 0.75, 0.625)
    assert result.mean == pytest.approx(2 / 3)
    assert result.std == pytest.approx(math.sqrt(2 / 9))  # population std of (1, 1, 0)


def test_kfold_accuracy_with_fixed_threshold_grid() -> None:
    # a single candidate is always chosen: fold accuracies at 0.3 are 1, 1/2 (0.5 is a FP), 0 (FP and FN)
    result = kfold_accuracy(SCORES, ISSAME, n_folds=3, thresholds=np.array([0.3]))
    assert result.fold_accuracies == (1.0, 0.5, 0.0)
    assert result.thresholds == (0.3, 0.3, 0.3)


def test_kfold_accuracy_perfect_separation() -> None:
    scores = np.tile([0.9, 0.1], 10)
    issame = np.tile([True, False], 10)
    result = kfold_accuracy(scores, issame)
    assert result.mean == 1.0 and result.std == 0.0 and len(result.fold_accuracies) == 10


def test_kfold_accuracy_result_is_frozen() -> None:
    result = kfold_accuracy(SCORES, ISSAME, n_folds=3)
    with pytest.raises(AttributeError):
        result.mean = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_folds": 1}, "n_folds"),
        ({"n_folds": 7}, "n_folds"),
        ({"n_folds": 3, "thresholds": np.array([])}, "thresholds"),
        ({"n_folds": 3, "thresholds": np.array([np.nan])}, "thresholds"),
    ],
)
def test_kfold_accuracy_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kfold_accuracy(SCORES, ISSAME, **kwargs)


def test_kfold_accuracy_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy(np.array([0.1, np.nan, 0.3, 0.4]), np.array([1, 0, 1, 0]), n_folds=2)
    with pytest.raises(ValueError, match="equal"):
        kfold_accuracy(SCORES, ISSAME[:5], n_folds=2)
