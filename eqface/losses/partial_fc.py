"""Partial FC: Eq. 6 with the class centres sharded across ranks and the negatives sampled (insightface's PFC v2).

Rank r of W holds the contiguous classes [start_r, start_r + n_r) (C // W each, the first C % W ranks one more).
Every rank all-gathers the embeddings, labels and qualities s_i of the global batch, keeps the positive classes of
that batch that fall in its shard plus a random subset of its other classes (``sample_rate`` of the shard in all),
computes the Eq. 6 logits s_i·S·(…) on them locally, and the softmax is normalised across ranks (all-reduce of the
row max and of the row sum of exponentials). The loss — the mean over the global batch — is the same number on
every rank. With ``sample_rate = 1`` it equals the full Eq. 6 softmax over all C classes on the concatenated batch.

Gradients: a rank's centre shard gets exactly ∂L/∂W_r. The embeddings and s_i of a rank's own samples get Σ over
ranks of ∂L/∂(gathered copy), times W: the network's parameters are replicated under DDP, which *averages* their
gradients over ranks, and W·(1/W)·Σ_r ∂L/∂θ via rank r's samples is the gradient of the global loss. The shard is
not a DDP parameter (``SHARDED_PARAMETERS`` names it for the trainer to exclude).

The loss is computed in fp32 with autocast off whatever the caller's precision: logits reach |s·S| = 64, where
bf16's 8-bit mantissa would move a logit by up to 0.25, and the sums of exponentials run over up to C classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from eqface.losses.margin import CombinedMarginLoss

SHARDED_PARAMETERS = ("weight",)  # parameter names (relative to the module) that differ between ranks


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(start, count) of the classes held by ``rank``: contiguous, sizes C // W or C // W + 1."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenation over ranks of tensors with ``sizes[r]`` rows each (padded for all_gather, then trimmed)."""
    if len(sizes) == 1:
        return local
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGather(torch.autograd.Function):
    """All-gather along rows whose backward sums every rank's gradient of a sample into its owner, ×W (see above)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _gather_rows(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * len(ctx.sizes), None, None


def all_gather_rows(local: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """The global batch from each rank's rows; differentiable when ``local`` requires grad."""
    if len(sizes) == 1:
        return local
    if local.requires_grad:
        return _AllGather.apply(local, sizes, rank)
    return _gather_rows(local, sizes)


class _DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of logits split by columns across ranks; ``target`` is −1 where not local."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, distributed: bool) -> torch.Tensor:  # type: ignore[override]
        row_max = logits.detach().max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits - row_max).exp()
        row_sum = exp.sum(dim=1, keepdim=True)
        local = target >= 0
        target_logit = torch.where(local, logits.gather(1, target.clamp_min(0)[:, None]).squeeze(1), 0.0)
        if distributed:
            dist.all_reduce(row_sum)
            dist.all_reduce(target_logit)
        prob = exp / row_sum
        ctx.save_for_backward(prob, target)
        return (row_max.squeeze(1) + row_sum.squeeze(1).log() - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        prob, target = ctx.saved_tensors
        local = target >= 0
        grad_logits = prob.clone()
        rows = local.nonzero().squeeze(1)
        grad_logits[rows, target[rows]] -= 1.0
        return grad_logits * (grad / prob.shape[0]), None, None


@dataclass
class PartialFCOutput:
    loss: torch.Tensor  # the global-batch mean, identical on every rank
    correct: torch.Tensor  # this rank's samples whose highest cos θ (over the sampled classes) is their own class
    classes: torch.Tensor  # the (global) class ids of this rank's shard in this batch's softmax, sorted


class PartialFC(nn.Module):
    """This rank's shard of the class centres [n_r, D] and the sharded, sampled Eq. 6 loss.

    Args:
        embedding_size: D.
        num_classes: C, over all ranks.
        margin: the Eq. 6 margin (its ``target_logit`` and ``scale`` are used as in the full loss).
        sample_rate: fraction of the shard in each batch's softmax, positives included; 1 keeps every class.
        rank, world_size: this process's place; by default the initialised process group's (0 and 1 without one).
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: CombinedMarginLoss,
        sample_rate: float = 1.0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        group_rank, group_size = _world()
        self.rank = group_rank if rank is None else rank
        self.world_size = group_size if world_size is None else world_size
        if num_classes < self.world_size:
            raise ValueError(f"{num_classes} classes cannot be sharded over {self.world_size} ranks")
        self.num_classes, self.sample_rate, self.margin = num_classes, sample_rate, margin
        self.class_start, self.num_local = shard_range(num_classes, self.world_size, self.rank)
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_size))
        # Seeded from the global RNG (which every rank holds in the same state) plus the rank, so that shards of equal
        # size do not start as copies of each other.
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,))) + 7919 * self.rank)
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.num_local, embedding_size, generator=generator) * 0.01)

    def shard_of(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full [C, …] tensor."""
        if full.shape[0] != self.num_classes:
            raise ValueError(f"a full classifier tensor has {self.num_classes} rows, got {tuple(full.shape)}")
        return full[self.class_start : self.class_start + self.num_local]

    def load_full(self, weight: torch.Tensor) -> None:
        """Takes this rank's shard of the full centres [C, D] (from a full classifier, a checkpoint, class means)."""
        with torch.no_grad():
            self.weight.copy_(self.shard_of(weight))

    def full_state_dict(self, dst: int | None = None) -> dict[str, torch.Tensor] | None:
        """The state of the equivalent full classifier ({"weight": [C, D]}); see ``gather_full`` for ``dst``."""
        full = self.gather_full(dst=dst)
        return None if full is None else {"weight": full}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Files hold the full [C, D] centres (``full_state_dict``), so any world size can load them: re-sharding is
        # slicing. A tensor of this shard's size (a copy within one process) loads as it is.
        key = prefix + "weight"
        stored = state_dict.get(key)
        if isinstance(stored, torch.Tensor) and stored.shape[0] != self.num_local:
            state_dict = {**state_dict, key: self.shard_of(stored)}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def gather_full(self, shard: torch.Tensor | None = None, dst: int | None = None) -> torch.Tensor | None:
        """The full [C, …] tensor (of the centres, or of ``shard``: e.g. their momentum) on CPU.

        Collective when W > 1, one shard in flight at a time. Every rank gets it, or only rank ``dst`` (the others
        return None and never hold the full matrix: 4 GB at 2 M × 512 fp32).
        """
        shard = (self.weight if shard is None else shard).detach()
        if self.world_size == 1:
            return shard.cpu().clone()
        keep = dst is None or dst == self.rank
        full = torch.empty((self.num_classes, *shard.shape[1:]), dtype=shard.dtype) if keep else None
        for r in range(self.world_size):
            start, count = shard_range(self.num_classes, self.world_size, r)
            buf = shard.contiguous() if r == self.rank else shard.new_empty((count, *shard.shape[1:]))
            dist.broadcast(buf, src=r)
            if full is not None:
                full[start : start + count] = buf.cpu()
        return full

    def sample(self, local_labels: torch.Tensor) -> torch.Tensor:
        """Sorted shard indices in this batch's softmax: every positive in the shard, then random others."""
        positive = torch.unique(local_labels[local_labels >= 0])
        if self.num_sample >= self.num_local:
            return torch.arange(self.num_local, device=local_labels.device)
        if positive.numel() >= self.num_sample:
            return positive
        # One draw over all C classes, sliced per shard: the ranks' global RNGs stay in step and their samples are
        # independent of each other (a per-shard draw would pick the same local indices on every rank).
        scores = torch.rand(self.num_classes, device=local_labels.device)
        scores = scores[self.class_start : self.class_start + self.num_local]
        scores[positive] = 2.0
        return scores.topk(self.num_sample).indices.sort().values

    def forward(
        self, embedding: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None = None
    ) -> PartialFCOutput:
        """Eq. 6 on this rank's batch (``embedding`` [n, D], ``labels`` [n], ``quality`` [n] or None for s_i = 1)."""
        with torch.autocast(embedding.device.type, enabled=False):
            return self._forward(embedding.float(), labels, None if quality is None else quality.float())

    def _forward(self, embedding: torch.Tensor, labels: torch.Tensor, quality: torch.Tensor | None) -> PartialFCOutput:
        sizes = self._batch_sizes(labels.numel(), embedding.device)
        emb = all_gather_rows(embedding, sizes, self.rank)
        glabels = all_gather_rows(labels, sizes, self.rank)
        local_labels = torch.where(
            (glabels >= self.class_start) & (glabels < self.class_start + self.num_local),
            glabels - self.class_start,
            -1,
        )
        index = self.sample(local_labels)
        target = torch.where(local_labels >= 0, torch.searchsorted(index, local_labels.clamp_min(0)), -1)
        # At sample_rate 1 the shard is used as it is: indexing would copy it (and route its gradient through a copy).
        centres = self.weight if index.numel() == self.num_local else self.weight[index]
        cos = F.linear(F.normalize(emb, dim=1), F.normalize(centres.float(), dim=1))
        logits = self._margin_logits(cos, target)
        if quality is None:
            logits = logits * self.margin.scale
        else:  # Eq. 6: s_i·S scales every logit of sample i (as in CombinedMarginLoss.logits)
            logits = logits * (self.margin.scale * all_gather_rows(quality, sizes, self.rank))[:, None]
        loss = _DistributedCrossEntropy.apply(logits, target, self.world_size > 1)
        start = sum(sizes[: self.rank])
        correct = self._correct(cos.detach(), target)[start : start + sizes[self.rank]].sum()
        return PartialFCOutput(loss, correct, index + self.class_start)

    def _batch_sizes(self, n: int, device: torch.device) -> list[int]:
        if self.world_size == 1:
            return [n]
        sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
        return [int(s) for s in sizes]

    def _margin_logits(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """cos with the margin on each local positive (rows whose class is on another rank stay cos θ)."""
        column = target.clamp_min(0)[:, None]
        positive = cos.gather(1, column)
        with_margin = torch.where(target[:, None] >= 0, self.margin.target_logit(positive), positive)
        return cos.scatter(1, column, with_margin)

    def _correct(self, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per global sample: its own class's cos θ is the highest over every rank's sampled classes."""
        best = cos.max(dim=1).values
        own = torch.where(target >= 0, cos.gather(1, target.clamp_min(0)[:, None]).squeeze(1), 0.0)
        if self.world_size > 1:
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
            dist.all_reduce(own)
        return own >= best
