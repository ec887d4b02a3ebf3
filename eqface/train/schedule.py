"""SGD and its step-decay learning rate, computed from the iteration so a resumed run needs no scheduler state."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from eqface.config import ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: ScheduleConfig) -> torch.optim.SGD:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg: ScheduleConfig, iteration: int, iters_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then ×gamma at every milestone epoch passed."""
    epoch = iteration / max(iters_per_epoch, 1)
    lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        lr *= (iteration + 1) / (cfg.warmup_epochs * iters_per_epoch)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
