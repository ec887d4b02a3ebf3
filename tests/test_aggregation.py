"""Quality-aware template aggregation (paper Eq. 7–9) on 2-D vectors with hand-computed templates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqface.aggregation import (
    Decision,
    ProgressiveQWFA,
    mean_template,
    progressive_templates,
    qwfa,
    qwfaf,
)

F1 = np.array([1.0, 0.0])
F2 = np.array([0.0, 1.0])
F3 = np.array([0.6, 0.8])  # unit length; cosine 0.6 with F1, 0.8 with F2
FRAMES = np.stack([F1, F2, F3])
UNGATED = {"f_th": -2.0, "s_th": -1.0}  # every frame passes both gates


def unit(*v: float) -> np.ndarray:
    x = np.array(v, dtype=np.float64)
    return x / math.sqrt(float(x @ x))


def snapshot(state: ProgressiveQWFA) -> tuple:
    mean = None if state.weighted_mean is None else state.weighted_mean.copy()
    return mean, state.s_sum, state.frames, state.accepted, state.provisional


def same_state(a: tuple, b: tuple) -> bool:
    arrays_equal = (a[0] is None and b[0] is None) or np.array_equal(a[0], b[0])
    return arrays_equal and a[1:] == b[1:]


# --- batch aggregation (Eq. 7 and the QWFAF filter) ---------------------------------------------------------------


def test_mean_template_is_normalised_average() -> None:
    np.testing.assert_allclose(mean_template(FRAMES[:2]), [1 / math.sqrt(2), 1 / math.sqrt(2)])
    # (1 + 0 + 0.6, 0 + 1 + 0.8) / 3 ∝ (8, 9)
    np.testing.assert_allclose(mean_template(FRAMES), unit(8, 9))


def test_qwfa_weights_by_quality() -> None:
    # 0.75·(1, 0) + 0.25·(0, 1) = (0.75, 0.25) ∝ (3, 1)
    np.testing.assert_allclose(qwfa(FRAMES[:2], np.array([0.75, 0.25])), unit(3, 1))
    # 0.5·(1, 0) + 0.25·(0, 1) + 0.25·(0.6, 0.8) = (0.65, 0.45) ∝ (13, 9)
    np.testing.assert_allclose(qwfa(FRAMES, np.array([0.5, 0.25, 0.25])), unit(13, 9))


def test_qwfa_all_zero_qualities_falls_back_to_mean() -> None:
    np.testing.assert_allclose(qwfa(FRAMES, np.zeros(3)), unit(8, 9))


def test_qwfaf_keeps_only_frames_at_or_above_threshold() -> None:
    # mean(s) = 1/3 >= 0.3, so only F1 (s = 0.5) survives the filter
    np.testing.assert_allclose(qwfaf(FRAMES, np.array([0.5, 0.25, 0.25]), s_th=0.3), [1.0, 0.0])
    # mean(s) = 0.45 >= 0.4: F1 (0.6) and F3 (0.45) kept, F2 (0.3) dropped: 0.6·F1 + 0.45·F3 = (0.87, 0.36) ∝ (29, 12)
    np.testing.assert_allclose(qwfaf(FRAMES, np.array([0.6, 0.3, 0.45]), s_th=0.4), unit(29, 12))
    # a quality exactly at s_th is kept (s >= s_th): all three frames, weighted as in qwfa ∝ (13, 9)
    np.testing.assert_allclose(qwfaf(FRAMES, np.array([0.5, 0.25, 0.25]), s_th=0.25), unit(13, 9))


def test_qwfaf_falls_back_to_plain_average_when_mean_quality_is_low() -> None:
    # mean(s) = 0.2 < 0.3: plain (unweighted) average of all three frames ∝ (8, 9)
    np.testing.assert_allclose(qwfaf(FRAMES, np.array([0.2, 0.1, 0.3]), s_th=0.3), unit(8, 9))


def test_qwfaf_mean_exactly_at_threshold_filters() -> None:
    # mean(0.6, 0.0) = 0.3 is not below s_th = 0.3, so the filter applies and keeps F1 only
    np.testing.assert_allclose(qwfaf(FRAMES[:2], np.array([0.6, 0.0]), s_th=0.3), [1.0, 0.0])


@pytest.mark.parametrize(
    ("features", "qualities", "message"),
    [
        (np.array([[1.0, np.nan]]), np.array([0.5]), "NaN"),
        (np.zeros((0, 2)), np.zeros(0), "shape"),
        (np.zeros(2), np.array([0.5]), "shape"),
        (FRAMES, np.array([0.5, 0.5]), "shape"),
        (FRAMES, np.array([0.5, 0.5, 1.5]), r"\[0, 1\]"),
        (FRAMES, np.array([0.5, -0.1, 0.5]), r"\[0, 1\]"),
        (FRAMES, np.array([0.5, np.nan, 0.5]), "NaN"),
    ],
)
def test_batch_aggregation_rejects_invalid_input(features: np.ndarray, qualities: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        qwfa(features, qualities)
    with pytest.raises(ValueError, match=message):
        qwfaf(features, qualities, s_th=0.3)


# --- progressive QWFA (Eq. 8–9) ------------------------------------------------------------------------------------


def test_first_frame_seeds_the_template() -> None:
    state = ProgressiveQWFA()
    result = state.update(F3, 0.9)
    assert result.decision is Decision.SEEDED and result.similarity is None
    np.testing.assert_allclose(state.template, F3, rtol=1e-6)
    assert (state.s_sum, state.frames, state.accepted, state.provisional) == (0.9, 1, 1, False)


def test_paper_gates_accept_and_reject_with_reasons() -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    state.update(F1, 0.9)
    steps = [
        (F2, 0.9, Decision.REJECTED_SIMILARITY, 0.0),  # cosine 0 <= 0.5
        (F3, 0.2, Decision.REJECTED_QUALITY, 0.6),  # quality 0.2 <= 0.3
        (F3, 0.3, Decision.REJECTED_QUALITY, 0.6),  # the quality gate is strict: s must exceed s_th
        (F3, 0.45, Decision.ACCEPTED, 0.6),  # cosine 0.6 > 0.5 and 0.45 > 0.3
    ]
    for feature, quality, decision, similarity in steps:
        result = state.update(feature, quality)
        assert result.decision is decision
        assert result.similarity == pytest.approx(similarity)
        assert result.decision.merged == (decision is Decision.ACCEPTED)
    # (0.9·(1, 0) + 0.45·(0.6, 0.8)) / 1.35 = (1.17, 0.36) / 1.35 ∝ (13, 4)
    np.testing.assert_allclose(state.weighted_mean, np.array([1.17, 0.36]) / 1.35, rtol=1e-6)
    np.testing.assert_allclose(state.template, unit(13, 4), rtol=1e-6)
    assert state.s_sum == pytest.approx(1.35)
    assert (state.frames, state.accepted) == (5, 2)


def test_similarity_gate_is_strict() -> None:
    state = ProgressiveQWFA(f_th=0.0, s_th=0.3)
    state.update(F1, 0.9)
    assert state.update(F2, 0.9).decision is Decision.REJECTED_SIMILARITY  # cosine exactly 0 is not > 0


def test_gated_frame_leaves_template_unchanged() -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    state.update(F1, 0.8)
    state.update(F3, 0.8)
    before = snapshot(state)
    template = state.template.copy()
    state.update(F2, 1.0)  # cosine with the template < 0.5
    state.update(F3, 0.1)  # low quality
    after = snapshot(state)
    np.testing.assert_array_equal(state.template, template)
    assert np.array_equal(before[0], after[0]) and before[1] == after[1] and after[2] == before[2] + 2


def test_ungated_progressive_equals_qwfa_on_every_prefix() -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(12, 5))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    qualities = rng.uniform(0.05, 1.0, size=12)
    templates = progressive_templates(features, qualities, **UNGATED)
    for i in range(12):
        np.testing.assert_allclose(templates[i], qwfa(features[: i + 1], qualities[: i + 1]), atol=1e-6)


def test_ungated_progressive_with_zero_qualities_equals_qwfa() -> None:
    # All-zero weights make Eq. 7 fall back to the plain mean; the recursion must not collapse to a zero vector.
    qualities = np.array([0.0, 0.0, 0.5])
    templates = progressive_templates(FRAMES, qualities, **UNGATED)
    np.testing.assert_allclose(templates[1], unit(1, 1), atol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(templates[i], qwfa(FRAMES[: i + 1], qualities[: i + 1]), atol=1e-6)
    assert np.all(np.abs(np.linalg.norm(templates, axis=1) - 1) < 1e-6)


def test_batch_progressive_equals_repeated_update() -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(20, 4)) + np.array([2.0, 0.0, 0.0, 0.0])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    qualities = rng.uniform(0.0, 1.0, size=20)
    batch = progressive_templates(features, qualities, f_th=0.5, s_th=0.3)
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    decisions = set()
    for i, (f, s) in enumerate(zip(features, qualities, strict=True)):
        decisions.add(state.update(f, float(s)).decision)
        np.testing.assert_array_equal(batch[i], state.template)
    assert {Decision.ACCEPTED, Decision.REJECTED_QUALITY} <= decisions  # the sequence exercises the gates


# --- reseeding a low-quality first frame -----------------------------------------------------------------------------


def test_low_quality_seed_is_replaced_by_first_good_frame() -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    assert state.update(F1, 0.1).decision is Decision.SEEDED
    assert state.provisional
    assert state.update(F2, 0.2).decision is Decision.REJECTED_QUALITY  # too poor to reseed
    result = state.update(F2, 0.8)  # orthogonal to the seed, yet it replaces it
    assert result.decision is Decision.RESEEDED and result.decision.merged
    assert result.similarity == pytest.approx(0.0)
    np.testing.assert_allclose(state.template, F2)
    assert (state.s_sum, state.provisional) == (0.8, False)
    assert state.update(F1, 0.9).decision is Decision.REJECTED_SIMILARITY  # no longer provisional


def test_strict_paper_mode_keeps_low_quality_seed() -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3, reseed_low_quality=False)
    state.update(F1, 0.1)
    assert not state.provisional
    assert state.update(F2, 0.8).decision is Decision.REJECTED_SIMILARITY
    np.testing.assert_allclose(state.template, F1)


def test_high_quality_seed_is_not_provisional() -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    state.update(F1, 0.9)
    assert state.update(F2, 0.9).decision is Decision.REJECTED_SIMILARITY


# --- invalid input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "quality"),
    [
        (np.array([np.nan, 1.0]), 0.5),
        (np.array([np.inf, 1.0]), 0.5),
        (np.array([1.0, 0.0, 0.0]), 0.5),  # wrong length
        (np.array([[1.0, 0.0]]), 0.5),  # not a single vector
        (np.float64(1.0), 0.5),  # scalar
        (F1, 1.5),
        (F1, -0.1),
        (F1, float("nan")),
    ],
)
def test_invalid_update_raises_and_leaves_state_untouched(feature: np.ndarray, quality: float) -> None:
    state = ProgressiveQWFA(f_th=0.5, s_th=0.3)
    state.update(F1, 0.2)  # provisional seed: a valid frame would reseed it, an invalid one must not
    before = snapshot(state)
    with pytest.raises(ValueError):
        state.update(feature, quality)
    assert same_state(before, snapshot(state))


def test_progressive_templates_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="shape"):
        progressive_templates(FRAMES, np.array([0.5, 0.5]))
