"""The evaluate step: its numbers are ``eqface train``'s summary's; its gate and report."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from eqface.models import build_model
from eqface.workflow import report
from eqface.workflow.configure import build_config, preset_form
from eqface.workflow.dataset import prepare_dataset, with_dataset
from eqface.workflow.evaluation import evaluate_model, gate, metric_values, run_evaluation


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    cfg = build_config("test", {**preset_form("test"), "eval_identities": 4})
    prepare_dataset(cfg, root / "dataset")
    cfg = with_dataset(cfg, root / "dataset")
    torch.manual_seed(0)
    net = build_model(cfg.model)
    (root / "model").mkdir()
    torch.save({"net": net.state_dict(), "model_config": json.dumps(asdict(cfg.model))}, root / "model" / "final.pt")
    return root, cfg, net


def test_numbers_equal_the_training_summary(setup):
    """The model loaded from its file scores as the network in memory, and the UI metrics are the summary's."""
    from eqface.train.heldout import evaluate_held_out
    from eqface.train.plan import load_training_data
    from eqface.train.summary import summary_dict

    root, cfg, net = setup
    ev = evaluate_model(root / "model" / "final.pt", cfg)
    _, held_out = load_training_data(cfg)
    in_memory = evaluate_held_out(
        net.eval(), held_out, tuple(cfg.model.image_size), torch.device("cpu"), cfg.train.seed
    )
    np.testing.assert_allclose(ev.scores, in_memory.scores, atol=1e-6)
    expected = summary_dict(in_memory)
    values = metric_values(ev)
    assert values["verification_accuracy"] == pytest.approx(expected["verification"]["accuracy"], abs=1e-12)
    assert values["verification_auc"] == pytest.approx(expected["verification"]["auc"], abs=1e-12)
    assert values["quality_std"] == pytest.approx(expected["quality"]["std"], abs=1e-6)
    for kind, mean in expected["quality_by_condition"].items():
        assert values[f"quality_mean_{kind}"] == pytest.approx(mean, abs=1e-6)
    assert values["spearman_quality_vs_degradation"] == pytest.approx(expected["spearman_quality_vs_degradation"])
    assert values["heldout_identities"] == 4 and ev.genuine_pairs == expected["verification"]["genuine_pairs"]


def test_gate():
    values = {"verification_accuracy": 0.91, "quality_std": 0.02}
    assert gate(values, 0.9)[0] is True
    passed, lines = gate(values, 0.95, 0.05)
    assert passed is False and lines[0].startswith("FAIL: verification accuracy 0.9100")
    assert gate(values, 0.9, 0.05)[0] is False  # a branch that barely discriminates holds the deploy back


def test_reports_hold_the_tables_and_every_plot(setup, tmp_path):
    root, cfg, _ = setup
    out = run_evaluation(root / "model", cfg, tmp_path / "r.html", tmp_path / "r.md", accuracy_threshold=0.0)
    html = (tmp_path / "r.html").read_text()
    for title in (
        "ROC on held-out pairs",
        "Quality by condition",
        "Error versus discard (EDC)",
        "Quality vs synthetic degradation strength",
    ):
        assert title in html
    assert html.count("<img") == 4  # no training history beside this hand-made model
    assert "| ROC AUC |" in (tmp_path / "r.md").read_text()
    assert out.passed and len(out.roc_fpr) == len(out.roc_tpr) == len(out.roc_thresholds) <= 200
    assert np.all(np.diff(out.roc_fpr) >= 0) and max(out.roc_thresholds) <= 1.0  # no inf: the UI reads JSON


def test_history_plot_spans_all_stages():
    history = [
        {"stage": "step1", "epoch": 1, "loss": 3.0, "accuracy": 0.2},
        {"stage": "step2-1", "epoch": 1, "loss": 2.0, "accuracy": 0.3, "quality_mean": 0.5, "quality_std": 0.1},
    ]
    fig = report._history(history)
    assert [line.get_label() for line in fig.axes[0].lines] == ["step1", "step2-1"]


def test_the_better_recogniser_is_chosen_by_tar_then_accuracy(setup):
    from dataclasses import replace

    from eqface.workflow.evaluation import FINAL, STEPS_1_2, choose_recogniser

    root, cfg, _ = setup
    ev = evaluate_model(root / "model" / "final.pt", cfg)

    def model(tar, accuracy):
        return replace(ev, tar={**ev.tar, 1e-3: tar}, accuracy=accuracy)

    assert choose_recogniser(model(0.50, 0.90), model(0.40, 0.99)) == FINAL  # TAR first
    assert choose_recogniser(model(0.40, 0.99), model(0.50, 0.90)) == STEPS_1_2
    assert choose_recogniser(model(0.50, 0.90), model(0.50, 0.91)) == STEPS_1_2  # tie: accuracy
    assert choose_recogniser(model(0.50, 0.90), model(0.50, 0.90)) == FINAL  # tie again: the paper's full method
    assert choose_recogniser(model(None, 0.90), model(0.01, 0.80)) == STEPS_1_2  # a reached TAR beats none
    assert choose_recogniser(model(None, 0.92), model(None, 0.91)) == FINAL


def test_the_chosen_model_is_the_better_ones_copy_and_both_are_reported(setup, tmp_path):
    import hashlib

    root, cfg, _ = setup
    torch.manual_seed(1)  # a second, different network: one of the two scores better
    other = tmp_path / "other"
    other.mkdir()
    net = build_model(cfg.model)
    torch.save({"net": net.state_dict(), "model_config": json.dumps(asdict(cfg.model))}, other / "final.pt")
    out = run_evaluation(
        root / "model",
        cfg,
        tmp_path / "r.html",
        tmp_path / "r.md",
        accuracy_threshold=0.0,
        steps_1_2_dir=other,
        chosen_dir=tmp_path / "chosen",
    )
    m = out.metrics
    evs = {
        "final": evaluate_model(root / "model" / "final.pt", cfg),
        "steps_1_2": evaluate_model(other / "final.pt", cfg),
    }
    for name, ev in evs.items():
        assert m[f"{name}_verification_accuracy"] == pytest.approx(ev.accuracy)
        assert m[f"{name}_verification_auc"] == pytest.approx(ev.auc)
    rank = {n: (-1.0 if ev.tar[1e-3] is None else ev.tar[1e-3], ev.accuracy) for n, ev in evs.items()}
    better = max(rank, key=lambda n: (rank[n], n == "final"))
    assert out.chosen == better and m["chosen_final"] == float(better == "final")
    source = root / "model" if better == "final" else other
    digest = [hashlib.sha256((d / "final.pt").read_bytes()).hexdigest() for d in (source, tmp_path / "chosen")]
    assert digest[0] == digest[1]
    assert m["verification_accuracy"] == pytest.approx(evs[better].accuracy)
    markdown = (tmp_path / "r.md").read_text()
    assert "Model selection" in markdown and f"{better} (deployed)" in markdown
