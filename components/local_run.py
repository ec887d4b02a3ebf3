"""``eqface pipeline run-local`` (and ``run-local-byor``): a whole Kubeflow pipeline on this machine with kfp's
SubprocessRunner.

Every component runs as a subprocess of this interpreter (``use_venv=False``: the current environment, where eqface
and components are installed); resources, volumes and secrets are ignored locally.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.pipeline import ClusterSettings, build_pipeline


def local_cluster() -> ClusterSettings:
    """Cluster settings without volumes or secret: paths such as /mnt/work mean nothing on this machine."""
    return ClusterSettings(data_pvc="", work_pvc="", models_pvc="", object_store_secret="")


@dataclass(frozen=True)
class LocalRun:
    seconds: float
    metrics: dict[str, float]
    report: Path
    summary: Path
    onnx: Path
    repository: Path
    deployed_version: int | None  # None when the evaluation gate held the deploy back


def run_local(
    root: str | Path,
    repository: str | Path,
    *,
    iterations: int = 1,
    preset: str = "test",
    overrides: Sequence[str] = (),
    triton_url: str = "",
    accuracy_threshold: float = 0.0,
    min_quality_std: float = 0.0,
    gpus: int = 1,
) -> LocalRun:
    """Runs the pipeline (form defaults from ``preset``) and returns where its results are."""
    pipeline = build_pipeline(iterations=iterations, preset=preset, cluster=local_cluster())
    arguments = _arguments(Path(repository).resolve(), overrides, triton_url, accuracy_threshold, min_quality_std, gpus)
    return _run(pipeline, root, repository, arguments)


def run_local_byor(root: str | Path, repository: str | Path, arguments: Mapping[str, Any]) -> LocalRun:
    """Runs the bring-your-own-recogniser pipeline with ``arguments`` (``model_uri`` and any other form value)
    and the local serving variant; returns where its results are."""
    from components.byor_pipeline import build_byor_pipeline

    arguments = {"model_repository": str(Path(repository).resolve()), "serving_variant": "local", **arguments}
    return _run(build_byor_pipeline(local_cluster()), root, repository, arguments)


def _run(pipeline, root: str | Path, repository: str | Path, arguments: dict[str, Any]) -> LocalRun:
    from kfp import local

    from eqface.workflow.deploy import existing_versions

    root, repository = Path(root).resolve(), Path(repository).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    before = set(existing_versions(str(repository)))
    started = time.monotonic()
    with warnings.catch_warnings():
        # The components' image is the cluster's; locally they run in this interpreter, which kfp warns about.
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*", category=RuntimeWarning)
        task = pipeline(**arguments)
    seconds = time.monotonic() - started
    new = sorted(set(existing_versions(str(repository))) - before)
    outputs = task.outputs
    metrics = outputs["metrics"]
    report = Path(outputs["report"].path)
    return LocalRun(
        seconds=seconds,
        metrics={k: float(v) for k, v in metrics.metadata.items()},
        report=report,
        summary=report.parent / "summary",
        onnx=Path(outputs["onnx_model"].path) / "model.onnx",
        repository=repository,
        deployed_version=new[-1] if new else None,
    )


def _arguments(repository: Path, overrides, triton_url, accuracy_threshold, min_quality_std, gpus) -> dict[str, Any]:
    return {
        "model_repository": str(repository),
        "serving_variant": "local",
        "triton_url": triton_url,
        "accuracy_threshold": accuracy_threshold,
        "min_quality_std": min_quality_std,
        "gpus_per_step": gpus,
        "overrides": list(overrides),
    }
