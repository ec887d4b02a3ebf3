"""The GPU proof of issue 15, prepared to run once on a bare GPU host (torch + numpy, no network): see gpu_check.sh.

Figures, one JSON line each, then a summary of ratios:

  train      IResNet-50 training images/s at batch 128: fp32, bf16, fp16 (+ grad scaler), bf16 + channels_last,
             timed in interleaved rounds, with each arm's top profiler entries; bf16 + channels_last + compile last,
             if the time budget allows
  ddp        the same bf16 step under DistributedDataParallel in a one-process NCCL group, and its ratio to the plain
             step (what DDP's hooks and buckets cost when there is nobody to talk to)
  pfc        Partial FC (eqface.losses.partial_fc.PartialFC) at 1 M identities × 512: classifier update steps/s and
             peak GPU memory at sample rates 0.1 and 1
  infer      fp16 inference images/s at batch 1, 32 and 128, and the ratio to fp32

``--device cpu --tiny`` runs the same code at toy sizes (tiny backbone, 1,000 identities, gloo instead of NCCL,
bf16 inference, fp16 with a CPU grad scaler) so the GPU run is not the first run (tests/test_gpu_check.py). Each
section stops the run from going past ``--budget-s``: a section that would start too late prints a "skipped" line.
Exit status 1 when a figure could not be measured (its line says why), 0 otherwise.

  PYTHONPATH=. python3 bench/gpu_check.py --device cuda
  PYTHONPATH=. python3 bench/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from bench_train_throughput import Arm, interleaved, profile_top, training_step

from eqface.config import MarginConfig, ModelConfig
from eqface.models import build_model
from eqface.train.precision import Precision, resolve_precision


@dataclass(frozen=True)
class Sizes:
    backbone: str
    batch: int
    classes: int  # the training arms' full classifier
    pfc_classes: int
    infer_batches: tuple[int, ...]
    rounds: int
    steps: int
    warmup: int


FULL = Sizes("iresnet50", 128, 10_000, 1_000_000, (1, 32, 128), rounds=3, steps=5, warmup=3)
TINY = Sizes("tiny", 4, 100, 1_000, (1, 4, 8), rounds=1, steps=1, warmup=1)


@dataclass
class Run:
    device: torch.device
    sizes: Sizes
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    figures: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def emit(self, figure: dict[str, Any]) -> None:
        figure = {**figure, "elapsed_s": round(time.monotonic() - self.started, 1)}
        self.figures.append(figure)
        self.failed += figure.get("status") not in ("ok", "skipped")
        print(json.dumps(figure), flush=True)

    def section(self, name: str, needs_s: float, body: Callable[[], None]) -> None:
        """Runs ``body`` when ``needs_s`` seconds are left; an exception becomes a failed figure, not a dead run."""
        if self.left() < needs_s:
            self.emit({"figure": name, "status": "skipped", "reason": f"{self.left():.0f} s left, needs {needs_s}"})
            return
        try:
            body()
        except Exception as exc:  # a failed figure must not cost the others
            self.emit({"figure": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def precision_for(arm: Arm, device: torch.device) -> Precision:
    """The arm's precision; on CPU (the dry run) fp16 gets a CPU grad scaler so the scaler's code path runs too."""
    if arm.precision == "fp16" and device.type == "cpu":
        return Precision("fp16", "cpu", arm.channels_last, torch.amp.GradScaler("cpu"))
    return resolve_precision(arm.precision, device, arm.channels_last)


def batch_of(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    from bench_train_throughput import BACKBONES

    size, _ = BACKBONES[run.sizes.backbone]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(run.sizes.batch, 3, *size, generator=g).to(run.device)
    y = torch.randint(0, run.sizes.classes, (run.sizes.batch,), generator=g).to(run.device)
    return x, y


def train_arms(run: Run, arms: list[Arm], figure: str) -> None:
    """Images/s of each arm, interleaved, as ratios to the first; one line per arm."""
    x, y = batch_of(run)
    runs: dict[str, Callable[[], Any]] = {}
    scalers: dict[str, Precision] = {}
    for arm in arms:
        scalers[arm.name] = precision_for(arm, run.device)
        _, step = training_step(run.sizes.backbone, arm, run.sizes.classes, run.device, scalers[arm.name])
        runs[arm.name] = lambda step=step: step(x, y)
        for _ in range(run.sizes.warmup):
            loss = runs[arm.name]()
        if not torch.isfinite(torch.tensor(loss)):
            raise FloatingPointError(f"{arm.name}: loss {loss} after warm-up")
    times = interleaved(runs, run.sizes.rounds, run.sizes.steps, run.device)
    base = statistics.median(times[arms[0].name]["wall"])
    for arm in arms:
        wall = statistics.median(times[arm.name]["wall"])
        scaler = scalers[arm.name].scaler
        run.emit(
            {
                "figure": figure,
                "status": "ok",
                "backbone": run.sizes.backbone,
                "arm": arm.name,
                "batch": run.sizes.batch,
                "images_per_s": round(run.sizes.batch / wall, 1),
                f"speedup_vs_{arms[0].name}": round(base / wall, 3),
                "grad_scale": None if scaler is None else scaler.get_scale(),
                "profile_top": profile_top(runs[arm.name], run.device, 5),
            }
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_step(run: Run) -> None:
    """bf16 step plain vs under DDP in a one-process group (NCCL on CUDA, gloo on CPU)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if run.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        arm = Arm("bf16")
        x, y = batch_of(run)
        precision = precision_for(arm, run.device)
        model, plain = training_step(run.sizes.backbone, arm, run.sizes.classes, run.device, precision)
        wrapped = DistributedDataParallel(model, device_ids=[run.device] if run.device.type == "cuda" else None)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

        def ddp() -> float:
            with precision.autocast():
                out = wrapped(x, y)
            precision.backward_and_step(out.loss, opt)
            return float(out.loss.detach())

        runs = {"plain": lambda: plain(x, y), "ddp": ddp}
        for f in runs.values():
            for _ in range(run.sizes.warmup):
                f()
        times = interleaved(runs, run.sizes.rounds, run.sizes.steps, run.device)
        plain_s, ddp_s = (statistics.median(times[k]["wall"]) for k in ("plain", "ddp"))
        run.emit(
            {
                "figure": "ddp_one_process",
                "status": "ok",
                "backend": backend,
                "world_size": dist.get_world_size(),
                "images_per_s": round(run.sizes.batch / ddp_s, 1),
                "plain_images_per_s": round(run.sizes.batch / plain_s, 1),
                "ddp_vs_plain": round(plain_s / ddp_s, 3),
            }
        )
    finally:
        dist.destroy_process_group()


def partial_fc(run: Run) -> None:
    """Classifier-only update steps of Partial FC over ``pfc_classes`` × 512 centres, random unit embeddings."""
    try:
        from eqface.losses.partial_fc import PartialFC
    except ImportError as exc:
        run.emit(
            {
                "figure": "partial_fc",
                "status": "missing",
                "error": f"eqface.losses.partial_fc.PartialFC is not importable ({exc}): this checkout has no "
                "Partial FC; run the script from a tree that has it",
            }
        )
        return
    for rate in (0.1, 1.0):
        _partial_fc_rate(run, PartialFC, rate)  # in a function: one rate's centres are freed before the next


def _partial_fc_rate(run: Run, partial_fc_class: type, rate: float) -> None:
    from eqface.losses import CombinedMarginLoss

    dim, n = 512, run.sizes.batch
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(run.device)
    torch.manual_seed(0)
    pfc = partial_fc_class(dim, run.sizes.pfc_classes, CombinedMarginLoss(MarginConfig()), sample_rate=rate)
    pfc = pfc.to(run.device)
    opt = torch.optim.SGD(pfc.parameters(), lr=0.1, momentum=0.9)
    emb = torch.nn.functional.normalize(torch.randn(n, dim, device=run.device), dim=1).requires_grad_()
    labels = torch.randint(0, run.sizes.pfc_classes, (n,), device=run.device)

    def step() -> float:
        out = pfc(emb, labels, None)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    for _ in range(run.sizes.warmup):
        loss = step()
    wall = statistics.median(interleaved({"pfc": step}, run.sizes.rounds, run.sizes.steps, run.device)["pfc"]["wall"])
    peak = torch.cuda.max_memory_allocated(run.device) / 2**30 if run.device.type == "cuda" else None
    run.emit(
        {
            "figure": "partial_fc",
            "status": "ok" if torch.isfinite(torch.tensor(loss)) else "failed",
            "classes": run.sizes.pfc_classes,
            "embedding": dim,
            "sample_rate": rate,
            "batch": n,
            "step_ms": round(1000 * wall, 2),
            "images_per_s": round(n / wall, 1),
            "peak_gpu_gib": None if peak is None else round(peak, 2),
            "loss": round(loss, 3),
        }
    )


def inference(run: Run) -> None:
    """Images/s of the whole network (embedding + quality) in eval mode, half precision vs fp32, per batch size."""
    from bench_train_throughput import BACKBONES

    size, emb = BACKBONES[run.sizes.backbone]
    half = torch.float16 if run.device.type == "cuda" else torch.bfloat16  # CPU: what its kernels support
    torch.manual_seed(0)
    nets = {
        dtype: build_model(ModelConfig(backbone=run.sizes.backbone, embedding_size=emb, image_size=size))
        .to(run.device, dtype)
        .eval()
        for dtype in (torch.float32, half)
    }
    nets[half].load_state_dict(nets[torch.float32].state_dict())
    for batch in run.sizes.infer_batches:
        x = torch.randn(batch, 3, *size, device=run.device)
        runs: dict[str, Callable[[], Any]] = {
            str(dtype).removeprefix("torch."): (lambda net=net, xd=x.to(dtype): net(xd)) for dtype, net in nets.items()
        }
        with torch.inference_mode():
            for f in runs.values():
                for _ in range(run.sizes.warmup):
                    f()
            times = interleaved(runs, run.sizes.rounds, run.sizes.steps * 2, run.device)
            e32, q32 = nets[torch.float32](x)
            e16, q16 = nets[half](x.to(half))
        walls = {k: statistics.median(v["wall"]) for k, v in times.items()}
        half_name = str(half).removeprefix("torch.")
        run.emit(
            {
                "figure": "inference",
                "status": "ok",
                "backbone": run.sizes.backbone,
                "dtype": half_name,
                "batch": batch,
                "images_per_s": round(batch / walls[half_name], 1),
                "fp32_images_per_s": round(batch / walls["float32"], 1),
                "speedup_vs_fp32": round(walls["float32"] / walls[half_name], 3),
                "max_cos_gap": round(float(1 - (e32 * e16.float()).sum(1).min()), 5),
                "max_quality_gap": round(float((q32 - q16.float()).abs().max()), 5),
            }
        )


def summary(run: Run) -> None:
    ok = [f for f in run.figures if f.get("status") == "ok"]
    lines = [f"summary on {describe(run.device)} in {time.monotonic() - run.started:.0f} s:"]
    for f in ok:
        if f["figure"] == "train":
            lines.append(f"  train {f['arm']:<18} {f['images_per_s']:>9} img/s  {_ratio(f)}")
        elif f["figure"] == "ddp_one_process":
            lines.append(f"  ddp ({f['backend']}) bf16 {f['images_per_s']:>9} img/s  {f['ddp_vs_plain']}x plain")
        elif f["figure"] == "partial_fc":
            lines.append(
                f"  partial fc {f['classes']} × {f['embedding']} rate {f['sample_rate']}: {f['step_ms']} ms/step, "
                f"peak {f['peak_gpu_gib']} GiB"
            )
        elif f["figure"] == "inference":
            lines.append(
                f"  infer {f['dtype']} batch {f['batch']:>3}: {f['images_per_s']:>9} img/s  "
                f"{f['speedup_vs_fp32']}x fp32"
            )
    not_ok = [f"{f['figure']}: {f.get('status')}" for f in run.figures if f.get("status") != "ok"]
    lines.append(f"  not measured: {', '.join(not_ok) if not_ok else 'none'}")
    print("\n".join(lines), flush=True)


def _ratio(f: dict[str, Any]) -> str:
    return next(f"{v}x {k.removeprefix('speedup_vs_')}" for k, v in f.items() if k.startswith("speedup_vs_"))


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"cpu (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy sizes: the CPU dry run")
    p.add_argument("--budget-s", type=float, default=450.0, help="sections that would start later are skipped")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile arm")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: --device cuda but torch.cuda.is_available() is False")
        torch.backends.cudnn.benchmark = True
    run = Run(device, TINY if args.tiny else FULL, args.budget_s)
    print(json.dumps({"figure": "host", "status": "ok", "device": describe(device), "pid": os.getpid()}), flush=True)
    arms = [Arm("fp32"), Arm("bf16"), Arm("fp16"), Arm("bf16", channels_last=True)]
    run.section("train", 60, lambda: train_arms(run, arms, "train"))
    run.section("ddp_one_process", 40, lambda: ddp_step(run))
    run.section("partial_fc", 40, lambda: partial_fc(run))
    run.section("inference", 40, lambda: inference(run))
    if not args.no_compile:  # last: compiling IResNet-50 takes a minute or more
        compiled = [Arm("bf16", channels_last=True), Arm("bf16", channels_last=True, compile=True)]
        run.section("train_compile", 150, lambda: train_arms(run, compiled, "train"))
    summary(run)
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
