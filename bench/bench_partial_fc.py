"""Classifier memory per rank, full FC vs Partial FC: measured at a scaled size on CPU, extrapolated on paper.

One training step of the classifier alone (random unit embeddings in, SGD with momentum, fp32 weights) per variant,
each in fresh processes: the full matrix (the same on every DDP rank, so one process), and Partial FC at each sample
rate on ``--world`` real gloo ranks. Per rank it records, in bytes:

  params     the centres this rank holds (C × D, or its shard C/W × D)
  grad       their gradient (dense, the same size: the sampled rows index into one tensor)
  momentum   SGD's momentum buffer (the same size again)
  centre_copies  centres autograd keeps for the backward (normalised, or sampled and normalised): [k, D] tensors
  logits     the rest of what autograd keeps (cos θ, margin logits, softmax…; tiny embedding copies); both counted
             once per storage with saved-tensor hooks; logits scale with rows × columns of the logit matrix
  peak RSS   the step's measured peak resident memory above the process's memory before it (a cross-check:
             params + grad + momentum + logits + transients)

The extrapolation uses the exact sizes for params/grad/momentum (C/W·D·4 bytes each), the measured centre copies
per centre row used, and the measured bytes per logit element times the target's logit matrix: full FC [B, C] per
rank (each rank's own batch against every class), Partial FC [W·B, sample_rate·C/W] (the global batch against the
rank's sampled shard).

  python bench/bench_partial_fc.py                       # 200 k × 512 at W = 2 → 2 M × 512 at W = 8, batch 128/rank
  python bench/bench_partial_fc.py --classes 50000 --json bench_partial_fc.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eqface.config import MarginConfig
from eqface.losses import CombinedMarginLoss, NormalizedClassifier, PartialFC

FP32 = 4
GIB = 2**30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _SavedBytes:
    """Bytes of the distinct storages autograd saves for the backward, split into copies of the centres ([k, D]
    with k ≠ the batch rows: normalised or sampled centres) and the rest (logit-sized tensors, embeddings)."""

    def __init__(self, dim: int, batch_rows: int) -> None:
        self.dim, self.batch_rows = dim, batch_rows
        self.storages: dict[int, tuple[int, bool]] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        centres = t.dim() == 2 and self.dim in t.shape and self.batch_rows not in t.shape  # [k, D] or its transpose
        self.storages[storage.data_ptr()] = (storage.nbytes(), centres)
        return t

    def total(self, centres: bool, exclude: set[int]) -> int:
        return sum(n for ptr, (n, c) in self.storages.items() if c == centres and ptr not in exclude)


def _measure(classifier: torch.nn.Module, step: Any, dim: int, batch_rows: int) -> dict[str, int]:
    """Runs one SGD step (momentum 0.9) of ``step()`` → loss and returns the byte counts of the module docstring."""
    params = [p for p in classifier.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    saved = _SavedBytes(dim, batch_rows)
    before = _rss()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        loss = step()
    loss.backward()
    optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    param_ids = {p.untyped_storage().data_ptr() for p in params}
    return {
        "params": sum(p.numel() * p.element_size() for p in params),
        "grad": sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None),
        "momentum": sum(
            t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        ),
        "centre_copies": saved.total(True, param_ids),
        "logits": saved.total(False, param_ids),
        "peak_rss": max(peak - before, 0),
        "loss": loss.item(),
    }


def _inputs(args: argparse.Namespace, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rank)
    emb = torch.randn(args.batch, args.dim, generator=g).requires_grad_()
    return emb, torch.randint(0, args.classes, (args.batch,), generator=g)


def _full_worker(rank: int, args: argparse.Namespace, out: Path) -> None:
    torch.set_num_threads(args.threads)
    classifier = NormalizedClassifier(args.dim, args.classes)
    loss_fn = CombinedMarginLoss(MarginConfig())
    emb, labels = _inputs(args, rank)
    result = _measure(classifier, lambda: loss_fn(classifier(emb), labels), args.dim, args.batch)
    result["logit_elements"], result["centre_rows"] = args.batch * args.classes, args.classes
    (out / "full.json").write_text(json.dumps(result))


def _pfc_worker(rank: int, args: argparse.Namespace, rate: float, out: Path) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"file://{out / f'rv-{rate}'}", rank=rank, world_size=args.world)
    try:
        classifier = PartialFC(args.dim, args.classes, CombinedMarginLoss(MarginConfig()), sample_rate=rate)
        emb, labels = _inputs(args, rank)
        sampled: list[int] = []

        def step() -> torch.Tensor:
            result = classifier(emb, labels)
            sampled.append(result.classes.numel())
            return result.loss

        result = _measure(classifier, step, args.dim, args.world * args.batch)
        result["logit_elements"] = args.world * args.batch * sampled[0]
        result["centre_rows"] = sampled[0]
        (out / f"pfc-{rate}-rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Per variant: the per-rank byte counts (the largest over ranks for Partial FC)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        mp.spawn(_full_worker, args=(args, out), nprocs=1, join=True)
        results = {"full": json.loads((out / "full.json").read_text())}
        for rate in args.rates:
            mp.spawn(_pfc_worker, args=(args, rate, out), nprocs=args.world, join=True)
            ranks = [json.loads((out / f"pfc-{rate}-rank{r}.json").read_text()) for r in range(args.world)]
            results[f"pfc-{rate}"] = {k: max(r[k] for r in ranks) for k in ranks[0]}
    return results


def extrapolate(measured: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """Per-rank bytes at ``--target-classes`` × ``--dim`` on ``--target-world`` ranks (see the module docstring)."""
    classes, world, batch, dim = args.target_classes, args.target_world, args.batch, args.dim
    projected = {}
    for name, m in measured.items():
        if name == "full":
            held = used = classes
            elements = batch * classes
        else:
            held = -(-classes // world)
            used = int(float(name.split("-", 1)[1]) * held)
            elements = world * batch * used
        weights = held * dim * FP32
        projected[name] = {
            "params": weights,
            "grad": weights,
            "momentum": weights,
            "centre_copies": int(m["centre_copies"] / m["centre_rows"] * used),
            "logits": int(m["logits"] / m["logit_elements"] * elements),
        }
        projected[name]["total"] = sum(projected[name].values())
    return projected


def _print(measured: dict, projected: dict, args: argparse.Namespace) -> None:
    print(
        f"measured per rank: {args.classes:,} classes × {args.dim}, batch {args.batch}/rank, "
        f"Partial FC on {args.world} gloo ranks (MiB)"
    )
    keys = ("params", "grad", "momentum", "centre_copies", "logits")
    print(f"{'variant':<10}" + "".join(f"{k:>14}" for k in keys) + f"{'B/logit':>9}{'peak RSS':>10}")
    for name, m in measured.items():
        per = m["logits"] / m["logit_elements"]
        print(
            f"{name:<10}" + "".join(f"{m[k] / 2**20:>14.1f}" for k in keys) + f"{per:>9.1f}"
            f"{m['peak_rss'] / 2**20:>10.1f}"
        )
    full = projected["full"]["total"]
    print(
        f"\nextrapolated per rank: {args.target_classes:,} classes × {args.dim}, world size {args.target_world}, "
        f"batch {args.batch}/rank, fp32 + SGD momentum (GiB)"
    )
    keys = ("params", "grad", "momentum", "centre_copies", "logits", "total")
    print(f"{'variant':<10}" + "".join(f"{k:>14}" for k in keys) + f"{'÷ full':>9}")
    for name, p in projected.items():
        print(f"{name:<10}" + "".join(f"{p[k] / GIB:>14.2f}" for k in keys) + f"{p['total'] / full:>9.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=200_000, help="identities measured")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128, help="samples per rank")
    p.add_argument("--world", type=int, default=2, help="gloo ranks measured")
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.2, 0.1])
    p.add_argument("--target-classes", type=int, default=2_000_000)
    p.add_argument("--target-world", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    measured = measure(args)
    projected = extrapolate(measured, args)
    _print(measured, projected, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "measured": measured, "extrapolated": projected},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
