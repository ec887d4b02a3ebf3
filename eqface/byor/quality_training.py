"""Step 2 on a frozen recogniser: the quality branch learns from cached tap features through Eq. 6.

The classifier is the class centres of the frozen embeddings (normalised mean of the clean views' unit embeddings).
A sample's own class centre leaves out its own source image (``loo-centres``): otherwise every training face pulls
its centre towards itself and its target cosine is inflated, which pushes Eq. 6 towards s → 1 (the collapse DESIGN.md
warns about). With the shared MobileFaceNet on CelebA, which it never trained on, the effect was small (held-out EDC
pAUC 0.0196 with, 0.0197 without). Because the recogniser and the centres are frozen, every cosine is computed once
up front and each step only runs the quality branch.

``classifier="fitted"`` instead runs Step 1 on the frozen embeddings first: a NormalizedClassifier starting from the
centres is trained with the margin loss (s = 1) on every view for ``classifier_epochs``, and Step 2 uses its weights.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from eqface.config import MarginConfig, ScheduleConfig
from eqface.losses import CombinedMarginLoss
from eqface.models.quality import QualityHead
from eqface.train.schedule import build_optimizer, lr_at, set_lr


@dataclass(frozen=True)
class Step2Config:
    schedule: ScheduleConfig = ScheduleConfig(epochs=4, lr=0.01, milestones=(3,), weight_decay=5e-4)
    margin: MarginConfig = MarginConfig()
    batch_size: int = 128
    hidden: int = 512
    # loo-centres: class centres, a face's own centre without itself; centres: plain class centres; fitted: Step 1 on
    # the frozen embeddings (from the centres) for classifier_epochs epochs.
    classifier: Literal["loo-centres", "centres", "fitted"] = "loo-centres"
    classifier_epochs: int = 3
    classifier_lr: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        valid = ("loo-centres", "centres", "fitted")
        if self.classifier not in valid:
            raise ValueError(f"classifier must be one of {valid}, got {self.classifier!r}")


def step2_config(
    epochs: int, lr: float, batch_size: int, classifier: str = "loo-centres", classifier_epochs: int = 3
) -> Step2Config:
    """The defaults with these settings; learning-rate milestones at or beyond ``epochs`` are dropped.

    Raises:
        ValueError: ``epochs``, ``batch_size`` or ``lr`` not positive, or an unknown ``classifier``.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    base = Step2Config()
    milestones = tuple(m for m in base.schedule.milestones if m < epochs)
    schedule = dataclasses.replace(base.schedule, epochs=epochs, lr=lr, milestones=milestones)
    return dataclasses.replace(
        base, schedule=schedule, batch_size=batch_size, classifier=classifier, classifier_epochs=classifier_epochs
    )


@dataclass
class Step2Result:
    head: QualityHead
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_centres(embedding: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit class centres [C, D]: normalised sums of the clean view's (view 0) unit embeddings per class."""
    sums = np.zeros((int(labels.max()) + 1, embedding.shape[2]))
    np.add.at(sums, labels, unit(embedding[0].astype(np.float64)))
    return unit(sums)


def fit_classifier(embedding: np.ndarray, labels: np.ndarray, cfg: Step2Config) -> np.ndarray:
    """Step 1 on frozen embeddings [V, N, D]: margin-loss (s = 1) classifier from the centres; unit weights [C, D]."""
    from eqface.losses import NormalizedClassifier

    views, n, dim = embedding.shape
    torch.manual_seed(cfg.seed)
    classifier = NormalizedClassifier(dim, int(labels.max()) + 1)
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(class_centres(embedding, labels)))
    loss_fn = CombinedMarginLoss(cfg.margin)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=cfg.classifier_lr, momentum=0.9, weight_decay=5e-4)
    x = torch.from_numpy(embedding.reshape(views * n, dim).astype(np.float32))
    y = torch.from_numpy(np.tile(labels.astype(np.int64), views))
    for epoch in range(cfg.classifier_epochs):
        order = torch.from_numpy(np.random.default_rng([cfg.seed, 1, epoch]).permutation(len(y)))
        for batch in order.split(cfg.batch_size):
            loss = loss_fn(classifier(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return unit(classifier.weight.detach().double().numpy())


def step2_cosines(embedding: np.ndarray, labels: np.ndarray, cfg: Step2Config) -> np.ndarray:
    """The cosines Step 2 trains against, for the classifier ``cfg.classifier`` names: [V, N, C]."""
    if cfg.classifier == "fitted":
        weights = fit_classifier(embedding, labels, cfg)
        return (unit(embedding.astype(np.float64)) @ weights.T).astype(np.float32)
    return class_cosines(embedding, labels, leave_one_out=cfg.classifier == "loo-centres")


def class_cosines(embedding: np.ndarray, labels: np.ndarray, leave_one_out: bool = True) -> np.ndarray:
    """cos θ_j of every view of every sample to every class centre: [V, N, C] from embeddings [V, N, D].

    Centres are the normalised sums of the clean view's (view 0) unit embeddings per class. With ``leave_one_out``
    the target class of sample i uses its centre without sample i's own clean embedding (classes of one sample then
    keep their full centre, there being nothing else to compare with).
    """
    if embedding.ndim != 3 or embedding.shape[1] != len(labels):
        raise ValueError(f"embedding must be [V, N, D] with N = {len(labels)}, got {embedding.shape}")
    u = unit(embedding.astype(np.float64))
    classes = int(labels.max()) + 1
    sums = np.zeros((classes, u.shape[2]))
    np.add.at(sums, labels, u[0])
    cos = u @ class_centres(embedding, labels).T
    if leave_one_out:
        counts = np.bincount(labels, minlength=classes)
        own = np.where((counts[labels] > 1)[:, None], sums[labels] - u[0], sums[labels])  # [N, D]
        cos[:, np.arange(len(labels)), labels] = np.einsum("vnd,nd->vn", u, unit(own))
    return cos.astype(np.float32)


def train_quality_head(
    cos: np.ndarray, tap: np.ndarray, labels: np.ndarray, cfg: Step2Config = Step2Config()
) -> Step2Result:
    """Trains a fresh :class:`QualityHead` on every (view, sample) with Eq. 6 against the fixed cosines.

    Args:
        cos: [V, N, C] cosines to the class centres (``class_cosines``).
        tap: [V, N, F] flattened tap features (a memory map is fine: batches are read in sorted order).
        labels: [N] class of each sample.
    """
    views, n = tap.shape[:2]
    if cos.shape[:2] != (views, n) or len(labels) != n:
        raise ValueError(f"cos {cos.shape}, tap {tap.shape} and labels {labels.shape} disagree")
    torch.manual_seed(cfg.seed)
    head = QualityHead(tap.shape[2], cfg.hidden)
    loss_fn = CombinedMarginLoss(cfg.margin)
    optimizer = build_optimizer(head.parameters(), cfg.schedule)
    total = views * n
    steps_per_epoch = total // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{total} samples cannot fill one batch of {cfg.batch_size}")
    labels_t = torch.from_numpy(labels.astype(np.int64))
    result, start, iteration = Step2Result(head), time.perf_counter(), 0
    for epoch in range(cfg.schedule.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(total)
        sums = np.zeros(3)
        head.train()
        for b in tqdm(range(steps_per_epoch), desc=f"step 2 epoch {epoch + 1}/{cfg.schedule.epochs}", unit="batch"):
            flat = np.sort(order[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            v, i = np.divmod(flat, n)
            x = torch.from_numpy(np.asarray(tap[v, i], dtype=np.float32))
            set_lr(optimizer, lr_at(cfg.schedule, iteration, steps_per_epoch))
            quality = head(x).squeeze(1)
            loss = loss_fn(torch.from_numpy(cos[v, i]), labels_t[i], quality)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            sums += [float(loss.detach()) * len(flat), float(quality.detach().sum()), len(flat)]
        result.history.append({"epoch": epoch + 1, "loss": sums[0] / sums[2], "mean_quality": sums[1] / sums[2]})
    result.seconds = time.perf_counter() - start
    head.eval()
    return result


def predict_quality(head: QualityHead, tap: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Quality [N] of flattened taps [N, F] (eval mode, no gradients)."""
    head.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(tap), batch_size):
            x = torch.from_numpy(np.asarray(tap[start : start + batch_size], dtype=np.float32))
            out.append(head(x).squeeze(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def save_head(head: QualityHead, path) -> None:
    from eqface.train.checkpoint import save_atomic

    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    save_atomic({"state": state, "in_features": head.fc1.in_features, "hidden": head.fc1.out_features}, path)


def load_head(path) -> QualityHead:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    head = QualityHead(int(blob["in_features"]), int(blob["hidden"]))
    head.load_state_dict(blob["state"])
    return head.eval()
