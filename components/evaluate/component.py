"""Evaluate: held-out verification and quality of the final model and of the Step 1 → 2 model → the better
recogniser (the model to export), Metrics (shown in the UI), a ROC, an HTML report with the plots, a Markdown summary,
and the gate the conditional deploy reads."""

from typing import NamedTuple

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    steps_1_2_model: dsl.Input[dsl.Model],
    config_json: str,
    metrics: dsl.Output[dsl.Metrics],
    roc: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Markdown],
    chosen_model: dsl.Output[dsl.Model],
    accuracy_threshold: float = 0.0,
    min_quality_std: float = 0.0,
) -> NamedTuple("Evaluation", [("deploy_approved", bool), ("chosen", str)]):
    """Chooses the better recogniser of the two models and says whether it may be deployed.

    The rule: the higher TAR at FAR 1e-3 on the held-out pairs; on a tie (or when neither reaches FAR 1e-3 with this
    many impostor pairs) the higher 10-fold verification accuracy; on a tie again the final model. Metrics holds the
    chosen model's figures under their plain names, both models' accuracy, TAR@FAR 1e-3 and AUC as
    ``final_*``/``steps_1_2_*``, and ``chosen_final`` (1: the final model was chosen).

    Args:
        model: the final model (Steps 1-2-(3-2)×N).
        steps_1_2_model: the model after Steps 1 → 2, before any Step 3.
        chosen_model: a copy of the chosen model, which the export step exports.
        accuracy_threshold: minimum 10-fold verification accuracy on the held-out identities.
        min_quality_std: minimum standard deviation of the held-out qualities (a branch that says s = 1 for every
            face does not discriminate, whatever the accuracy).

    Returns:
        deploy_approved: True when the chosen model passes the gate (accuracy and quality spread at or above the
            thresholds); the deploy step runs only then.
        chosen: ``final`` or ``steps_1_2``.
    """
    import json
    import os
    from collections import namedtuple

    from eqface.workflow.configure import config_from_json
    from eqface.workflow.dataset import with_dataset
    from eqface.workflow.evaluation import run_evaluation

    cfg = with_dataset(config_from_json(config_json), dataset.path)
    result = run_evaluation(
        model.path,
        cfg,
        report.path,
        summary.path,
        accuracy_threshold,
        min_quality_std,
        steps_1_2_dir=steps_1_2_model.path,
        chosen_dir=chosen_model.path,
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(result.roc_fpr, result.roc_tpr, result.roc_thresholds)
    # The UI reads both from the artifacts' metadata; the files make them downloadable, and kfp.local's cache
    # counts an artifact without a file as missing (the step would never be reused locally).
    curve = {"fpr": result.roc_fpr, "tpr": result.roc_tpr, "thresholds": result.roc_thresholds}
    for artifact, content in ((metrics, result.metrics), (roc, curve)):
        os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
        with open(artifact.path, "w") as f:
            json.dump(content, f, indent=1)
    source = model if result.chosen == "final" else steps_1_2_model
    chosen_model.metadata.update({**source.metadata, "chosen": result.chosen})
    print(f"chosen: {result.chosen}")
    print("\n".join(result.gate_lines))
    return namedtuple("Evaluation", ["deploy_approved", "chosen"])(result.passed, result.chosen)
