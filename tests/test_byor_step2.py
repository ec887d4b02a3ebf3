"""Step 2 on frozen features: leave-one-out class cosines by hand, and Eq. 6 teaching the head which faces are hard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface.byor.quality_training import (
    Step2Config,
    class_cosines,
    load_head,
    predict_quality,
    save_head,
    train_quality_head,
)
from eqface.config import ScheduleConfig
from eqface.eval.roc import auc


def test_class_cosines_by_hand():
    emb = np.array([[[2.0, 0.0], [0.6, 0.8], [0.0, 3.0]]])  # V=1; norms differ: only directions count
    labels = np.array([0, 0, 1])
    centre0 = np.array([1.6, 0.8]) / np.hypot(1.6, 0.8)
    full = class_cosines(emb, labels, leave_one_out=False)[0]
    np.testing.assert_allclose(
        full, [[centre0[0], 0.0], [0.6 * centre0[0] + 0.8 * centre0[1], 0.8], [centre0[1], 1.0]], atol=1e-6
    )
    loo = class_cosines(emb, labels, leave_one_out=True)[0]
    # Faces 0 and 1 only see each other in their own centre (cos 0.6); face 2 is alone, so keeps its centre.
    np.testing.assert_allclose(loo, [[0.6, 0.0], [0.6, 0.8], [centre0[1], 1.0]], atol=1e-6)


def test_leave_one_out_uses_the_clean_view_for_every_view():
    emb = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # view 1 swaps the two faces
    loo = class_cosines(emb, np.array([0, 0]), leave_one_out=True)
    np.testing.assert_allclose(loo[1, :, 0], [1.0, 1.0])  # each degraded copy meets the *other* clean face


def test_eq6_teaches_low_quality_for_faces_the_classifier_gets_wrong():
    rng = np.random.default_rng(0)
    n, classes = 256, 4
    labels = rng.integers(0, classes, n)
    hard = np.arange(n) % 2 == 1
    cos = np.full((1, n, classes), 0.1, np.float32)
    cos[0, np.arange(n), labels] = np.where(hard, 0.05, 0.8)  # hard faces lose to the other classes (0.3)
    cos[0, hard] = np.where(np.arange(classes) == labels[hard, None], 0.05, 0.3)
    tap = rng.normal(size=(1, n, 8)).astype(np.float32)
    tap[0, :, 0] += np.where(hard, -2.0, 2.0)  # the tap carries what makes a face hard
    cfg = Step2Config(schedule=ScheduleConfig(epochs=8, lr=0.01, milestones=()), batch_size=32, hidden=16)
    result = train_quality_head(cos, tap, labels, cfg)
    quality = predict_quality(result.head, tap[0])
    # A misclassified face's loss grows with s (S·Δcos ≈ 47 at s = 1), so the hard ones are pushed to 0 hard and
    # fast; the easy ones rise more slowly. What must hold: easy faces rank above hard ones.
    assert auc(quality, ~hard) > 0.95
    assert quality[~hard].mean() > 0.1 > 0.01 > quality[hard].mean()
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_a_saved_head_loads_with_weights_only(tmp_path):
    from eqface.models.quality import QualityHead

    torch.manual_seed(0)
    head = QualityHead(12, 4).eval()
    save_head(head, tmp_path / "head.pt")
    x = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_array_equal(predict_quality(load_head(tmp_path / "head.pt"), x), predict_quality(head, x))


def test_shapes_that_disagree_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        train_quality_head(np.zeros((1, 4, 2), np.float32), np.zeros((1, 5, 3), np.float32), np.zeros(5, int))


def test_step1_on_frozen_embeddings_fits_unit_class_weights():
    from eqface.byor.quality_training import step2_cosines

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    emb = (np.eye(3, 8)[labels] * 5 + rng.normal(scale=0.8, size=(60, 8)))[None].astype(np.float32)
    cfg = Step2Config(classifier="fitted", classifier_epochs=3, batch_size=16)
    cos = step2_cosines(emb, labels, cfg)
    assert cos.shape == (1, 60, 3) and np.abs(cos).max() <= 1 + 1e-6
    assert (cos[0].argmax(1) == labels).mean() > 0.9
    with pytest.raises(ValueError, match="classifier must be one of"):
        Step2Config(classifier="svm")
