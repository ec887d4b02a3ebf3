"""The step's classifier (full matrix or Partial FC) and its checkpoint form: always the full [C, D] centres.

A Partial FC run stores what a full classifier would — the shards gathered in class order, and the SGD momentum of
the centres likewise — so a checkpoint or ``final.pt`` does not depend on the world size that wrote it: any world
size (or a full classifier) loads it by slicing its own rows (``PartialFC._load_from_state_dict``). The gathers are
collectives: every rank calls ``classifier_state``/``optimizer_state``, rank 0 writes.
"""

from __future__ import annotations

from typing import Any

import torch

from eqface.config import EQFaceConfig
from eqface.losses import CombinedMarginLoss, NormalizedClassifier, PartialFC

Classifier = NormalizedClassifier | PartialFC


def build_classifier(cfg: EQFaceConfig, num_classes: int, margin: CombinedMarginLoss) -> Classifier:
    """``train.classifier.kind``: one full matrix, or this rank's Partial FC shard."""
    if cfg.train.classifier.kind == "partial_fc":
        return PartialFC(cfg.model.embedding_size, num_classes, margin, cfg.train.classifier.sample_rate)
    return NormalizedClassifier(cfg.model.embedding_size, num_classes)


def classifier_state(classifier: Classifier, dst: int | None = None) -> dict[str, torch.Tensor] | None:
    """The full classifier's state dict (Partial FC gathers its shards: to every rank, or only to rank ``dst``,
    the others getting None)."""
    return classifier.full_state_dict(dst) if isinstance(classifier, PartialFC) else classifier.state_dict()


def optimizer_state(
    classifier: Classifier, optimizer: torch.optim.Optimizer, dst: int | None = None
) -> dict[str, Any] | None:
    """``optimizer.state_dict()`` with Partial FC's momentum gathered to the full [C, D], as ``classifier_state``."""
    state = optimizer.state_dict()
    if not isinstance(classifier, PartialFC) or not classifier.weight.requires_grad:
        return state
    order = [p for group in optimizer.param_groups for p in group["params"]]
    index = next(i for i, p in enumerate(order) if p is classifier.weight)
    entry = state["state"].get(index, {})
    if "momentum_buffer" in entry:  # the optimizer's own dict: replaced, never mutated
        momentum = classifier.gather_full(entry["momentum_buffer"], dst)
        if momentum is None:
            return None
        state["state"][index] = {**entry, "momentum_buffer": momentum}
    return state


def shard_classifier_momentum(classifier: Classifier, optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.load_state_dict`` of an ``optimizer_state``: keeps this rank's rows of the full momentum."""
    if not isinstance(classifier, PartialFC):
        return
    entry = optimizer.state.get(classifier.weight, {})
    buf = entry.get("momentum_buffer")
    if buf is not None and buf.shape[0] != classifier.num_local:
        entry["momentum_buffer"] = classifier.shard_of(buf).clone()
