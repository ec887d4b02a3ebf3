"""Training and data-loading throughput, each arm measured side by side in one process and printed as ratios.

Training: one Step-1 update (backbone + classifier + Eq. 6, SGD) per call, for IResNet-50 and MobileFaceNet, in each
arm: ``fp32``, ``bf16``, ``fp16`` (CUDA only) and any of them with ``+cl`` (channels_last) or ``+compile``
(torch.compile). Arms of one backbone are timed in interleaved rounds (every arm once per round, in a fresh random
order) so machine noise hits them alike; the figure is the median step. Per arm it prints images/s (wall), CPU
seconds per image (this process, all threads: steadier than wall time on a shared machine), both as ratios to the
fp32 arm, and the top entries of a torch.profiler trace of one step (what limits that arm).

Data loading: images/s of the training DataLoader (decode + fit + augment + collate, as ``eqface train`` reads
``data.source=rec``) from a .rec file with 0, 1 and 2 worker processes, in interleaved rounds; CPU seconds per image
count the workers too (getrusage of this process and its reaped children). Without ``--rec``, a .rec is written
from the shared CelebA pack's first ``--rec-images`` faces.

  python bench/bench_train_throughput.py                                    # CPU, batch 8, fp32 vs bf16 (+cl)
  python bench/bench_train_throughput.py --device cuda --batch 128 --arms fp32 bf16 fp16 bf16+cl bf16+cl+compile
  python bench/bench_train_throughput.py --skip-data --backbones mobilefacenet --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eqface.config import MarginConfig, ModelConfig
from eqface.losses import CombinedMarginLoss, NormalizedClassifier
from eqface.models import build_model
from eqface.train.precision import Precision, maybe_compile, resolve_precision, to_memory_format
from eqface.train.steps import Step, StepModel

# (image size, embedding size) as the presets train them: IResNet at 112×112/512, MobileFaceNet at 112×96/128.
BACKBONES: dict[str, tuple[tuple[int, int], int]] = {
    "iresnet50": ((112, 112), 512),
    "mobilefacenet": ((112, 96), 128),
    "tiny": ((32, 32), 32),  # gpu_check.py's CPU dry run
}


@dataclass(frozen=True)
class Arm:
    precision: str
    channels_last: bool = False
    compile: bool = False

    @staticmethod
    def parse(text: str) -> Arm:
        precision, *flags = text.split("+")
        unknown = set(flags) - {"cl", "compile"}
        if unknown:
            raise ValueError(f"arm {text!r}: unknown flags {sorted(unknown)} (use +cl, +compile)")
        return Arm(precision, "cl" in flags, "compile" in flags)

    @property
    def name(self) -> str:
        return "+".join([self.precision] + ["cl"] * self.channels_last + ["compile"] * self.compile)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(
    backbone: str, arm: Arm, classes: int, device: torch.device, precision: Precision | None = None
) -> tuple[StepModel, Callable[[torch.Tensor, torch.Tensor], float]]:
    """The model and a closure running one Step-1 update on (images, labels) that returns the loss; the model is
    seeded alike in every arm, converted to channels_last and compiled as the trainer does it
    (``eqface.train.trainer``). ``precision`` defaults to ``resolve_precision`` of the arm."""
    size, emb = BACKBONES[backbone]
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone=backbone, embedding_size=emb, image_size=size))
    model = StepModel(Step.ONE, net, NormalizedClassifier(emb, classes), CombinedMarginLoss(MarginConfig()))
    to_memory_format(model.to(device).train(), arm.channels_last)
    forward = maybe_compile(model, arm.compile)
    precision = precision or resolve_precision(arm.precision, device, arm.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def run(images: torch.Tensor, labels: torch.Tensor) -> float:
        with precision.autocast():
            out = forward(precision.images(images), labels)
        precision.backward_and_step(out.loss, opt)
        return float(out.loss.detach())

    return model, run


def profile_top(run: Callable[[], Any], device: torch.device, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators of one call by self time (CUDA time on a GPU, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        _sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {"op": e.key, "self_ms": round(getattr(e, key) / 1000, 2), "share": round(getattr(e, key) / total, 3)}
        for e in events[:top]
    ]


def interleaved(
    runs: dict[str, Callable[[], Any]], rounds: int, steps: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each call, every arm once per round in a fresh random order."""
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in runs}
    order = random.Random(0)
    for _ in range(rounds):
        names = list(runs)
        order.shuffle(names)
        for name in names:
            for _ in range(steps):
                _sync(device)
                t, c = time.perf_counter(), time.process_time()
                runs[name]()
                _sync(device)
                times[name]["wall"].append(time.perf_counter() - t)
                times[name]["cpu"].append(time.process_time() - c)
    return times


def bench_training(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    arms = [Arm.parse(a) for a in args.arms]
    rows: list[dict[str, Any]] = []
    for backbone in args.backbones:
        size, _ = BACKBONES[backbone]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, 3, *size, generator=g).to(device)
        y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
        runs: dict[str, Callable[[], Any]] = {}
        for arm in arms:
            _, step = training_step(backbone, arm, args.classes, device)
            runs[arm.name] = lambda step=step: step(x, y)
            for _ in range(args.warmup):  # compile, cuDNN autotuning, allocator
                runs[arm.name]()
        times = interleaved(runs, args.rounds, args.steps, device)
        base = arms[0].name
        wall0, cpu0 = statistics.median(times[base]["wall"]), statistics.median(times[base]["cpu"])
        for arm in arms:
            wall, cpu = statistics.median(times[arm.name]["wall"]), statistics.median(times[arm.name]["cpu"])
            rows.append(
                {
                    "figure": "train_images_per_s",
                    "backbone": backbone,
                    "arm": arm.name,
                    "batch": args.batch,
                    "images_per_s": args.batch / wall,
                    "speedup_vs_" + base: wall0 / wall,
                    "cpu_s_per_image": cpu / args.batch,
                    "cpu_ratio_vs_" + base: cpu / cpu0,
                    "profile_top": profile_top(runs[arm.name], device, args.profile_top),
                }
            )
    return rows


def make_rec(out_dir: Path, images: int) -> Path:
    """A .rec of the shared CelebA pack's first ``images`` faces (JPEG, quality 95, as insightface packs them)."""
    from eqface import paths
    from eqface.data.image_ops import encode_image
    from eqface.data.packs import load_pack
    from eqface.data.recordio import write_recordio

    pack = load_pack(paths.resolve("shared:celeba_wild_subset_rgb112.npz"))
    count = min(images, len(pack))
    rec = out_dir / "celeba.rec"
    write_recordio(rec, ((encode_image(pack.image(i)), int(pack.labels[i])) for i in range(count)))
    return rec


def _cpu_seconds() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def loader_pass(rec: Path, workers: int, batch: int, batches: int, image_size: tuple[int, int]) -> tuple[float, float]:
    """(steady-state images/s after the first batch, CPU seconds per image of the whole pass incl. worker start)."""
    from torch.utils.data import DataLoader

    from eqface.config import AugmentConfig
    from eqface.data.augment import Augmenter
    from eqface.data.dataset import AugmentedFaces, EpochBatchSampler, collate
    from eqface.data.recordio import load_recordio

    source = load_recordio(rec)
    dataset = AugmentedFaces(source, image_size, Augmenter(AugmentConfig()), seed=0)
    sampler = EpochBatchSampler(len(source), batch, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    cpu = _cpu_seconds()
    it = iter(loader)
    seen, start = 0, 0.0
    for i, b in enumerate(it):
        if i == 0:
            start = time.perf_counter()  # after worker start-up and the first batch
            continue
        seen += len(b.labels)
        if i >= batches:
            break
    wall = time.perf_counter() - start
    del it  # joins the workers, so their CPU time is counted
    return seen / wall, (_cpu_seconds() - cpu) / ((seen + batch) or 1)


def bench_loading(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(args.rec) if args.rec else make_rec(Path(tmp), args.rec_images)
        batches = max(1, args.rec_images // args.loader_batch - 1)
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        cpus: dict[int, list[float]] = {w: [] for w in args.workers}
        order = random.Random(1)
        for _ in range(args.loader_rounds):
            ws = list(args.workers)
            order.shuffle(ws)
            for w in ws:
                rate, cpu = loader_pass(rec, w, args.loader_batch, batches, (112, 112))
                rates[w].append(rate)
                cpus[w].append(cpu)
    base = args.workers[0]
    r0, c0 = statistics.median(rates[base]), statistics.median(cpus[base])
    return [
        {
            "figure": "loader_images_per_s",
            "workers": w,
            "batch": args.loader_batch,
            "images_per_s": statistics.median(rates[w]),
            f"speedup_vs_{base}_workers": statistics.median(rates[w]) / r0,
            "cpu_s_per_image": statistics.median(cpus[w]),
            f"cpu_ratio_vs_{base}_workers": statistics.median(cpus[w]) / c0,
        }
        for w in args.workers
    ]


def print_report(train: list[dict[str, Any]], loading: list[dict[str, Any]], header: str) -> None:
    print(header)
    if train:
        print(f"{'backbone':<14} {'arm':<18} {'img/s':>8} {'speedup':>8} {'CPU ms/img':>11} {'CPU ratio':>9}")
        for r in train:
            speed = next(v for k, v in r.items() if k.startswith("speedup"))
            ratio = next(v for k, v in r.items() if k.startswith("cpu_ratio"))
            print(
                f"{r['backbone']:<14} {r['arm']:<18} {r['images_per_s']:>8.2f} {speed:>7.2f}x "
                f"{1000 * r['cpu_s_per_image']:>11.1f} {ratio:>8.2f}x"
            )
        for r in train:
            top = ", ".join(f"{p['op']} {100 * p['share']:.0f}%" for p in r["profile_top"])
            print(f"  profile {r['backbone']} {r['arm']}: {top}")
    if loading:
        print(f"{'loader workers':<15} {'img/s':>8} {'speedup':>8} {'CPU ms/img':>11} {'CPU ratio':>9}")
        for r in loading:
            speed = next(v for k, v in r.items() if k.startswith("speedup"))
            ratio = next(v for k, v in r.items() if k.startswith("cpu_ratio"))
            print(
                f"{r['workers']:<15} {r['images_per_s']:>8.1f} {speed:>7.2f}x "
                f"{1000 * r['cpu_s_per_image']:>11.2f} {ratio:>8.2f}x"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbones", nargs="+", default=["iresnet50", "mobilefacenet"], choices=list(BACKBONES))
    p.add_argument("--arms", nargs="+", default=["fp32", "bf16", "fp32+cl", "bf16+cl"], help="the first is the base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per arm per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--profile-top", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-data", action="store_true")
    p.add_argument("--rec", help="a .rec file to read (default: one written from the shared CelebA pack)")
    p.add_argument("--rec-images", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="the first is the base")
    p.add_argument("--loader-batch", type=int, default=64)
    p.add_argument("--loader-rounds", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    device = torch.device(args.device)
    train = [] if args.skip_train else bench_training(args, device)
    loading = [] if args.skip_data else bench_loading(args)
    load = os.getloadavg()
    header = (
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (after the run)"
    )
    print_report(train, loading, header)
    if args.json:
        Path(args.json).write_text(json.dumps({"header": header, "train": train, "loading": loading}, indent=2))


if __name__ == "__main__":
    main()
