"""Evaluate an imported recogniser and its quality head on the held-out identities: Metrics, ROC, HTML and Markdown
reports, and the gate the conditional deploy reads."""

from kfp import dsl

from components.images import TRAINING_IMAGE


@dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)
def evaluate_byor(
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Input[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    roc: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Markdown],
    accuracy_threshold: float = 0.0,
    min_quality_std: float = 0.0,
) -> bool:
    """Returns True when the model may be deployed (accuracy and quality spread at or above the thresholds).

    Args:
        accuracy_threshold: minimum 10-fold verification accuracy on the held-out identities.
        min_quality_std: minimum standard deviation of the held-out qualities.
    """
    from eqface.workflow.byor import evaluate_step

    result = evaluate_step(model.path, dataset.path, report.path, summary.path, accuracy_threshold, min_quality_std)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    roc.log_roc_curve(result.roc_fpr, result.roc_tpr, result.roc_thresholds)
    print("\n".join(result.gate_lines))
    return result.passed
