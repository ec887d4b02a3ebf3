"""Optional distributed data parallel: torchrun's environment → process group; single process otherwise.

Nothing happens at import; ``init_distributed`` is called by the training entry point only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU) when available, else CPU; ``cuda`` without a GPU is an error."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
        return torch.device(f"cuda:{local_rank}" if preference == "cuda" else preference)
    if preference != "cpu":
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistEnv:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_across(env: DistEnv, values: list[float]) -> list[float]:
    """Sums a few scalars over ranks (for epoch statistics); identity in a single process."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def check_replicas_in_sync(env: DistEnv, module: torch.nn.Module) -> None:
    """Raises RuntimeError when ranks hold different weights (DDP must keep replicas identical).

    Parameters only: BatchNorm running statistics legitimately differ between ranks after the last step (DDP
    re-broadcasts rank 0's buffers at each forward, and only rank 0 writes checkpoints).
    """
    if not env.distributed:
        return
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
    sums = sums.to(env.device if env.device.type == "cuda" else "cpu")
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"rank {env.rank}: replicas diverged ({int((low != high).sum())} tensors differ)")
