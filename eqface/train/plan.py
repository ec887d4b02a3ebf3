"""The EQFace training plan: Step 1 → Step 2 → (Step 3 → Step 2) × iterations, resumable by re-running.

Layout of ``out_dir``: ``config.json`` (resolved), one folder per step (``step1``, ``step2-1``, ``step3-1``,
``step2-2``, …) with its ``final.pt``/``checkpoint.pt``/``log.jsonl``, ``model.pt`` (the final network: a quality
branch trained on the final backbone) and ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from eqface.config import EQFaceConfig, config_from_dict, to_json, training_settings
from eqface.data import build_source, split_identities
from eqface.data.sources import FaceSource
from eqface.train import checkpoint
from eqface.train.distributed import DistEnv, barrier
from eqface.train.steps import Step
from eqface.train.trainer import FINAL, run_step

MODEL_FILE = "model.pt"


def step_plan(iterations: int) -> list[tuple[Step, str]]:
    """(step, folder) in order: 1, 2, then (3, 2) per iteration; the model ends on a Step 2."""
    plan = [(Step.ONE, "step1"), (Step.TWO, "step2-1")]
    for i in range(1, iterations + 1):
        plan += [(Step.THREE, f"step3-{i}"), (Step.TWO, f"step2-{i + 1}")]
    return plan


def load_training_data(cfg: EQFaceConfig) -> tuple[FaceSource, FaceSource | None]:
    """The training identities and the held-out ones (None when data.eval_identities is 0)."""
    source = build_source(cfg.data, tuple(cfg.model.image_size), cfg.train.seed)
    return split_identities(source, cfg.data.eval_identities)


def train_one_step(
    step: Step, cfg: EQFaceConfig, out_dir: str | Path, env: DistEnv, init_file: str | Path | None = None
) -> dict[str, Any]:
    """Runs (or resumes) one step into ``out_dir``, starting from the previous step's ``final.pt`` when given.

    The single-step entry of ``eqface train --step`` and of the pipeline's training components.
    """
    train_source, _ = load_training_data(cfg)
    init = checkpoint.load(init_file) if init_file is not None else None
    return run_step(step, cfg, train_source, Path(out_dir), env, init)


def check_run_dir(out_dir: Path, cfg: EQFaceConfig) -> None:
    """Refuses to resume a run folder that was started with a different configuration.

    Precision, channels_last and compile may differ: checkpoints hold fp32 weights in every mode (a bf16 run can go
    on in fp32 on another machine, and the other way round).
    """
    stored = out_dir / "config.json"
    if stored.exists():
        previous = config_from_dict(json.loads(stored.read_text()))
        if training_settings(previous) != training_settings(cfg):
            raise ValueError(f"{out_dir} holds a run with a different configuration; use another --out folder")


def train_all_steps(cfg: EQFaceConfig, out_dir: str | Path, env: DistEnv) -> dict[str, Any]:
    """Runs (or resumes) every step and returns the final state (also written to ``out_dir/model.pt``)."""
    out_dir = Path(out_dir)
    check_run_dir(out_dir, cfg)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(to_json(cfg))
    barrier(env)
    train_source, _ = load_training_data(cfg)
    state: dict[str, Any] | None = None
    for step, folder in step_plan(cfg.train.iterations):
        state = run_step(step, cfg, train_source, out_dir / folder, env, init=state)
    if env.is_main:
        shutil.copyfile(out_dir / step_plan(cfg.train.iterations)[-1][1] / FINAL, out_dir / MODEL_FILE)
    barrier(env)
    assert state is not None  # the plan always has steps
    return state
