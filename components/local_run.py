"""``eqface pipeline run-local`` (and ``run-local-byor``): a whole Kubeflow pipeline on this machine with kfp's
SubprocessRunner.

Every component runs as a subprocess of this interpreter (``use_venv=False``: the current environment, where eqface
and components are installed); resources, volumes and secrets are ignored locally. With ``cache=True`` kfp.local keeps
its task cache under the pipeline root and the data step is cached too (the local data does not change between
runs): a second run with equal inputs reuses every finished step, as a cluster run with ``--cache-data`` does.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.pipeline import ClusterSettings, build_pipeline


def local_cluster(cache_data: bool = False) -> ClusterSettings:
    """Cluster settings without volumes or secrets: paths such as /mnt/work mean nothing on this machine. A locked local
    Triton's control key reaches the deploy step from this process's environment (``EQFACE_TRITON_CONTROL_KEY_FILE``
    or ``EQFACE_TRITON_CONTROL_KEY``, eqface.serving.control), not from the cluster's Secret mount."""
    return ClusterSettings(
        data_pvc="",
        work_pvc="",
        models_pvc="",
        object_store_secret="",
        triton_control_secret="",
        cache_data=cache_data,
    )


@dataclass(frozen=True)
class LocalRun:
    seconds: float
    metrics: dict[str, float]
    report: Path
    summary: Path
    onnx: Path
    repository: Path
    deployed_version: int | None  # None when the evaluation gate held the deploy back
    chosen_model: Path | None  # the recogniser evaluate chose (final or Step 1 → 2 model) and export exported


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
    cache: bool = False,
) -> LocalRun:
    """Runs the pipeline (form defaults from ``preset``) and returns where its results are.

    ``cache``: reuse the steps a previous run under ``root`` finished with equal inputs (kfp.local's task cache).
    """
    pipeline = build_pipeline(iterations=iterations, preset=preset, cluster=local_cluster(cache_data=cache))
    arguments = _arguments(Path(repository).resolve(), overrides, triton_url, accuracy_threshold, min_quality_std, gpus)
    return _run(pipeline, root, repository, arguments, cache)


def run_local_byor(root: str | Path, repository: str | Path, arguments: Mapping[str, Any]) -> LocalRun:
    """Runs the bring-your-own-recogniser pipeline with ``arguments`` (``model_uri`` and any other form value)
    and the local serving variant; returns where its results are."""
    from components.byor_pipeline import build_byor_pipeline

    arguments = {"model_repository": str(Path(repository).resolve()), "serving_variant": "local", **arguments}
    return _run(build_byor_pipeline(local_cluster()), root, repository, arguments)


def _run(
    pipeline, root: str | Path, repository: str | Path, arguments: dict[str, Any], cache: bool = False
) -> LocalRun:
    from kfp import local

    from eqface.workflow.deploy import existing_versions

    root, repository = Path(root).resolve(), Path(repository).resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=cache)
    before = set(existing_versions(str(repository)))
    started = time.monotonic()
    with warnings.catch_warnings(), _named_outputs_in_conditions():
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
        chosen_model=Path(outputs["model"].path) if "model" in outputs else None,
    )


@contextmanager
def _named_outputs_in_conditions() -> Iterator[None]:
    """Lets kfp.local evaluate ``dsl.If`` on a named task output, as the KFP backend does.

    kfp.local (2.17, and kubeflow/pipelines master in 2026-08) resolves a condition's ``<task>-<output>`` channel only
    when the output is called ``Output``; any other name (the deploy gate's ``evaluate-deploy_approved``) is looked up
    as a pipeline input, is not found, and the condition is taken as false: the deploy would never run locally. While
    this context is open, such a channel resolves to the output of the first ``<task>`` prefix that has it.
    """
    from kfp.local.orchestrator.enhanced_dag_orchestrator import ConditionEvaluator

    original = ConditionEvaluator._resolve_pipeline_channel

    def resolve(channel_ref: str, io_store: Any) -> Any:
        ref = channel_ref.removeprefix("pipelinechannel--")
        for cut in (i for i, ch in enumerate(ref) if ch == "-"):
            try:
                return io_store.get_task_output(ref[:cut], ref[cut + 1 :])
            except (KeyError, ValueError):
                continue
        return original(channel_ref, io_store)

    ConditionEvaluator._resolve_pipeline_channel = staticmethod(resolve)
    try:
        yield
    finally:
        ConditionEvaluator._resolve_pipeline_channel = staticmethod(original)


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
