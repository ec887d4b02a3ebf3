"""Runs one training step (1, 2 or 3) to completion: resumable mid-epoch, optionally distributed, with progress."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from eqface import contract, paths
from eqface.config import EQFaceConfig, ScheduleConfig, to_json
from eqface.data.augment import Augmenter
from eqface.data.dataset import AugmentedFaces, EpochBatchSampler, collate
from eqface.data.sources import FaceSource
from eqface.losses import CombinedMarginLoss, PartialFC
from eqface.models import EQFaceNet, build_model
from eqface.models.pretrained import load_backbone_weights
from eqface.train import checkpoint
from eqface.train.classifier_state import (
    Classifier,
    build_classifier,
    classifier_state,
    optimizer_state,
    shard_classifier_momentum,
)
from eqface.train.distributed import DistEnv, barrier, check_replicas_in_sync, sum_across
from eqface.train.precision import Precision, maybe_compile, resolve_precision, to_memory_format
from eqface.train.schedule import build_optimizer, lr_at, set_lr
from eqface.train.steps import Step, StepModel, control_weights

FINAL = "final.pt"
RESUME = "checkpoint.pt"
PRECOMPUTED = ("precomputed", "mean", "shuffled")  # step3_quality modes that start from the Step-2 qualities
LOG = "log.jsonl"


@dataclass
class Position:
    """Where a step stands: the next batch to run and the running sums of the current epoch."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0
    sums: dict[str, float] = field(
        default_factory=lambda: {
            "loss": 0.0,
            "correct": 0.0,
            "n": 0.0,
            "q": 0.0,
            "q2": 0.0,
            "skipped": 0.0,
            "dropped": 0.0,
        }
    )


def schedule_of(cfg: EQFaceConfig, step: Step) -> ScheduleConfig:
    return {Step.ONE: cfg.train.step1, Step.TWO: cfg.train.step2, Step.THREE: cfg.train.step3}[step]


def run_step(
    step: Step, cfg: EQFaceConfig, source: FaceSource, out_dir: Path, env: DistEnv, init: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Trains one step into ``out_dir`` and returns its final state (net, classifier, model config…).

    A finished step (``final.pt`` present) is returned as is; an interrupted one resumes from ``checkpoint.pt``.
    """
    out_dir = Path(out_dir)
    if (out_dir / FINAL).exists():
        return checkpoint.load(out_dir / FINAL)
    precision = resolve_precision(cfg.train.precision, env.device, cfg.train.channels_last)  # fails before work
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(to_json(cfg))
    margin = CombinedMarginLoss(cfg.margin)
    net, classifier, teacher = _prepare_networks(step, cfg, source, init, env, margin)
    qualities = (
        control_weights(_precompute_qualities(teacher, source, cfg, env), cfg.train.step3_quality, cfg.train.seed)
        if step is Step.THREE and cfg.train.step3_quality in PRECOMPUTED
        else None
    )
    model = StepModel(
        step,
        net,
        classifier,
        margin,
        train_backbone=_trains_backbone(step, cfg),
        teacher=teacher if cfg.train.step3_quality == "online" else None,
        qwdf_threshold=cfg.train.qwdf_threshold,
        head_only=step is Step.THREE and cfg.train.step3_trainable == "head",
    )
    to_memory_format(model.to(env.device), cfg.train.channels_last)
    optimizer = build_optimizer(model.parameters(), schedule_of(cfg, step))
    pos = _restore(out_dir / RESUME, model, optimizer, step, precision)
    sharded = isinstance(classifier, PartialFC)
    if sharded and env.distributed:
        # Each rank's centres are its own shard: DDP must neither broadcast nor average them.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ["classifier.weight"])
    wrapped = (
        DistributedDataParallel(model, device_ids=[env.device] if env.device.type == "cuda" else None)
        if env.distributed
        else model
    )
    wrapped = maybe_compile(wrapped, cfg.train.compile)
    _train_loop(step, cfg, source, out_dir, env, model, wrapped, optimizer, pos, qualities, precision)
    check_replicas_in_sync(env, model.net if sharded else model)
    final = _final_state(step, cfg, model, source)
    if env.is_main:
        checkpoint.save_atomic(final, out_dir / FINAL)
        (out_dir / RESUME).unlink(missing_ok=True)
    barrier(env)
    return final


def _trains_backbone(step: Step, cfg: EQFaceConfig) -> bool:
    return step is Step.THREE or (step is Step.ONE and cfg.train.step1_train_backbone)


def _prepare_networks(
    step: Step,
    cfg: EQFaceConfig,
    source: FaceSource,
    init: dict[str, Any] | None,
    env: DistEnv,
    margin: CombinedMarginLoss,
) -> tuple[EQFaceNet, Classifier, EQFaceNet | None]:
    """Builds the step's starting point: fresh, pretrained or from the previous step, with seeded re-inits.

    Classifier files always hold the full [C, D] centres, which Partial FC slices to this rank's shard on loading.
    """
    torch.manual_seed(cfg.train.seed + {Step.ONE: 1, Step.TWO: 2, Step.THREE: 3}[step])
    net = build_model(cfg.model)
    classifier = build_classifier(cfg, source.num_classes, margin)
    fresh_net, fresh_classifier = copy.deepcopy(net), copy.deepcopy(classifier)
    teacher = None
    if init is not None:
        if step is Step.TWO:  # each Step 2 fits a new branch (whose shape the config may change): backbone only
            prefix = "backbone."
            net.backbone.load_state_dict({k[len(prefix) :]: v for k, v in init["net"].items() if k.startswith(prefix)})
        else:
            net.load_state_dict(init["net"])
        if init["classifier"]["weight"].shape[0] != source.num_classes:
            raise ValueError(
                f"the initial classifier has {init['classifier']['weight'].shape[0]} classes, "
                f"the data {source.num_classes}"
            )
        classifier.load_state_dict(init["classifier"])
    elif step is not Step.ONE:
        raise ValueError(f"{step.value} starts from the previous step's final.pt (give an init checkpoint)")
    elif cfg.model.pretrained:
        load_backbone_weights(net.backbone, paths.resolve(cfg.model.pretrained))
    if step is Step.THREE:
        teacher = copy.deepcopy(net).to(env.device).eval()
        if cfg.train.step3_from_scratch:
            net.backbone.load_state_dict(fresh_net.backbone.state_dict())
            classifier.load_state_dict(fresh_classifier.state_dict())
    if step is Step.ONE and init is None and cfg.train.classifier_init == "centers":
        classifier.load_state_dict({"weight": class_centers(net, source, cfg.model.image_size, env.device)})
    return net, classifier, teacher


@torch.no_grad()
def embed_source(
    net: EQFaceNet,
    source: FaceSource,
    image_size: tuple[int, int],
    device: torch.device,
    batch_size: int = 128,
    desc: str = "embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings [N, D] and qualities [N] of every sample, un-augmented, in eval mode."""
    was_training = net.training
    net.eval().to(device)
    embs, quals = [], []
    for start in tqdm(range(0, len(source), batch_size), desc=desc, leave=False, unit="batch"):
        idx = range(start, min(start + batch_size, len(source)))
        x = torch.from_numpy(contract.preprocess([source.image(i) for i in idx], image_size)).to(device)
        e, q = net(x)
        embs.append(e.cpu().numpy())
        quals.append(q.squeeze(1).cpu().numpy())
    net.train(was_training)
    return np.concatenate(embs), np.concatenate(quals)


def class_centers(
    net: EQFaceNet, source: FaceSource, image_size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Per-class mean of the backbone's normalised embeddings: a classifier for a pretrained backbone."""
    emb, _ = embed_source(net, source, image_size, device, desc="class centres")
    centers = np.zeros((source.num_classes, emb.shape[1]), dtype=np.float64)
    np.add.at(centers, source.labels, emb)
    centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(centers.astype(np.float32))


def _precompute_qualities(
    teacher: EQFaceNet | None, source: FaceSource, cfg: EQFaceConfig, env: DistEnv
) -> torch.Tensor:
    assert teacher is not None  # Step 3 always has the Step-2 network (checked in _prepare_networks)
    _, q = embed_source(teacher, source, cfg.model.image_size, env.device, desc="step-2 qualities")
    return torch.from_numpy(q)


def _restore(
    path: Path, model: StepModel, optimizer: torch.optim.Optimizer, step: Step, precision: Precision
) -> Position:
    if not path.exists():
        return Position()
    state = checkpoint.load(path)
    if state.get("step") != step.value:
        raise ValueError(f"{path} belongs to {state.get('step')}, not {step.value}")
    model.net.load_state_dict(state["net"])
    model.classifier.load_state_dict(state["classifier"])
    optimizer.load_state_dict(state["optimizer"])
    shard_classifier_momentum(model.classifier, optimizer)
    precision.load_state_dict(state)
    saved_in = state.get("precision", "fp32")  # checkpoints from before train.precision were fp32
    if saved_in != precision.name:
        tqdm.write(f"{path}: a {saved_in} checkpoint resumes in {precision.name}")
    torch.set_rng_state(state["rng_torch"])
    if torch.cuda.is_available() and "rng_cuda" in state:
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Position(state["epoch"], state["batch"], state["iteration"], json.loads(state["sums"]))


def _save_resume(
    path: Path,
    step: Step,
    model: StepModel,
    optimizer: torch.optim.Optimizer,
    pos: Position,
    env: DistEnv,
    precision: Precision,
) -> None:
    """Every rank calls it (Partial FC gathers its shards to rank 0); rank 0 writes."""
    classifier = classifier_state(model.classifier, dst=0)
    optimizer_saved = optimizer_state(model.classifier, optimizer, dst=0)
    if not env.is_main:
        return
    state = {
        **precision.state_dict(),
        "step": step.value,
        "epoch": pos.epoch,
        "batch": pos.batch,
        "iteration": pos.iteration,
        "sums": json.dumps(pos.sums),
        "net": model.net.state_dict(),
        "classifier": classifier,
        "optimizer": optimizer_saved,
        "rng_torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    checkpoint.save_atomic(state, path)


def _final_state(step: Step, cfg: EQFaceConfig, model: StepModel, source: FaceSource) -> dict[str, Any]:
    return {
        "step": step.value,
        "net": model.net.state_dict(),
        "classifier": classifier_state(model.classifier),
        "model_config": json.dumps(json.loads(to_json(cfg.model))),
        "config": to_json(cfg),
        "num_classes": source.num_classes,
    }


def _train_loop(
    step: Step,
    cfg: EQFaceConfig,
    source: FaceSource,
    out_dir: Path,
    env: DistEnv,
    model: StepModel,
    wrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pos: Position,
    qualities: torch.Tensor | None,
    precision: Precision,
) -> None:
    sched = schedule_of(cfg, step)
    augment = cfg.quality_augment if step is Step.TWO else cfg.augment
    dataset = AugmentedFaces(
        source, cfg.model.image_size, Augmenter(augment), cfg.train.seed, cfg.data.on_error == "skip"
    )
    sampler = EpochBatchSampler(len(source), cfg.train.batch_size, cfg.train.seed, env.rank, env.world_size)
    per_epoch = sampler.batches_per_epoch
    model.train()
    while pos.epoch < sched.epochs:
        sampler.set_position(pos.epoch, pos.batch)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.train.num_workers,
            pin_memory=env.device.type == "cuda",
        )
        started = time.monotonic()
        bar = tqdm(
            loader,
            total=len(sampler),
            desc=f"{step.value} epoch {pos.epoch + 1}/{sched.epochs}",
            unit="batch",
            leave=False,
            disable=not env.is_main,
        )
        for batch in bar:
            lr = lr_at(sched, pos.iteration, per_epoch)
            set_lr(optimizer, lr)
            _train_batch(wrapped, optimizer, batch, pos, qualities, env, precision)
            pos.batch += 1
            pos.iteration += 1
            bar.set_postfix(loss=f"{pos.sums['loss'] / max(pos.sums['n'], 1):.3f}", lr=f"{lr:.2g}")
            if cfg.train.checkpoint_every and pos.iteration % cfg.train.checkpoint_every == 0:
                _save_resume(out_dir / RESUME, step, model, optimizer, pos, env, precision)
        _end_epoch(
            step, sched, out_dir, env, pos, time.monotonic() - started, lr_at(sched, pos.iteration - 1, per_epoch)
        )
        _save_resume(out_dir / RESUME, step, model, optimizer, pos, env, precision)
        barrier(env)


def _train_batch(
    wrapped: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Any,
    pos: Position,
    qualities: torch.Tensor | None,
    env: DistEnv,
    precision: Precision,
) -> None:
    pos.sums["skipped"] += batch.skipped
    if batch.labels.numel() == 0:
        return
    images = precision.images(batch.images.to(env.device, non_blocking=True))
    labels = batch.labels.to(env.device, non_blocking=True)
    sample_q = qualities[batch.indices].to(env.device) if qualities is not None else None
    with precision.autocast():  # the backbone; the quality branch and Eq. 6 keep fp32 inside (precision.py)
        out = wrapped(images, labels, sample_q)
    precision.backward_and_step(out.loss, optimizer)
    n = out.samples
    pos.sums["dropped"] = pos.sums.get("dropped", 0.0) + labels.numel() - n  # QWDF (absent in older checkpoints)
    pos.sums["loss"] += out.loss.item() * n
    pos.sums["correct"] += out.correct.item()
    pos.sums["n"] += n
    if out.quality is not None:
        pos.sums["q"] += out.quality.sum().item()
        pos.sums["q2"] += (out.quality.double() ** 2).sum().item()


def _end_epoch(
    step: Step, sched: ScheduleConfig, out_dir: Path, env: DistEnv, pos: Position, seconds: float, lr: float
) -> None:
    keys = ["loss", "correct", "n", "q", "q2", "skipped", "dropped"]
    loss, correct, n, q, q2, skipped, dropped = sum_across(env, [pos.sums.get(k, 0.0) for k in keys])
    n = max(n, 1.0)
    record = {
        "step": step.value,
        "epoch": pos.epoch + 1,
        "loss": loss / n,
        "accuracy": correct / n,
        "lr": lr,
        "seconds": round(seconds, 2),
        "skipped": int(skipped),
        "qwdf_dropped": int(dropped),
    }
    quality_text = "s = 1"
    if step is not Step.ONE:
        mean = q / n
        record["quality_mean"], record["quality_std"] = mean, max(q2 / n - mean * mean, 0.0) ** 0.5
        quality_text = f"quality mean {mean:.3f} std {record['quality_std']:.3f}"
    if env.is_main:
        tqdm.write(
            f"{step.value} epoch {pos.epoch + 1}/{sched.epochs}  loss {record['loss']:.4f}  "
            f"acc {record['accuracy']:.3f}  {quality_text}  lr {lr:.2g}  {seconds:.1f}s"
            + (f"  skipped {int(skipped)} unreadable" if skipped else "")
            + (f"  QWDF dropped {int(dropped)}" if dropped else "")
        )
        with (out_dir / LOG).open("a") as f:
            f.write(json.dumps(record) + "\n")
    pos.epoch, pos.batch = pos.epoch + 1, 0
    pos.sums = Position().sums
