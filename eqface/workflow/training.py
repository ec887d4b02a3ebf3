"""One training step as a pipeline component runs it: in this process, or under torchrun (DDP) for several GPUs.

The step trains in a work folder — the output artifact itself, or a folder on a persistent volume named after the
stage and a hash of the step's inputs, so that a retried pod (or a later run of the same step on the same inputs)
resumes mid-epoch from ``checkpoint.pt`` instead of starting over — and
leaves in the output artifact ``final.pt``, ``config.json``, the step's ``log.jsonl`` and ``history.jsonl``: every
epoch record of every step so far, each tagged with its stage (``step1``, ``step2-1``, ``step3-1``, …).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eqface.config import EQFaceConfig, to_json
from eqface.train.steps import Step
from eqface.train.trainer import FINAL, LOG
from eqface.workflow.dataset import with_dataset

HISTORY = "history.jsonl"
CONFIG = "config.json"
_CLI_STEP = {Step.ONE: "1", Step.TWO: "2", Step.THREE: "3"}


def work_folder(checkpoint_root: str, stage: str, inputs: Mapping[str, Any]) -> Path | None:
    """Where a step trains when checkpoints must outlive the pod: ``<root>/<stage>-<hash of inputs>``; None without
    a root.

    ``inputs`` is everything the step computes from (the configuration, the input artifacts' URIs, the process
    count): a retried pod finds its own checkpoints, a step on other inputs never does. The folder is not named after
    the run, because the run id would then have to be a task input, and KFP's cache key includes every input value:
    no step would ever be reused by a later run.
    """
    if not checkpoint_root:
        return None
    digest = hashlib.sha256(json.dumps(dict(inputs), sort_keys=True).encode()).hexdigest()[:16]
    return Path(checkpoint_root) / f"{stage}-{digest}"


def train_step(
    step: str,
    cfg: EQFaceConfig,
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    init_dir: str | Path | None = None,
    gpus: int = 1,
    stage: str | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Trains ``step`` (``step1``/``step2``/``step3``) on the prepared dataset; returns the artifact's metadata.

    Args:
        step: which step; Steps 2 and 3 start from ``init_dir`` (the previous step's output artifact).
        cfg: the resolved configuration (its data section is replaced by the prepared dataset's).
        dataset_dir: the prepare-data step's artifact.
        out_dir: the output Model artifact folder.
        gpus: processes to train with; above 1 the step runs under ``torchrun --nproc_per_node=gpus`` (NCCL on
            GPUs, gloo on CPU).
        stage: the step's name in the history (default: ``step``).
        work_dir: where to train (default: ``out_dir``); an existing ``checkpoint.pt`` there is resumed.
    """
    kind = Step(step)
    stage = stage or step
    if gpus < 0:
        raise ValueError(f"gpus must be >= 0, got {gpus}")
    init_file = Path(init_dir) / FINAL if init_dir is not None else None
    if kind is not Step.ONE and init_file is None:
        raise ValueError(f"{step} starts from the previous step's model (init_dir)")
    cfg = with_dataset(cfg, dataset_dir)
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if gpus > 1:
        _train_under_torchrun(kind, cfg, work, init_file, gpus)
    else:
        _train_here(kind, cfg, work, init_file)
    if work.resolve() != out_dir.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (FINAL, LOG, CONFIG):
            shutil.copyfile(work / name, out_dir / name)
    records = _epoch_records(out_dir / LOG)
    inherited = read_history(init_dir) if init_dir is not None else []
    history = inherited + [{**r, "stage": stage} for r in records]
    (out_dir / HISTORY).write_text("".join(json.dumps(r) + "\n" for r in history))
    return _metadata(kind, stage, records, gpus, time.monotonic() - started)


def read_history(model_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(model_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_here(step: Step, cfg: EQFaceConfig, work: Path, init_file: Path | None) -> None:
    from eqface.train.distributed import init_distributed, shutdown
    from eqface.train.plan import train_one_step

    env = init_distributed(cfg.train.device)
    try:
        train_one_step(step, cfg, work, env, init_file)
    finally:
        shutdown(env)


def torchrun_command(step: Step, config_file: Path, work: Path, init_file: Path | None, gpus: int) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m eqface.cli train --step S ...`` (torchrun as its module)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "eqface.cli",
        "train",
        "--step",
        _CLI_STEP[step],
        "--config",
        str(config_file),
        "--out",
        str(work),
        "--no-summary",
    ]
    return command + (["--init", str(init_file)] if init_file is not None else [])


def _train_under_torchrun(step: Step, cfg: EQFaceConfig, work: Path, init_file: Path | None, gpus: int) -> None:
    with tempfile.TemporaryDirectory(prefix="eqface-step-") as tmp:
        config_file = Path(tmp) / CONFIG
        config_file.write_text(to_json(cfg))
        command = torchrun_command(step, config_file, work, init_file, gpus)
        print("running:", " ".join(command), flush=True)
        result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun ({gpus} processes) exited with status {result.returncode}; see the log above")


def _epoch_records(log: Path) -> list[dict[str, Any]]:
    """The step's epoch records, one per epoch (a resumed step may have logged its last epoch twice)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _metadata(step: Step, stage: str, records: list[dict[str, Any]], gpus: int, seconds: float) -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {
        "step": step.value,
        "stage": stage,
        "epochs": len(records),
        "processes": max(gpus, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "seconds": round(seconds, 1),
    }
    if records:
        last = records[-1]
        meta.update(final_loss=last["loss"], final_accuracy=last["accuracy"])
        if "quality_mean" in last:
            meta.update(final_quality_mean=last["quality_mean"], final_quality_std=last["quality_std"])
    return meta
