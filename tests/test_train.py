"""The three training steps: what is frozen, resuming after a kill, and DDP on CPU (gloo, world size 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqface import processes
from eqface.config import apply_overrides, preset
from eqface.train import checkpoint
from eqface.train.distributed import DistEnv
from eqface.train.plan import step_plan, train_all_steps, train_one_step
from eqface.train.steps import Step
from tests.support.training import kill_when_checkpointed

CPU = DistEnv()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train_all_steps(preset("test"), out, CPU)
    return out


def _params(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["net"].items() if k.startswith(prefix)}


def test_all_steps_run_1_2_3_2_and_write_every_output(finished_run: Path) -> None:
    assert [folder for _, folder in step_plan(1)] == ["step1", "step2-1", "step3-1", "step2-2"]
    for folder in ("step1", "step2-1", "step3-1", "step2-2"):
        assert (finished_run / folder / "final.pt").is_file()
        assert json.loads((finished_run / folder / "config.json").read_text())["model"]["backbone"] == "tiny"
        lines = (finished_run / folder / "log.jsonl").read_text().splitlines()
        assert {"loss", "accuracy", "lr"} <= set(json.loads(lines[-1]))
    assert (finished_run / "model.pt").read_bytes() == (finished_run / "step2-2" / "final.pt").read_bytes()
    net, cfg = checkpoint.load_model(finished_run / "model.pt")
    assert cfg.backbone == "tiny" and not net.training


def test_one_step_at_a_time_trains_what_the_plan_trains(finished_run: Path, tmp_path: Path) -> None:
    """The single-step runner (``eqface train --step``, the pipeline's components) is the plan's, step for step."""
    cfg = preset("test")
    train_one_step(Step.ONE, cfg, tmp_path / "step1", CPU)
    state = train_one_step(Step.TWO, cfg, tmp_path / "step2", CPU, init_file=tmp_path / "step1" / "final.pt")
    expected = checkpoint.load(finished_run / "step2-1" / "final.pt")
    for key, value in expected["net"].items():
        assert torch.equal(value, state["net"][key]), key


def test_step2_leaves_backbone_and_classifier_bit_identical(finished_run: Path) -> None:
    before = checkpoint.load(finished_run / "step1" / "final.pt")
    after = checkpoint.load(finished_run / "step2-1" / "final.pt")
    for key, value in _params(before, "backbone.").items():  # weights and BatchNorm statistics
        assert torch.equal(value, after["net"][key]), key
    for key, value in before["classifier"].items():
        assert torch.equal(value, after["classifier"][key]), key
    changed = [k for k, v in _params(after, "quality.").items() if not torch.equal(v, before["net"][k])]
    assert changed, "Step 2 must train the quality branch"


def test_step2_fits_a_new_branch_of_another_shape_on_a_finished_step(finished_run: Path, tmp_path: Path) -> None:
    """A quality-branch search re-runs Step 2 from one Step-2 (or Step-1) checkpoint with a differently shaped head."""
    cfg = apply_overrides(preset("test"), ["model.quality_reduce=4"])
    init = finished_run / "step2-1" / "final.pt"
    state = train_one_step(Step.TWO, cfg, tmp_path / "step2", CPU, init_file=init)
    before = checkpoint.load(init)
    for key, value in _params(before, "backbone.").items():
        assert torch.equal(value, state["net"][key]), key
    assert state["net"]["quality.reduce.0.weight"].shape[0] == 4


def test_step3_freezes_quality_and_retrains_backbone(finished_run: Path) -> None:
    step2 = checkpoint.load(finished_run / "step2-1" / "final.pt")
    step3 = checkpoint.load(finished_run / "step3-1" / "final.pt")
    for key, value in _params(step2, "quality.").items():
        assert torch.equal(value, step3["net"][key]), key
    assert any(not torch.equal(v, step3["net"][k]) for k, v in _params(step2, "backbone.").items())
    log = [json.loads(line) for line in (finished_run / "step3-1" / "log.jsonl").read_text().splitlines()]
    assert all(0.0 < r["quality_mean"] < 1.0 for r in log)


def test_a_finished_run_is_not_retrained(finished_run: Path) -> None:
    stamp = (finished_run / "model.pt").stat().st_mtime_ns
    train_all_steps(preset("test"), finished_run, CPU)
    assert (finished_run / "model.pt").stat().st_mtime_ns >= stamp
    assert (finished_run / "step1" / "final.pt").stat().st_mtime_ns < stamp


def test_resuming_with_another_config_is_refused(finished_run: Path) -> None:
    with pytest.raises(ValueError, match="different configuration"):
        train_all_steps(apply_overrides(preset("test"), ["train.seed=5"]), finished_run, CPU)


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eqface.cli",
        "train",
        "--preset",
        "test",
        "--out",
        str(out),
        "--no-summary",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.step1.epochs=6",
        *extra,
    ]


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    child = processes.start("train", _train_cmd(killed), tmp_path / "killed.log", env=env)
    iteration = kill_when_checkpointed(child, killed / "step1" / "checkpoint.pt", min_iteration=3)
    assert not (killed / "step1" / "final.pt").exists()
    assert iteration % 2 == 1 or iteration >= 3  # 2 batches per epoch: usually mid-epoch
    subprocess.run(_train_cmd(killed), check=True, env=env, capture_output=True)
    a = checkpoint.load(whole / "model.pt")
    b = checkpoint.load(killed / "model.pt")
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    for key in a["classifier"]:
        assert torch.equal(a["classifier"][key], b["classifier"][key]), key


@pytest.mark.slow
def test_ddp_with_gloo_world_size_2(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    port = processes.free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "eqface.cli",
        "train",
        "--preset",
        "test",
        "--out",
        str(out),
        "--no-summary",
        "--set",
        "train.batch_size=8",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.pt").is_file()
    # each rank took half of the data: 64 training images / (8 per rank × 2 ranks) = 4 steps per epoch
    state = checkpoint.load(out / "model.pt")
    assert state["num_classes"] == 5
    assert result.stdout.count("step1 epoch") == 2  # only rank 0 logs
