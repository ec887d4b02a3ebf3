"""Pair sampling, cross-set pairs and cosine scores on tiny label sets enumerated by hand."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.eval.pairs import all_pairs, check_scores, cosine_scores, make_pairs

# identities: images 0, 1, 2 are "a"; 3, 4 are "b"; 5 is "c"
LABELS = np.array(["a", "a", "a", "b", "b", "c"])
GENUINE = {(0, 1), (0, 2), (1, 2), (3, 4)}
IMPOSTOR = {(i, j) for i in range(6) for j in range(i + 1, 6)} - GENUINE  # 15 - 4 = 11 pairs


def as_set(idx_a: np.ndarray, idx_b: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in zip(idx_a, idx_b, strict=True)}


def test_exhaustive_request_returns_every_pair_once() -> None:
    idx_a, idx_b, issame = make_pairs(LABELS, 4, 11, np.random.default_rng(0))
    assert len(idx_a) == 15 and np.all(idx_a < idx_b)
    assert as_set(idx_a[issame], idx_b[issame]) == GENUINE
    assert as_set(idx_a[~issame], idx_b[~issame]) == IMPOSTOR
    assert len(as_set(idx_a, idx_b)) == 15  # no duplicates


def test_unsorted_integer_labels() -> None:
    labels = np.array([2, 0, 2, 1, 0])  # genuine pairs: (0, 2) for 2, (1, 4) for 0
    idx_a, idx_b, issame = make_pairs(labels, 2, 8, np.random.default_rng(1))
    assert as_set(idx_a[issame], idx_b[issame]) == {(0, 2), (1, 4)}
    assert np.all((labels[idx_a] == labels[idx_b]) == issame)


def test_same_generator_state_gives_same_pairs() -> None:
    first = make_pairs(LABELS, 3, 5, np.random.default_rng(42))
    second = make_pairs(LABELS, 3, 5, np.random.default_rng(42))
    for x, y in zip(first, second, strict=True):
        np.testing.assert_array_equal(x, y)


def test_sampling_reaches_every_genuine_pair() -> None:
    seen = set()
    for seed in range(60):
        idx_a, idx_b, _ = make_pairs(LABELS, 1, 0, np.random.default_rng(seed))
        seen |= as_set(idx_a, idx_b)
    assert seen == GENUINE


def test_genuine_and_impostor_pairs_are_mixed() -> None:
    labels = np.repeat(np.arange(50), 4)
    _, _, issame = make_pairs(labels, 100, 100, np.random.default_rng(0))
    first_half = issame[:100].mean()
    assert 0.3 < first_half < 0.7  # not all genuine first: contiguous folds see both kinds


def test_no_genuine_pair_possible() -> None:
    with pytest.raises(ValueError, match="no identity has two images"):
        make_pairs(np.array([1, 2, 3]), 1, 0, np.random.default_rng(0))


def test_too_many_pairs_requested() -> None:
    with pytest.raises(ValueError, match="5 genuine pairs but the labels only give 4"):
        make_pairs(LABELS, 5, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="12 impostor pairs but the labels only give 11"):
        make_pairs(LABELS, 0, 12, np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 0"):
        make_pairs(LABELS, -1, 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        make_pairs(LABELS, 1, 1, 0)  # type: ignore[arg-type]


def test_all_pairs_row_major() -> None:
    idx_a, idx_b, issame = all_pairs(np.array(["x", "y"]), np.array(["y", "x", "z"]))
    np.testing.assert_array_equal(idx_a, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(idx_b, [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(issame, [False, True, False, True, False, False])
    similarity = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(similarity[idx_a, idx_b], similarity.ravel())


def test_cosine_scores_rowwise() -> None:
    # (3,4)·(4,3) / (5·5) = 24/25; (1,0)·(0,2) = 0; rows need not be unit length
    scores = cosine_scores(np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[4.0, 3.0], [0.0, 2.0]]))
    np.testing.assert_allclose(scores, [0.96, 0.0])


def test_cosine_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        cosine_scores(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        cosine_scores(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))


@pytest.mark.parametrize(
    ("scores", "issame", "message"),
    [
        ([0.1, 0.2], [True], "equal non-zero length"),
        ([], [], "equal non-zero length"),
        ([0.1, np.nan], [True, False], "NaN"),
        ([0.1, 0.2], [1, 2], "booleans"),
    ],
)
def test_check_scores_rejects(scores: list, issame: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_scores(np.array(scores), np.array(issame))


def test_check_scores_accepts_zero_one() -> None:
    _, issame = check_scores(np.array([0.5, 0.1]), np.array([1, 0]))
    assert issame.dtype == bool and issame.tolist() == [True, False]
