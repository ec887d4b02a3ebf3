"""TAR at FAR, thresholds, AUC and table formatting on a three-genuine / five-impostor example worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqface.eval.roc import (
    auc,
    format_tar_header,
    format_tar_row,
    max_false_accepts,
    roc_curve,
    tar_at_far,
    threshold_at_far,
)

GENUINE = [0.9, 0.8, 0.4]
IMPOSTOR = [0.85, 0.5, 0.3, 0.2, 0.1]
SCORES = np.array(GENUINE + IMPOSTOR)
ISSAME = np.array([True] * 3 + [False] * 5)


def test_tar_at_far_hand_computed() -> None:
    # FAR 0.2 allows 1 of 5 false accepts: lowest threshold is 0.8 (accepts 0.9, 0.85 impostor, 0.8) -> TAR 2/3
    # FAR 0.4 allows 2: threshold 0.4 (accepts 0.85 and 0.5 impostors) -> TAR 1
    # FAR 0.1 needs 10 impostors -> not reachable
    tars = tar_at_far(SCORES, ISSAME, fars=(0.1, 0.2, 0.4, 1.0))
    assert list(tars) == [0.1, 0.2, 0.4, 1.0]
    assert tars[0.1] is None
    assert tars[0.2] == pytest.approx(2 / 3)
    assert tars[0.4] == 1.0
    assert tars[1.0] == 1.0


def test_threshold_at_far_hand_computed() -> None:
    assert threshold_at_far(SCORES, ISSAME, 0.2) == 0.8
    assert threshold_at_far(SCORES, ISSAME, 0.4) == 0.4
    assert threshold_at_far(SCORES, ISSAME, 0.1) is None


def test_tied_impostors_are_never_split() -> None:
    # two impostors tie at the top; FAR 1/3 allows one false accept, so neither can be accepted
    scores = np.array([0.9, 0.9, 0.9, 0.1])
    issame = np.array([True, False, False, False])
    assert threshold_at_far(scores, issame, 1 / 3) == math.inf
    assert tar_at_far(scores, issame, fars=(1 / 3,)) == {1 / 3: 0.0}
    assert tar_at_far(scores, issame, fars=(2 / 3,)) == {2 / 3: 1.0}


def test_far_exactly_one_over_n_allows_one_false_accept() -> None:
    impostor = np.arange(1000) / 1000  # 0.000 .. 0.999
    scores = np.concatenate([[0.9985, 0.5], impostor])
    issame = np.concatenate([[True, True], np.zeros(1000, dtype=bool)])
    # one false accept allowed (0.999): threshold 0.9985 accepts the first genuine pair only
    assert tar_at_far(scores, issame, fars=(1e-3,)) == {1e-3: 0.5}
    assert threshold_at_far(scores, issame, 1e-3) == 0.9985


def test_default_fars_unreachable_with_few_impostors() -> None:
    tars = tar_at_far(SCORES, ISSAME)
    assert list(tars) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert all(v is None for v in tars.values())


def test_max_false_accepts() -> None:
    assert max_false_accepts(1e-3, 1000) == 1
    assert max_false_accepts(1e-3, 999) is None
    assert max_false_accepts(1e-3, 2999) == 2
    assert max_false_accepts(1e-6, 1_000_000) == 1
    assert max_false_accepts(1.0, 5) == 5
    for bad_rate in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            max_false_accepts(bad_rate, 10)


def test_auc_counts_ordered_pairs() -> None:
    # of 3·5 genuine/impostor pairs: 0.9 beats 5, 0.8 beats 4, 0.4 beats 3 -> 12/15
    assert auc(SCORES, ISSAME) == pytest.approx(0.8)
    assert auc(np.array([0.5, 0.5]), np.array([True, False])) == pytest.approx(0.5)  # a tie counts one half


def test_roc_curve_starts_with_nothing_accepted() -> None:
    curve = roc_curve(SCORES, ISSAME)
    assert curve.thresholds[0] == math.inf and curve.far[0] == 0 and curve.tar[0] == 0
    assert (curve.n_genuine, curve.n_impostor) == (3, 5)
    assert curve.far[-1] == 1 and curve.tar[-1] == 1


def test_roc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="genuine and impostor"):
        tar_at_far(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(ValueError, match="genuine and impostor"):
        auc(np.array([0.1, 0.2]), np.array([False, False]))


def test_format_tar_row_and_header() -> None:
    assert format_tar_row("QW", {1e-4: 0.94512, 1e-6: None}) == "| QW | 94.51 | n/r |"
    assert format_tar_row("QW", {1e-4: 0.94512}, digits=3, percent=False) == "| QW | 0.945 |"
    assert format_tar_header((1e-6, 1e-2)) == "| method | 1e-6 | 1e-2 |\n|---|---|---|"
