"""``eqface train``: the whole 1 → 2 → (3 → 2) plan, or one step from a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eqface.cli.options import add_config_options, resolve_config

STEPS = {"all": None, "1": "step1", "2": "step2", "3": "step3"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train EQFace (Step 1 → 2 → 3 → 2) and report accuracy and quality",
        description="Trains the EQFace steps into --out. Re-running the same command resumes an interrupted run "
        "(mid-epoch, from the last checkpoint). Under torchrun it trains with DistributedDataParallel "
        "(NCCL on GPUs, gloo on CPU).",
    )
    add_config_options(p)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (checkpoints, logs, model.pt)")
    p.add_argument(
        "--step",
        choices=sorted(STEPS),
        default="all",
        help="all: every step in order; 1/2/3: only that step, into --out (Steps 2 and 3 need --init)",
    )
    p.add_argument(
        "--init",
        type=Path,
        metavar="FINAL_PT",
        help="for --step 2/3: the previous step's final.pt (Step 2 after 1 or 3, Step 3 after 2)",
    )
    p.add_argument("--no-summary", action="store_true", help="skip the held-out evaluation at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Heavy imports here so `eqface --help` stays fast.
    from eqface.train.distributed import init_distributed, shutdown
    from eqface.train.plan import MODEL_FILE, train_all_steps, train_one_step
    from eqface.train.steps import Step
    from eqface.train.trainer import FINAL

    cfg = resolve_config(args)
    if args.step in ("2", "3") and args.init is None:
        raise ValueError(f"--step {args.step} needs --init (the previous step's final.pt)")
    env = init_distributed(cfg.train.device)
    try:
        if args.step == "all":
            state = train_all_steps(cfg, args.out, env)
            model_path = args.out / MODEL_FILE
        else:
            state = train_one_step(Step(STEPS[args.step]), cfg, args.out, env, args.init)
            model_path = args.out / FINAL
        if env.is_main:
            print(f"model: {model_path}")
            if not args.no_summary:
                _report(cfg, state, args.out, env.device)
    finally:
        shutdown(env)
    return 0


def _report(cfg, state, out: Path, device) -> None:
    from eqface.models import build_model
    from eqface.train.heldout import evaluate_held_out
    from eqface.train.plan import load_training_data
    from eqface.train.summary import format_summary, summary_dict

    _, held_out = load_training_data(cfg)
    if held_out is None:
        print("no held-out identities (data.eval_identities = 0): skipping the summary")
        return
    net = build_model(cfg.model)
    net.load_state_dict(state["net"])
    summary = summary_dict(evaluate_held_out(net, held_out, tuple(cfg.model.image_size), device, cfg.train.seed))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"summary: {out / 'summary.json'}")
