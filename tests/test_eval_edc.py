"""Error-versus-Discard curves and pAUC on an eight-comparison example worked out by hand, plus quality baselines."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.eval.edc import (
    edc_curve,
    edc_pauc,
    embedding_norm_quality,
    pair_quality,
    random_quality,
)

# comparison:     c0    c1    c2    c3     c4     c5     c6     c7
SCORES = np.array([0.9, 0.3, 0.5, 0.8, 0.6, 0.2, 0.1, 0.7])
ISSAME = np.array([True, True, True, False, False, False, False, True])
QUALITY = np.array([0.9, 0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8])
# Start FMR 0.25 over 4 impostors allows one false match (0.8): threshold 0.7 (the lowest score above 0.6).
# Genuine c1 (0.3) and c2 (0.5) are false non-matches; c0 and c7 (0.7 >= 0.7) match.
# Discarding by quality c1, c2, c3, c4, c5, c6, c7 (c0 is the top level, never discarded):
#   d=0: 2/4   d=1: 1/3   d=2..7: 0
EXPECTED_FRACTIONS = np.arange(8) / 8
EXPECTED_FNMR = np.array([1 / 2, 1 / 3, 0, 0, 0, 0, 0, 0])


def test_edc_curve_hand_computed() -> None:
    curve = edc_curve(SCORES, ISSAME, QUALITY, start_fmr=0.25)
    assert curve.threshold == 0.7
    assert curve.start_fmr == 0.25
    np.testing.assert_allclose(curve.discard_fractions, EXPECTED_FRACTIONS)
    np.testing.assert_allclose(curve.fnmr, EXPECTED_FNMR)
    np.testing.assert_array_equal(curve.min_quality, [0.1, 0.2, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_edc_curve_ignores_comparison_order() -> None:
    order = np.array([5, 2, 7, 0, 3, 6, 1, 4])
    curve = edc_curve(SCORES[order], ISSAME[order], QUALITY[order], start_fmr=0.25)
    np.testing.assert_allclose(curve.fnmr, EXPECTED_FNMR)


def test_tied_qualities_are_discarded_together() -> None:
    quality = QUALITY.copy()
    quality[2] = 0.1  # c1 and c2 now tie at the lowest quality: no point that discards only one of them
    curve = edc_curve(SCORES, ISSAME, quality, start_fmr=0.25)
    np.testing.assert_allclose(curve.discard_fractions, np.array([0, 2, 3, 4, 5, 6, 7]) / 8)
    np.testing.assert_allclose(curve.fnmr, [1 / 2, 0, 0, 0, 0, 0, 0])


def test_constant_quality_gives_single_point() -> None:
    curve = edc_curve(SCORES, ISSAME, np.full(8, 0.5), start_fmr=0.25)
    np.testing.assert_array_equal(curve.discard_fractions, [0.0])
    np.testing.assert_array_equal(curve.fnmr, [0.5])
    assert edc_pauc(curve, 0.2) == pytest.approx(0.5 * 0.2)  # flat beyond the last point


def test_curve_stops_before_running_out_of_genuine_comparisons() -> None:
    quality = QUALITY.copy()
    quality[6] = 0.95  # the top level is now the impostor c6: discarding c0 would leave no genuine comparison
    curve = edc_curve(SCORES, ISSAME, quality, start_fmr=0.25)
    np.testing.assert_allclose(curve.discard_fractions, np.arange(7) / 8)
    assert np.all(np.isfinite(curve.fnmr))


def test_pauc_hand_computed() -> None:
    curve = edc_curve(SCORES, ISSAME, QUALITY, start_fmr=0.25)
    # [0, 0.125]: 0.125·(1/2 + 1/3)/2 = 5/96; FNMR at 0.2 interpolates 1/3 → 0 over [0.125, 0.25]: 2/15;
    # [0.125, 0.2]: 0.075·(1/3 + 2/15)/2 = 7/400
    assert edc_pauc(curve, 0.2) == pytest.approx(5 / 96 + 7 / 400)
    assert edc_pauc(curve, 0.2, normalise=True) == pytest.approx((5 / 96 + 7 / 400) / 0.2)
    # limit on a point: 5/96 + 0.125·(1/3)/2 = 7/96
    assert edc_pauc(curve, 0.25) == pytest.approx(7 / 96)


def test_pauc_limit_must_be_a_fraction() -> None:
    curve = edc_curve(SCORES, ISSAME, QUALITY, start_fmr=0.25)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="discard_limit"):
            edc_pauc(curve, bad)


def test_unreachable_start_fmr() -> None:
    with pytest.raises(ValueError, match="not reachable with 4 impostor comparisons"):
        edc_curve(SCORES, ISSAME, QUALITY)  # default 1e-3 needs 1000 impostors


def test_edc_rejects_bad_quality() -> None:
    with pytest.raises(ValueError, match="pair_qualities"):
        edc_curve(SCORES, ISSAME, QUALITY[:7], start_fmr=0.25)
    with pytest.raises(ValueError, match="pair_qualities"):
        edc_curve(SCORES, ISSAME, np.full(8, np.nan), start_fmr=0.25)


def test_pair_quality_is_the_lower_image_quality() -> None:
    np.testing.assert_array_equal(pair_quality(np.array([0.2, 0.9, 0.5]), [0, 1], [2, 2]), [0.2, 0.5])
    with pytest.raises(ValueError, match="quality"):
        pair_quality(np.array([[0.2]]), [0], [0])


def test_random_quality_is_seeded() -> None:
    q = random_quality(5, seed=3)
    assert q.shape == (5,) and np.all((q >= 0) & (q < 1))
    np.testing.assert_array_equal(q, random_quality(5, seed=3))
    assert not np.array_equal(q, random_quality(5, seed=4))
    with pytest.raises(ValueError):
        random_quality(-1)


def test_embedding_norm_quality() -> None:
    np.testing.assert_allclose(embedding_norm_quality(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])), [5.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="raw_features"):
        embedding_norm_quality(np.array([1.0, 2.0]))


def test_baselines_plug_into_edc() -> None:
    # image i of comparison c is image 2c (a) and 2c+1 (b); an informative quality (c1, c2 low) beats a flat one
    image_quality = np.repeat(QUALITY, 2)
    idx_a, idx_b = np.arange(0, 16, 2), np.arange(1, 16, 2)
    informed = edc_curve(SCORES, ISSAME, pair_quality(image_quality, idx_a, idx_b), start_fmr=0.25)
    flat = edc_curve(SCORES, ISSAME, pair_quality(np.ones(16), idx_a, idx_b), start_fmr=0.25)
    randomised = edc_curve(SCORES, ISSAME, pair_quality(random_quality(16), idx_a, idx_b), start_fmr=0.25)
    assert edc_pauc(informed, 0.3) < edc_pauc(flat, 0.3)
    assert randomised.fnmr[0] == flat.fnmr[0] == 0.5  # every curve starts at the same FNMR


@pytest.mark.parametrize("seed", range(5))
def test_unit_weights_threshold_equals_the_roc_threshold(seed: int) -> None:
    from eqface.eval.edc import SortedComparisons
    from eqface.eval.roc import threshold_at_far

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 40, 3000) / 40  # many ties
    issame = rng.random(3000) < 0.2
    comparisons = SortedComparisons(scores, issame, rng.random(3000))
    for far in (1e-3, 3e-3, 0.01, 0.1, 0.5, 1.0):
        assert comparisons.threshold(np.ones(3000), far) == threshold_at_far(scores, issame, far)


@pytest.mark.parametrize("seed", range(5))
def test_integer_weights_equal_repeated_comparisons(seed: int) -> None:
    from eqface.eval.edc import SortedComparisons

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 50, 2500) / 50
    issame = rng.random(2500) < 0.3
    quality = rng.integers(0, 30, 2500) / 30
    weights = rng.integers(0, 4, 2500)
    weighted = SortedComparisons(scores, issame, quality).curve(weights, start_fmr=0.01)
    repeat = np.repeat(np.arange(2500), weights)
    plain = edc_curve(scores[repeat], issame[repeat], quality[repeat], start_fmr=0.01)
    assert weighted.threshold == plain.threshold
    np.testing.assert_allclose(weighted.discard_fractions, plain.discard_fractions)
    np.testing.assert_allclose(weighted.fnmr, plain.fnmr)
    for limit in (0.2, 0.3):
        assert edc_pauc(weighted, limit) == pytest.approx(edc_pauc(plain, limit))
