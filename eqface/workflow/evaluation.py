"""The evaluate step: the held-out evaluation (:mod:`eqface.train.heldout`, the numbers of ``eqface train``'s
summary) of the final model and of the Step 1 → 2 model, the choice of the better recogniser, the scalar metrics the
Kubeflow UI shows, the reports and the deploy gate.

Step 3 retrains the backbone with quality weights; on small data it can make the recogniser worse (issue 12), so
the step deploys whichever of the two models recognises better on the held-out identities
(:func:`choose_recogniser`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqface.config import EQFaceConfig
from eqface.eval.edc import edc_pauc
from eqface.train.heldout import EDC_DISCARD_LIMIT, HeldOutEvaluation
from eqface.workflow import report


def evaluate_model(model_file: str | Path, cfg: EQFaceConfig) -> HeldOutEvaluation:
    """The held-out evaluation of the model in ``model_file`` on the held-out identities of ``cfg.data``.

    Raises:
        ValueError: the data has no held-out identities (``data.eval_identities`` is 0).
    """
    from eqface.train.checkpoint import load_model
    from eqface.train.distributed import resolve_device
    from eqface.train.heldout import evaluate_held_out
    from eqface.train.plan import load_training_data

    net, model_cfg = load_model(model_file)
    _, held_out = load_training_data(cfg)
    if held_out is None:
        raise ValueError("no held-out identities to evaluate on (data.eval_identities is 0)")
    device = resolve_device(cfg.train.device)
    return evaluate_held_out(net, held_out, tuple(model_cfg.image_size), device, cfg.train.seed)


def metric_values(ev: HeldOutEvaluation) -> dict[str, float]:
    """Scalar metrics for the Kubeflow UI (names are stable: dashboards and run comparisons key on them)."""
    q = ev.quality["clean"]
    values: dict[str, float] = {
        "verification_accuracy": ev.accuracy,
        "verification_accuracy_std": ev.accuracy_std,
        "verification_auc": ev.auc,
        "quality_mean": float(q.mean()),
        "quality_std": float(q.std()),
        "heldout_identities": float(ev.identities),
        "heldout_images": float(ev.images),
    }
    for far, tar in ev.tar.items():
        if tar is not None:
            values[f"tar_at_far_{far:.0e}".replace("e-0", "e-")] = tar
    for kind, qs in ev.quality.items():
        values[f"quality_mean_{kind}"] = float(qs.mean())
    degraded = [float(qs.mean()) for kind, qs in ev.quality.items() if kind != "clean"]
    values["quality_drop_degraded"] = float(q.mean()) - float(np.mean(degraded))
    if ev.edc is not None:
        values["edc_pauc"] = edc_pauc(ev.edc, EDC_DISCARD_LIMIT, normalise=True)
        values["edc_pauc_random"] = edc_pauc(ev.edc_random, EDC_DISCARD_LIMIT, normalise=True)
        values["edc_start_fmr"] = ev.edc.start_fmr
    if ev.spearman is not None:
        values["spearman_quality_vs_degradation"] = ev.spearman
    return values


def gate(values: dict[str, float], accuracy_threshold: float, min_quality_std: float = 0.0) -> tuple[bool, list[str]]:
    """Whether the model may be deployed, and one line per check (what was required, what was measured)."""
    checks = [
        ("verification accuracy", values["verification_accuracy"], accuracy_threshold),
        ("quality std (the branch must discriminate)", values["quality_std"], min_quality_std),
    ]
    lines, passed = [], True
    for name, measured, required in checks:
        ok = measured >= required
        passed &= ok
        lines.append(f"{'pass' if ok else 'FAIL'}: {name} {measured:.4f} (required >= {required:.4f})")
    return passed, lines


SELECTION_FAR = 1e-3
FINAL, STEPS_1_2 = "final", "steps_1_2"  # the two candidates: after 1-2-(3-2)×N, and after Steps 1 → 2 only
COMPARED = ("verification_accuracy", "tar_at_far_1e-3", "verification_auc")


def choose_recogniser(final: HeldOutEvaluation, steps_1_2: HeldOutEvaluation) -> str:
    """:data:`FINAL` or :data:`STEPS_1_2`: the higher TAR at FAR 1e-3 on the held-out pairs; on a tie (or when
    neither reaches FAR 1e-3 with this many impostor pairs) the higher 10-fold verification accuracy; on a tie again
    the final model (the paper's full method)."""

    def rank(ev: HeldOutEvaluation) -> tuple[float, float]:
        tar = ev.tar.get(SELECTION_FAR)
        return (-1.0 if tar is None else tar, ev.accuracy)

    return FINAL if rank(final) >= rank(steps_1_2) else STEPS_1_2


def comparison_values(candidates: dict[str, dict[str, float]], chosen: str) -> dict[str, float]:
    """``<candidate>_<metric>`` for the compared metrics of each candidate, and ``chosen_final`` (1: final model)."""
    values = {f"{name}_{m}": scores[m] for name, scores in candidates.items() for m in COMPARED if m in scores}
    return {**values, "chosen_final": float(chosen == FINAL)}


@dataclass(frozen=True)
class EvaluationOutputs:
    """What the evaluate component hands to KFP: scalar metrics, a downsampled ROC, and the gate's verdict."""

    metrics: dict[str, float]
    roc_fpr: list[float]
    roc_tpr: list[float]
    roc_thresholds: list[float]
    passed: bool
    gate_lines: list[str]
    chosen: str  # FINAL or STEPS_1_2: the model the metrics (unprefixed), the report and the gate describe


def run_evaluation(
    model_dir: str | Path,
    cfg: EQFaceConfig,
    report_html: str | Path,
    report_markdown: str | Path,
    accuracy_threshold: float,
    min_quality_std: float = 0.0,
    roc_points: int = 200,
    *,
    steps_1_2_dir: str | Path | None = None,
    chosen_dir: str | Path | None = None,
) -> EvaluationOutputs:
    """Evaluates the final model (and the Step 1 → 2 model in ``steps_1_2_dir``, when given), chooses the better
    recogniser, copies it to ``chosen_dir``, writes the HTML and Markdown reports and decides whether it may be
    deployed.

    ``cfg`` must read the prepared dataset (see :func:`eqface.workflow.dataset.with_dataset`).
    """
    from eqface.train.trainer import FINAL as FINAL_FILE
    from eqface.workflow.training import read_history

    dirs = {FINAL: Path(model_dir)}
    if steps_1_2_dir is not None:
        dirs[STEPS_1_2] = Path(steps_1_2_dir)
    evaluations = {name: evaluate_model(folder / FINAL_FILE, cfg) for name, folder in dirs.items()}
    chosen = FINAL if len(evaluations) == 1 else choose_recogniser(evaluations[FINAL], evaluations[STEPS_1_2])
    ev = evaluations[chosen]
    values = metric_values(ev)
    if len(evaluations) > 1:
        values.update(comparison_values({n: metric_values(e) for n, e in evaluations.items()}, chosen))
    if chosen_dir is not None:
        shutil.copytree(dirs[chosen], chosen_dir, dirs_exist_ok=True)
    passed, lines = gate(values, accuracy_threshold, min_quality_std)
    tables = report.tables(ev, values, lines, _run_settings(cfg))
    if len(evaluations) > 1:
        tables.insert(1, report.selection_table(evaluations, chosen, SELECTION_FAR))
    verdict = "PASSED" if passed else "FAILED"
    title = f"EQFace evaluation ({_LABELS[chosen]}): {100 * ev.accuracy:.2f}% verification accuracy, {verdict} gate"
    for path in (report_html, report_markdown):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_html).write_text(report.render_html(title, tables, report.figures(ev, read_history(dirs[FINAL]))))
    Path(report_markdown).write_text(report.render_markdown(title, tables))
    keep = np.unique(np.linspace(1, len(ev.roc.far) - 1, num=min(roc_points, len(ev.roc.far) - 1)).astype(int))
    return EvaluationOutputs(
        metrics=values,
        roc_fpr=ev.roc.far[keep].tolist(),
        roc_tpr=ev.roc.tar[keep].tolist(),
        roc_thresholds=np.clip(ev.roc.thresholds[keep], -1.0, 1.0).tolist(),
        passed=passed,
        gate_lines=lines,
        chosen=chosen,
    )


def _run_settings(cfg: EQFaceConfig) -> dict[str, object]:
    return {
        "backbone": cfg.model.backbone,
        "embedding size": cfg.model.embedding_size,
        "image size": "×".join(map(str, cfg.model.image_size)),
        "iterations (3 → 2)": cfg.train.iterations,
        "epochs step 1 / 2 / 3": f"{cfg.train.step1.epochs} / {cfg.train.step2.epochs} / {cfg.train.step3.epochs}",
        "margins m1, m2, m3, S": f"{cfg.margin.m1}, {cfg.margin.m2}, {cfg.margin.m3}, {cfg.margin.scale}",
        "QWDF s_th": cfg.train.qwdf_threshold,
        "data": f"{cfg.data.source} {cfg.data.path}".strip(),
    }


_LABELS = {FINAL: "final model, Steps 1-2-(3-2)×N", STEPS_1_2: "Step 1 → 2 model"}
