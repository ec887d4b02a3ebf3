"""Mixed-precision training (eqface.train.precision): bf16 follows fp32, the fp32 islands stay fp32, checkpoints resume
across precisions, channels_last computes the same, and the settings reach the trainer from the config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eqface import processes
from eqface.config import apply_overrides, preset, to_dict
from eqface.losses import CombinedMarginLoss, NormalizedClassifier
from eqface.models import build_model
from eqface.models.quality import QualityHead
from eqface.train import checkpoint
from eqface.train.distributed import DistEnv
from eqface.train.plan import check_run_dir
from eqface.train.precision import (
    SCALER_KEY,
    Precision,
    maybe_compile,
    resolve_precision,
    to_memory_format,
)
from eqface.train.steps import Step, StepModel
from eqface.train.trainer import Position, _restore, _save_resume
from tests.support.training import kill_when_checkpointed

CFG = preset("test")
CLASSES = 8


def _batches(count: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed batches of a learnable task: one random pattern per class plus noise."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, CLASSES, (count, size), generator=g)
    patterns = torch.randn(CLASSES, 3, *CFG.model.image_size, generator=g)
    return patterns[labels] + 0.5 * torch.randn(count, size, 3, *CFG.model.image_size, generator=g), labels


def _step_model(step: Step) -> StepModel:
    torch.manual_seed(0)
    net = build_model(CFG.model)
    classifier = NormalizedClassifier(CFG.model.embedding_size, CLASSES)
    return StepModel(step, net, classifier, CombinedMarginLoss(CFG.margin)).train()


def _losses(precision: str, step: Step, steps: int) -> list[float]:
    model = _step_model(step)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02)
    prec = resolve_precision(precision, "cpu")
    images, labels = _batches()
    losses = []
    for i in range(steps):
        with prec.autocast():
            out = model(images[i % len(images)], labels[i % len(labels)])
        assert out.loss.dtype == torch.float32  # Eq. 6 ran in fp32
        prec.backward_and_step(out.loss, opt)
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize(("step", "steps"), [(Step.ONE, 12), (Step.TWO, 6)])
def test_bf16_training_follows_the_fp32_loss(step: Step, steps: int) -> None:
    """Same weights, same batches; bf16 autocast on the backbone. Tolerance: the first loss within 0.1 % (only
    rounding differs), every later loss within 5 % of the initial loss (Step 1 falls from ≈ 52 to below 1 nat here, so
    the rounding differences that plain SGD amplifies stay under 2.6 nats), and both runs learn."""
    fp32, bf16 = _losses("fp32", step, steps), _losses("bf16", step, steps)
    assert fp32 != bf16  # autocast really ran: bf16 rounds differently
    assert abs(bf16[0] - fp32[0]) <= 1e-3 * fp32[0]
    for t, (a, b) in enumerate(zip(fp32, bf16)):
        assert abs(a - b) <= 0.05 * fp32[0], (t, a, b)
    assert fp32[-1] < 0.5 * fp32[0] and bf16[-1] < 0.5 * bf16[0]


def test_the_quality_branch_and_eq6_stay_fp32_under_autocast() -> None:
    """The same inputs give bit-identical s_i and loss with and without bf16 autocast: those regions never round."""
    head = QualityHead(16 * 4 * 4, hidden=8, channels=16, reduced_channels=4).train()
    fmap = torch.randn(6, 16, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_auto = head(fmap.bfloat16())
    q_ref = head(fmap.bfloat16().float())
    assert q_auto.dtype == torch.float32 and torch.equal(q_auto, q_ref)

    model = _step_model(Step.ONE)
    emb = torch.randn(6, CFG.model.embedding_size).bfloat16()
    labels, quality = torch.arange(6) % CLASSES, torch.rand(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_auto, correct_auto = model._eq6(emb, labels, quality)
    loss_ref, correct_ref = model._eq6(emb.float(), labels, quality)
    assert loss_auto.dtype == torch.float32 and torch.equal(loss_auto, loss_ref)
    assert torch.equal(correct_auto, correct_ref)


def test_fp16_needs_cuda_and_names_are_checked() -> None:
    with pytest.raises(ValueError, match="use train.precision=bf16 on CPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="valid: fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        apply_overrides(CFG, ["train.precision=fp8"])
    cfg = apply_overrides(CFG, ["train.precision=bf16", "train.channels_last=true", "train.compile=true"])
    assert (cfg.train.precision, cfg.train.channels_last, cfg.train.compile) == ("bf16", True, True)
    assert resolve_precision("bf16", "cpu").scaler is None and resolve_precision("fp32", "cpu").dtype is None


def test_fp16_needs_a_cuda_device_in_the_trainer(tmp_path: Path) -> None:
    from eqface.train.distributed import DistEnv
    from eqface.train.plan import train_one_step

    cfg = apply_overrides(CFG, ["train.precision=fp16"])
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train_one_step(Step.ONE, cfg, tmp_path / "step1", DistEnv())
    assert not (tmp_path / "step1" / "log.jsonl").exists()  # refused before any work


@pytest.mark.parametrize("backbone", ["tiny", "mobilefacenet"])
def test_channels_last_computes_the_same(backbone: str) -> None:
    size = (32, 32) if backbone == "tiny" else (112, 96)
    cfg = apply_overrides(CFG, [f"model.backbone={backbone}", f"model.image_size=[{size[0]}, {size[1]}]"]).model
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        emb, q = net(x)
        to_memory_format(net, True)
        prec = Precision("fp32", "cpu", channels_last=True)
        emb_cl, q_cl = net(prec.images(x))
    assert prec.images(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(emb_cl, emb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q_cl, q, atol=1e-5, rtol=1e-4)


def test_compile_wraps_only_the_forward_and_keeps_checkpoint_keys() -> None:
    """torch.compile itself takes minutes on a loaded 2-core CPU (the first compiled forward of the tiny network took
    188 s here), so CI checks the plumbing; bench/bench_train_throughput.py and bench/gpu_check.sh run it."""
    model = _step_model(Step.ONE)
    compiled = maybe_compile(model, True)
    assert compiled is not model and compiled._orig_mod is model
    assert maybe_compile(model, False) is model
    # the trainer saves model.state_dict(); the wrapper's keys would carry a prefix no loader expects
    assert set(compiled.state_dict()) == {f"_orig_mod.{k}" for k in model.state_dict()}


def test_run_folder_resumes_when_only_execution_settings_change(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(to_dict(CFG)))
    check_run_dir(tmp_path, apply_overrides(CFG, ["train.precision=bf16", "train.channels_last=true"]))
    with pytest.raises(ValueError, match="different configuration"):
        check_run_dir(tmp_path, apply_overrides(CFG, ["train.batch_size=8"]))


def _fp16_on_cpu() -> Precision:
    """fp16 with a CPU grad scaler: the trainer refuses fp16 without CUDA, but the scaler's checkpoint path is the
    same object on either device, so CPU exercises it."""
    return Precision("fp16", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1))


def test_grad_scaler_state_is_stored_and_restored(tmp_path: Path) -> None:
    model = _step_model(Step.ONE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fp16 = _fp16_on_cpu()
    images, labels = _batches(count=1, size=8)
    for _ in range(2):  # growth_interval=1: the scale doubles after each finite step
        with fp16.autocast():
            out = model(images[0], labels[0])
        fp16.backward_and_step(out.loss, opt)
    assert fp16.scaler.get_scale() == 2.0**12
    path = tmp_path / "checkpoint.pt"
    _save_resume(path, Step.ONE, model, opt, Position(0, 2, 2), DistEnv(), fp16)
    state = checkpoint.load(path)
    assert state["precision"] == "fp16" and state[SCALER_KEY]["scale"] == 2.0**12

    resumed = _fp16_on_cpu()
    _restore(path, _step_model(Step.ONE), torch.optim.SGD(model.parameters(), lr=0.01), Step.ONE, resumed)
    assert resumed.scaler.get_scale() == 2.0**12
    # fp16 → fp32: the scale is dropped; fp32 → fp16: a fresh scale.
    fp32 = resolve_precision("fp32", "cpu")
    pos = _restore(path, _step_model(Step.ONE), torch.optim.SGD(model.parameters(), lr=0.01), Step.ONE, fp32)
    assert pos.iteration == 2 and SCALER_KEY not in fp32.state_dict()
    _save_resume(path, Step.ONE, model, opt, Position(0, 2, 2), DistEnv(), fp32)
    assert SCALER_KEY not in checkpoint.load(path)
    fresh = _fp16_on_cpu()
    _restore(path, _step_model(Step.ONE), torch.optim.SGD(model.parameters(), lr=0.01), Step.ONE, fresh)
    assert fresh.scaler.get_scale() == 2.0**10


def _train_cmd(out: Path, precision: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "eqface.cli",
        "train",
        "--preset",
        "test",
        "--step",
        "1",
        "--out",
        str(out),
        "--no-summary",
        "--set",
        "train.checkpoint_every=1",
        "--set",
        "train.step1.epochs=4",
        "--set",
        f"train.precision={precision}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("first", "then"), [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_checkpoint_resumes_in_another_precision(tmp_path: Path, first: str, then: str) -> None:
    """Killed mid-run in one precision, ``eqface train`` re-run in the other picks up the checkpoint and finishes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    child = processes.start("train", _train_cmd(out, first), tmp_path / "first.log", env=env)
    iteration = kill_when_checkpointed(child, out / "checkpoint.pt", min_iteration=3)
    killed = checkpoint.load(out / "checkpoint.pt")
    assert killed["precision"] == first and not (out / "final.pt").exists()
    result = subprocess.run(_train_cmd(out, then), env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    final = checkpoint.load(out / "final.pt")
    assert json.loads(final["config"])["train"]["precision"] == then
    moved = [k for k, v in killed["net"].items() if v.is_floating_point() and not torch.equal(v, final["net"][k])]
    assert moved  # training went on from the checkpoint
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    # a kill between an epoch's log line and its end-of-epoch checkpoint repeats that epoch's line after the resume
    assert epochs == sorted(epochs) and sorted(set(epochs)) == [1, 2, 3, 4] and iteration >= 3
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
