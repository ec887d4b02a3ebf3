"""Calibrated aggregation thresholds on synthetic sets where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.eval.calibration import (
    CalibrationSettings,
    calibrate,
    fnmr_by_quality,
    quality_threshold,
    similarity_threshold,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_set(
    q0: float, identities: int = 60, per_identity: int = 12, dim: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of quality >= q0 lie near their identity's centre; below q0 they point anywhere (useless faces)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(identities, dim)))
    labels = np.repeat(np.arange(identities), per_identity)
    quality = rng.uniform(0, 1, len(labels))
    good = _unit(centres[labels] + 0.02 * rng.normal(size=(len(labels), dim)))
    noise = _unit(rng.normal(size=(len(labels), dim)))
    return np.where((quality >= q0)[:, None], good, noise), quality, labels


def test_similarity_threshold_accepts_at_most_fmr_of_the_impostors():
    scores = np.linspace(0, 1, 1000)
    t = similarity_threshold(scores, 0.01)
    assert (scores > t).sum() == 10 and t == pytest.approx(scores[-11])
    assert similarity_threshold(np.ones(100), 0.01) == 1.0  # ties at t are rejected: nothing accepted
    with pytest.raises(ValueError, match="cannot measure FMR 0.001"):
        similarity_threshold(scores[:999], 1e-3)


def test_f_th_of_random_directions_is_the_gaussian_tail():
    # Impostor cosines of random unit vectors in D dims are ~N(0, 1/D): at FMR 1e-3, t ≈ 3.09 / sqrt(D).
    rng = np.random.default_rng(1)
    dim = 256
    f = _unit(rng.normal(size=(1500, dim)))
    labels = np.arange(1500) // 2  # pairs of "same identity" only to have genuine pairs; they are random too
    result = calibrate(f, np.full(1500, 0.5), labels, CalibrationSettings(fmr=1e-3))
    assert result.thresholds.f_th == pytest.approx(3.090 / np.sqrt(dim), abs=0.01)
    assert result.impostor_pairs == 1500 * 1499 // 2 - 750 and result.genuine_pairs == 750


@pytest.mark.parametrize("q0", [0.2, 0.45, 0.7])
def test_s_th_is_the_quality_below_which_genuine_pairs_fail(q0):
    f, s, labels = synthetic_set(q0)
    result = calibrate(f, s, labels, CalibrationSettings(fmr=1e-3, max_reject=0.9))
    th = result.thresholds
    # The last useless quality below q0 is the answer: within the spacing of 720 uniform qualities of it.
    assert q0 - 0.02 < th.s_th < q0 and not result.capped
    assert th.qwfaf_s_th == th.s_th
    # Every image above s_th is a good one, every one at or below it useless.
    assert np.all(s[s > th.s_th] >= q0) and np.all(s[s <= th.s_th] < q0)


def test_a_model_whose_pairs_all_pass_gets_no_quality_gate():
    f, s, labels = synthetic_set(0.0)
    result = calibrate(f, s, labels)
    assert result.thresholds.s_th == 0.0 and result.fnmr_at_threshold == 0.0


def test_the_quality_gate_never_rejects_more_than_max_reject():
    f, s, labels = synthetic_set(0.8)
    result = calibrate(f, s, labels, CalibrationSettings(max_reject=0.5))
    assert result.capped and result.thresholds.s_th == pytest.approx(np.quantile(s, 0.5, method="lower"))
    assert np.mean(s <= result.thresholds.s_th) <= 0.5 + 1 / len(s)


def test_fnmr_fit_never_rises_with_quality_and_matches_the_step():
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    failed = np.array([1, 1, 0, 1, 0, 0])
    sorted_q, fitted = fnmr_by_quality(q, failed)
    assert np.all(np.diff(fitted) <= 0)
    np.testing.assert_allclose(fitted, [1, 1, 0.5, 0.5, 0, 0])
    s_th, capped = quality_threshold(q, failed, q, max_fnmr=0.4, max_reject=1.0)
    assert s_th == 0.4 and not capped
    s_th, _ = quality_threshold(q, failed, q, max_fnmr=0.5, max_reject=1.0)
    assert s_th == 0.2  # FNMR 0.5 is not "more likely to fail than pass"


def test_large_sets_are_subsampled_across_identities():
    f, s, labels = synthetic_set(0.3, identities=100, per_identity=30)
    result = calibrate(f, s, labels, CalibrationSettings(max_images=1000))
    assert result.images == 1000 and result.identities == 100


def test_invalid_calibration_sets_are_clear_errors():
    f, s, labels = synthetic_set(0.3, identities=5, per_identity=2)
    with pytest.raises(ValueError, match="identities must have shape"):
        calibrate(f, s, labels[:-1])
    with pytest.raises(ValueError, match="no two images of one identity"):
        calibrate(f, s, np.arange(len(s)))
    with pytest.raises(ValueError, match="cannot measure FMR"):
        calibrate(f, s, labels)
    with pytest.raises(ValueError, match="fmr must be in"):
        CalibrationSettings(fmr=0)


def test_thresholds_round_trip_through_metadata():
    th = Thresholds(f_th=0.4123, s_th=0.1875, qwfaf_s_th=0.1875)
    meta = th.as_metadata()
    assert set(meta) == set(contract.THRESHOLD_KEYS)
    assert Thresholds.from_metadata({**meta, "other": "x"}) == th
    assert Thresholds.from_metadata({"other": "x"}) is None
    with pytest.raises(ValueError, match="lacks"):
        Thresholds.from_metadata({contract.S_TH_KEY: "0.2"})
    with pytest.raises(ValueError, match="not numbers"):
        Thresholds.from_metadata({**meta, contract.F_TH_KEY: "high"})
    with pytest.raises(ValueError, match="quality threshold in"):
        Thresholds(f_th=0.4, s_th=1.5, qwfaf_s_th=0.2)
