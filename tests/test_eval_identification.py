"""Closed-set rank-k and open-set DIR@FPIR on small probe × gallery matrices ranked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.eval.identification import dir_at_fpir, identity_scores, rank_k_accuracy

# gallery: identity 20 is enrolled twice
GALLERY = np.array([10, 20, 30, 20])
PROBES = np.array([10, 20, 30])
SCORES = np.array(
    [
        [0.9, 0.95, 0.3, 0.92],  # mate 0.9; identity 20 scores max(0.95, 0.92): rank 2 (3 by entries)
        [0.2, 0.1, 0.4, 0.7],  # mate max(0.1, 0.7) = 0.7 is the best: rank 1
        [0.6, 0.6, 0.6, 0.1],  # three identities tie at 0.6: ties go against the probe, rank 3
    ]
)


def test_identity_scores_take_best_entry() -> None:
    identities, matrix = identity_scores(SCORES, GALLERY)
    np.testing.assert_array_equal(identities, [10, 20, 30])
    np.testing.assert_array_equal(matrix, [[0.9, 0.95, 0.3], [0.2, 0.7, 0.4], [0.6, 0.6, 0.6]])


def test_rank_k_accuracy_hand_computed() -> None:
    ranks = rank_k_accuracy(SCORES, PROBES, GALLERY, ks=(1, 2, 3, 5))
    assert ranks == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0, 5: 1.0})


def test_closed_set_needs_enrolled_probes() -> None:
    with pytest.raises(ValueError, match=r"not in the gallery: \[99\]"):
        rank_k_accuracy(SCORES, np.array([10, 20, 99]), GALLERY)


def test_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ranks"):
        rank_k_accuracy(SCORES, PROBES, GALLERY, ks=(0,))


# open set: gallery identities 1 and 2; probes 0-3 are mated, probes 4-7 are not enrolled
OPEN_GALLERY = np.array([1, 2])
OPEN_PROBES = np.array([1, 1, 2, 2, 7, 8, 9, 7])
OPEN_SCORES = np.array(
    [
        [0.9, 0.2],  # mated, rank 1, score 0.9
        [0.6, 0.7],  # mated, rank 2 (never a hit)
        [0.1, 0.6],  # mated, rank 1, score 0.6
        [0.3, 0.75],  # mated, rank 1, score 0.75
        [0.8, 0.1],  # non-mated top 0.8
        [0.4, 0.55],  # non-mated top 0.55
        [0.3, 0.2],  # non-mated top 0.3
        [0.1, 0.7],  # non-mated top 0.7
    ]
)


def test_dir_at_fpir_hand_computed() -> None:
    # non-mated tops, descending: 0.8, 0.7, 0.55, 0.3
    # FPIR 0.25 -> 1 false positive allowed -> accept scores > 0.7: hits 0.9, 0.75 -> 2/4
    # FPIR 0.5  -> 2 allowed -> accept scores > 0.55: hits 0.9, 0.6, 0.75 -> 3/4 (probe 1 is rank 2: no hit)
    # FPIR 1.0  -> everything accepted: the three rank-1 probes -> 3/4
    # FPIR 0.1  -> needs 10 non-mated probes -> None
    dirs = dir_at_fpir(OPEN_SCORES, OPEN_PROBES, OPEN_GALLERY, fpirs=(0.1, 0.25, 0.5, 1.0))
    assert dirs == {0.1: None, 0.25: 0.5, 0.5: 0.75, 1.0: 0.75}


def test_dir_ties_at_the_cut_are_not_accepted() -> None:
    scores = OPEN_SCORES.copy()
    scores[5] = [0.4, 0.7]  # non-mated tops now 0.8, 0.7, 0.7, 0.3
    scores[3] = [0.3, 0.7]  # a mated rank-1 score equal to the tied non-mated scores
    # FPIR 0.5 allows 2, but accepting 0.7 would admit 3 non-mated probes: only scores > 0.7 count -> 0.9 -> 1/4
    assert dir_at_fpir(scores, OPEN_PROBES, OPEN_GALLERY, fpirs=(0.5,)) == {0.5: 0.25}


def test_open_set_needs_both_kinds_of_probe() -> None:
    with pytest.raises(ValueError, match="mated and non-mated"):
        dir_at_fpir(SCORES, PROBES, GALLERY)
    with pytest.raises(ValueError, match="mated and non-mated"):
        dir_at_fpir(OPEN_SCORES[4:], OPEN_PROBES[4:], OPEN_GALLERY)


@pytest.mark.parametrize(
    ("scores", "probes", "gallery", "message"),
    [
        (np.zeros((3, 4)), PROBES[:2], GALLERY, "labels must match"),
        (np.zeros((3, 4)), PROBES, GALLERY[:3], "labels must match"),
        (np.zeros(4), PROBES, GALLERY, "matrix"),
        (np.full((3, 4), np.nan), PROBES, GALLERY, "NaN"),
    ],
)
def test_identification_rejects_bad_input(
    scores: np.ndarray, probes: np.ndarray, gallery: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        rank_k_accuracy(scores, probes, gallery)
    with pytest.raises(ValueError, match=message):
        dir_at_fpir(scores, probes, gallery)
