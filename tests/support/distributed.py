"""Running a function on W CPU processes joined in a gloo group (torch.multiprocessing spawn), for the DDP tests.

The worker functions live here (spawned children import them by module name); each writes its results with
torch.save to ``out_dir/rank{r}.pt`` for the test process to compare.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from eqface.config import MarginConfig
from eqface.losses import CombinedMarginLoss
from eqface.losses.partial_fc import PartialFC


def run_gloo(fn: Callable[..., None], world_size: int, out_dir: Path, *args: Any) -> list[dict[str, Any]]:
    """Runs ``fn(rank, world_size, out_dir, *args)`` on ``world_size`` gloo ranks; returns each rank's saved dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(_entry, args=(fn, world_size, out_dir, args), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _entry(rank: int, fn: Callable[..., None], world_size: int, out_dir: Path, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, out_dir, *args)
    finally:
        dist.destroy_process_group()


def problem(seed: int = 0, n: int = 12, classes: int = 10, dim: int = 8) -> dict[str, torch.Tensor]:
    """A tiny Eq. 6 problem: inputs of a linear 'backbone', its weights, centres, labels and raw qualities."""
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 6, generator=g),
        "proj": torch.randn(dim, 6, generator=g),
        "qproj": torch.randn(1, 6, generator=g),
        "centres": torch.randn(classes, dim, generator=g),
        "labels": torch.randint(0, classes, (n,), generator=g),
    }


class TinyNet(nn.Module):
    """Linear embedding + sigmoid quality: a stand-in backbone whose parameter gradients DDP averages."""

    def __init__(self, p: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.embed = nn.Linear(6, p["proj"].shape[0], bias=False)
        self.quality = nn.Linear(6, 1, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(p["proj"])
            self.quality.weight.copy_(p["qproj"])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x), torch.sigmoid(self.quality(x)).squeeze(1)


MARGIN = MarginConfig(m1=1.0, m2=0.3, m3=0.2, scale=8.0)


def step_inputs(form: str, emb: torch.Tensor, quality: torch.Tensor, weight: torch.Tensor):
    """What each step's loss sees: Step 1 the embedding (no quality), Step 2 the quality against a fixed embedding
    and classifier, Step 3 the embedding weighted by a fixed quality; the trained tensors keep their gradients."""
    if form == "step2":
        emb = emb.detach()
        weight.requires_grad_(False)
    else:
        quality = None if form == "step1" else quality.detach()
    if emb.requires_grad:
        emb.retain_grad()
    if quality is not None and quality.requires_grad:
        quality.retain_grad()
    return emb, quality


def rows_of(rank: int, sizes: list[int]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def partial_fc_worker(rank: int, world_size: int, out_dir: Path, cases: dict[str, tuple]) -> None:
    """Runs every case (name → ("equality", form, sizes), ("sampling", rate, classes) or ("gather", classes)) in one
    process group.

    One spawn for all of them: starting the processes (importing torch) costs far more than the cases.
    """
    results = {}
    runners = {"equality": equality_case, "sampling": sampling_case, "gather": gather_case}
    for name, (kind, *args) in cases.items():
        results[name] = runners[kind](rank, *args)
    torch.save(results, out_dir / f"rank{rank}.pt")


def equality_case(rank: int, form: str, sizes: list[int]) -> dict[str, Any]:
    """One forward/backward of Partial FC (sample_rate 1) under DDP on this rank's rows of ``problem()``.

    ``form``: "step1" (s_i = 1; embeddings and centres learn), "step2" (frozen embeddings and centres; s_i learns),
    "step3" (constant s_i; embeddings and centres learn).
    """
    p = problem()
    mine = rows_of(rank, sizes)
    tiny = TinyNet(p)
    # As in the steps, the part the form does not train is frozen (DDP waits for a gradient of every trainable one).
    (tiny.embed if form == "step2" else tiny.quality).requires_grad_(False)
    net = nn.parallel.DistributedDataParallel(tiny)
    pfc = PartialFC(p["centres"].shape[1], p["centres"].shape[0], CombinedMarginLoss(MARGIN))
    pfc.load_full(p["centres"])
    emb, quality = step_inputs(form, *net(p["x"][mine]), pfc.weight)
    out = pfc(emb, p["labels"][mine], quality)
    out.loss.backward()
    return {
        "loss": out.loss.detach(),
        "correct": out.correct,
        "emb_grad": emb.grad,
        "quality_grad": None if quality is None or not quality.requires_grad else quality.grad,
        "weight_grad": pfc.weight.grad,
        "net_grads": {k: v.grad for k, v in net.module.named_parameters()},
        "class_start": pfc.class_start,
    }


def sampling_case(rank: int, sample_rate: float, classes: int) -> dict[str, Any]:
    """Partial FC at ``sample_rate`` < 1: which classes each rank put in the softmax, and the loss."""
    p = problem(seed=1, n=8, classes=classes)
    torch.manual_seed(5)  # the ranks' global RNGs in step, as in training
    mine = rows_of(rank, [4, 4])
    pfc = PartialFC(p["centres"].shape[1], classes, CombinedMarginLoss(MARGIN), sample_rate=sample_rate)
    pfc.load_full(p["centres"])
    emb = p["x"][mine] @ p["proj"].T
    out = pfc(emb, p["labels"][mine])
    return {"loss": out.loss.detach(), "classes": out.classes, "num_local": pfc.num_local}


def training_worker(rank: int, world_size: int, out_dir: Path, overrides: list[str]) -> None:
    """Steps 1 → 2 → 3 of the ``test`` preset through the step runner, on this rank of a gloo group.

    Also writes, after one Step-1 batch of its own, a resumable checkpoint (every rank calls the save; rank 0
    writes), and saves this rank's shard and momentum to check that the checkpoint holds them in class order.
    """
    from eqface.config import apply_overrides, preset
    from eqface.train.distributed import DistEnv
    from eqface.train.plan import train_one_step
    from eqface.train.steps import Step

    env = DistEnv(rank=rank, world_size=world_size)
    cfg = apply_overrides(preset("test"), overrides)
    step1 = train_one_step(Step.ONE, cfg, out_dir / "step1", env)
    step2 = train_one_step(Step.TWO, cfg, out_dir / "step2", env, out_dir / "step1" / "final.pt")
    step3 = train_one_step(Step.THREE, cfg, out_dir / "step3", env, out_dir / "step2" / "final.pt")
    torch.save(
        {
            "step1": step1["classifier"]["weight"],
            "step2": step2["classifier"]["weight"],
            "step3": step3["classifier"]["weight"],
            **_one_saved_batch(env, cfg, out_dir),
        },
        out_dir / f"rank{rank}.pt",
    )


def _one_saved_batch(env: Any, cfg: Any, out_dir: Path) -> dict[str, Any]:
    from eqface.losses import CombinedMarginLoss
    from eqface.models import build_model
    from eqface.train.classifier_state import build_classifier
    from eqface.train.precision import resolve_precision
    from eqface.train.schedule import build_optimizer
    from eqface.train.steps import Step, StepModel
    from eqface.train.trainer import Position, _save_resume

    torch.manual_seed(0)
    margin = CombinedMarginLoss(cfg.margin)
    model = StepModel(Step.ONE, build_model(cfg.model), build_classifier(cfg, 5, margin), margin)
    optimizer = build_optimizer(model.parameters(), cfg.train.step1)
    images = torch.randn(4, 3, *cfg.model.image_size)
    labels = torch.tensor([0, 1, 3, 4]) if env.rank == 0 else torch.tensor([2, 2, 4, 1])
    model(images, labels).loss.backward()
    optimizer.step()
    _save_resume(out_dir / "resume.pt", Step.ONE, model, optimizer, Position(), env, resolve_precision("fp32", "cpu"))
    return {
        "shard": model.classifier.weight.detach().clone(),
        "momentum": optimizer.state[model.classifier.weight]["momentum_buffer"].clone(),
        "class_start": model.classifier.class_start,
    }


def gather_case(rank: int, classes: int) -> dict[str, Any]:
    """The full centres gathered from the shards: to every rank, and to rank 0 only (rank 1 gets None)."""
    p = problem(seed=2, classes=classes)
    pfc = PartialFC(p["centres"].shape[1], classes, CombinedMarginLoss(MARGIN))
    pfc.load_full(p["centres"])
    return {"everyone": pfc.gather_full(), "to_0": pfc.gather_full(dst=0), "expected": p["centres"]}
