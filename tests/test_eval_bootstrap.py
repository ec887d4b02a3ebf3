"""Bootstrap over identities: resampling weights, intervals that cover the estimate and shrink with more people."""

from __future__ import annotations

import numpy as np
import pytest

from eqface.eval.bootstrap import Interval, comparison_weights, identity_replicates, pauc_intervals
from eqface.eval.edc import edc_curve, edc_pauc, pair_quality
from eqface.eval.pairs import every_pair


def test_comparison_weights_hand_computed() -> None:
    counts = np.array([2.0, 0.0, 3.0])
    a = np.array([0, 0, 1, 2, 0])
    b = np.array([0, 1, 1, 2, 2])
    np.testing.assert_array_equal(comparison_weights(a, b, counts), [2, 0, 0, 3, 6])


def test_identity_replicates_draw_n_of_n() -> None:
    codes, counts = identity_replicates(np.array(["x", "y", "x", "z"]), replicates=50, seed=1)
    np.testing.assert_array_equal(codes, [0, 1, 0, 2])
    assert counts.shape == (50, 3) and np.all(counts.sum(axis=1) == 3)
    with pytest.raises(ValueError):
        identity_replicates(np.array([1, 1]), replicates=5)


def _population(n_ids: int, per_id: int, seed: int):
    """Images whose embedding noise grows as their quality falls: a quality that predicts errors."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_ids), per_id)
    quality = rng.random(len(labels))
    centres = rng.normal(size=(n_ids, 32))
    noise = np.where(quality > 0.1, 0.2, 3.0)  # a tenth of the images are poor
    feats = centres[labels] + rng.normal(size=(len(labels), 32)) * noise[:, None]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    a, b, same = every_pair(labels)
    scores = np.sum(feats[a] * feats[b], axis=1)
    return labels, quality, a, b, same, scores


def test_intervals_cover_the_estimate_and_separate_a_good_measure_from_random() -> None:
    labels, quality, a, b, same, scores = _population(150, 4, seed=0)
    rng = np.random.default_rng(3)
    measures = {"good": pair_quality(quality, a, b), "random": pair_quality(rng.random(len(labels)), a, b)}
    result = pauc_intervals(
        scores, same, measures, labels[a], labels[b], replicates=200, seed=0, differences=[("good", "random")]
    )
    for name in measures:
        for limit in (0.2, 0.3):
            interval = result[name][limit]
            assert interval.low <= interval.estimate <= interval.high
            expected = edc_pauc(edc_curve(scores, same, measures[name]), limit)
            assert interval.estimate == pytest.approx(expected)
    assert result["good"][0.2].high < result["random"][0.2].low  # the informative quality wins, with margin
    assert not result["good"][0.2].overlaps(result["random"][0.2])
    paired = result["good-random"][0.2]
    assert paired.estimate == pytest.approx(result["good"][0.2].estimate - result["random"][0.2].estimate)
    assert paired.high < 0  # the paired interval excludes 0 ...
    marginal = (
        result["good"][0.2].high - result["good"][0.2].low + result["random"][0.2].high - result["random"][0.2].low
    )
    assert paired.high - paired.low < marginal  # ... and is tighter than the two marginal ones together


def test_more_identities_give_narrower_intervals() -> None:
    widths = []
    for n_ids in (20, 150):
        labels, quality, a, b, same, scores = _population(n_ids, 4, seed=n_ids)
        result = pauc_intervals(
            scores, same, {"q": pair_quality(quality, a, b)}, labels[a], labels[b], replicates=200, start_fmr=1e-2
        )
        widths.append(result["q"][0.2].high - result["q"][0.2].low)
    assert widths[1] < widths[0]


def test_identities_must_agree_with_issame() -> None:
    with pytest.raises(ValueError, match="disagrees"):
        pauc_intervals(
            np.array([0.1, 0.2]),
            np.array([True, False]),
            {"q": np.array([0.1, 0.2])},
            np.array([0, 0]),
            np.array([0, 0]),
        )


def test_interval_overlap() -> None:
    assert Interval(0.5, 0.4, 0.6).overlaps(Interval(0.7, 0.55, 0.8))
    assert not Interval(0.5, 0.4, 0.5).overlaps(Interval(0.7, 0.55, 0.8))


def test_a_threshold_set_equal_to_the_comparisons_changes_nothing() -> None:
    from eqface.eval.bootstrap import ThresholdSet

    labels, quality, a, b, same, scores = _population(30, 4, seed=7)
    measures = {"q": pair_quality(quality, a, b)}
    plain = pauc_intervals(scores, same, measures, labels[a], labels[b], replicates=50, start_fmr=1e-2)
    given = ThresholdSet(scores, same, labels[a], labels[b])
    same_set = pauc_intervals(
        scores, same, measures, labels[a], labels[b], replicates=50, start_fmr=1e-2, threshold_set=given
    )
    assert plain == same_set
    lower = ThresholdSet(scores - 0.5, same, labels[a], labels[b])  # a laxer threshold: fewer false non-matches
    laxer = pauc_intervals(
        scores, same, measures, labels[a], labels[b], replicates=50, start_fmr=1e-2, threshold_set=lower
    )
    assert laxer["q"][0.2].estimate < plain["q"][0.2].estimate
