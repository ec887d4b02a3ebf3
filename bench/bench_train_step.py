"""Training-step cost of Eq. 6 + the quality branch versus a plain combined-margin step on the same backbone.

Steps are timed in interleaved rounds (every variant once per round, in a fresh random order) in one process so machine
noise hits all variants alike; the report gives the median step time of each variant and its ratio to the plain step
(target for "eq6+quality": ≤ 1.05×). "plain (A/A)" is a second, identical plain step: its ratio is the noise floor.
Variants:
  plain            backbone fwd/bwd + classifier + combined-margin loss (Eq. 3; Step 1)
  eq6+quality      the same, plus the quality branch fwd/bwd and s_i·S scaling (Eq. 6, everything trainable)
  step2            frozen backbone (no grad), quality branch trained (Step 2)
  step3-precomp    Eq. 6 with precomputed s_i (Step 3, the default)
  step3-online     Eq. 6 with s_i from a frozen teacher network on each augmented view (Step 3, online)

  python bench/bench_train_step.py --backbone iresnet18 --batch 16 --rounds 5
  python bench/bench_train_step.py --backbone mobilefacenet --image-size 112 96 --embedding 128 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable

import torch

from eqface.config import MarginConfig, ModelConfig
from eqface.losses import CombinedMarginLoss, NormalizedClassifier
from eqface.models import build_model
from eqface.train.steps import Step, StepModel


def plain_step(net, classifier, loss_fn, opt) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        emb, _ = net.embed_and_map(x)
        loss = loss_fn(classifier(emb), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def eq6_step(net, classifier, loss_fn, opt) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        emb, fmap = net.embed_and_map(x)
        loss = loss_fn(classifier(emb), y, net.quality(fmap).squeeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def step_model_step(
    model: StepModel, opt, quality: torch.Tensor | None
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        out = model(x, y, quality)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return run


def build_variants(args: argparse.Namespace, device: torch.device) -> dict[str, Callable]:
    cfg = ModelConfig(backbone=args.backbone, embedding_size=args.embedding, image_size=tuple(args.image_size))
    loss_fn = CombinedMarginLoss(MarginConfig())
    variants = {}
    for name in ("plain", "plain (A/A)", "eq6+quality", "step2", "step3-precomp", "step3-online"):
        torch.manual_seed(0)
        net, classifier = build_model(cfg).to(device), NormalizedClassifier(args.embedding, args.classes).to(device)
        if name in ("plain", "plain (A/A)", "eq6+quality"):
            params = list(net.backbone.parameters()) + list(classifier.parameters())
            params += list(net.quality.parameters()) if name == "eq6+quality" else []
            net.train()
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
            variants[name] = (eq6_step if name == "eq6+quality" else plain_step)(net, classifier, loss_fn, opt)
            continue
        step = Step.TWO if name == "step2" else Step.THREE
        teacher = copy.deepcopy(net) if name == "step3-online" else None
        model = StepModel(step, net, classifier, loss_fn, teacher=teacher).to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
        quality = torch.rand(args.batch, device=device) if name == "step3-precomp" else None
        variants[name] = step_model_step(model, opt, quality)
    return variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="iresnet18")
    p.add_argument("--image-size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    p.add_argument("--embedding", type=int, default=512)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each times every variant")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    variants = build_variants(args, device)
    x = torch.randn(args.batch, 3, *args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}  # process CPU seconds: less sensitive to other load
    for run in variants.values():  # warm-up
        run(x, y)
    order = random.Random(0)
    for _ in range(args.rounds):
        names = list(variants)
        order.shuffle(names)
        for name in names:
            run = variants[name]
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t, c = time.perf_counter(), time.process_time()
                run(x, y)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
    base, cpu_base = statistics.median(times["plain"]), statistics.median(cpu["plain"])
    print(
        f"{args.backbone} {args.image_size[0]}x{args.image_size[1]} batch {args.batch} on {device}, "
        f"{args.rounds}×{args.steps} interleaved steps per variant, torch threads {torch.get_num_threads()}"
    )
    print(f"{'variant':<15} {'wall ms':>9} {'vs plain':>9} {'CPU ms':>9} {'vs plain':>9}")
    for name in variants:
        wall, proc = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"{name:<15} {1000 * wall:>9.1f} {wall / base:>8.3f}x {1000 * proc:>9.1f} {proc / cpu_base:>8.3f}x")


if __name__ == "__main__":
    main()
