"""The one held-out evaluator behind ``eqface train``'s summary and the pipeline's evaluate step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqface.config import preset
from eqface.data.augment import DEGRADATIONS
from eqface.eval.roc import auc, roc_curve
from eqface.eval.verification import kfold_accuracy
from eqface.models import build_model
from eqface.train.heldout import DEGRADATION_STRENGTH, degraded_copy, evaluate_held_out, held_out_pairs
from eqface.train.plan import load_training_data
from eqface.train.summary import format_summary, summary_dict
from eqface.train.trainer import embed_source

CPU = torch.device("cpu")


def test_pairs_take_every_genuine_pair_and_at_least_ten_impostors():
    labels = np.array([0, 0, 0, 1, 1, 2])
    a, b, same = held_out_pairs(labels, seed=0)
    assert int(same.sum()) == 3 + 1  # C(3,2) + C(2,2)
    assert int((~same).sum()) == 10  # max(4, 10), below the 15 - 4 impostor pairs there are
    np.testing.assert_array_equal(labels[a] == labels[b], same)
    assert np.all(a != b)


def test_degraded_copy_keeps_labels_and_changes_pixels():
    cfg = preset("test")
    _, held_out = load_training_data(cfg)
    size = tuple(cfg.model.image_size)
    copy = degraded_copy(held_out, size, "blur", seed=1)
    assert len(copy) == len(held_out) and np.array_equal(copy.labels, held_out.labels)
    assert copy.image(0).shape[:2] == size and DEGRADATION_STRENGTH > 0
    assert not np.array_equal(copy.image(0), degraded_copy(held_out, size, "noise", seed=1).image(0))


@pytest.fixture(scope="module")
def evaluation():
    cfg = preset("test")
    torch.manual_seed(0)
    net = build_model(cfg.model).eval()
    _, held_out = load_training_data(cfg)
    size = tuple(cfg.model.image_size)
    return net, held_out, size, evaluate_held_out(net, held_out, size, CPU, seed=0)


def test_every_number_comes_from_the_eval_metrics(evaluation):
    net, held_out, size, ev = evaluation
    assert ev.auc == pytest.approx(auc(ev.scores, ev.issame), abs=1e-12)
    assert ev.accuracy == pytest.approx(kfold_accuracy(ev.scores, ev.issame).mean, abs=1e-12)
    np.testing.assert_array_equal(ev.roc.far, roc_curve(ev.scores, ev.issame).far)
    _, q = embed_source(net, held_out, size, CPU)
    np.testing.assert_allclose(ev.quality["clean"], q, atol=1e-6)
    assert list(ev.quality) == ["clean", *DEGRADATIONS]
    assert ev.identities == held_out.num_classes and ev.images == len(held_out)
    assert ev.genuine_pairs + ev.impostor_pairs == len(ev.scores)


def test_summary_reports_the_evaluation(evaluation):
    *_, ev = evaluation
    s = summary_dict(ev)
    assert s["verification"]["auc"] == ev.auc and s["verification"]["genuine_pairs"] == ev.genuine_pairs
    assert s["quality"]["n"] == ev.images and sum(s["quality"]["histogram"]["counts"]) == ev.images
    assert s["quality_by_condition"]["clean"] == pytest.approx(float(ev.quality["clean"].mean()))
    assert s["spearman_quality_vs_degradation"] == ev.spearman  # the synthetic data knows its degradations
    assert f"AUC {ev.auc:.4f}" in format_summary(s)
