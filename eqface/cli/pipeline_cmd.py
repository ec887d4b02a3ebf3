"""``eqface pipeline``: compile the Kubeflow pipeline to YAML, or run all of it here with kfp's local runner."""

from __future__ import annotations

import argparse
from pathlib import Path

from eqface.cli.byor_pipeline_cmd import add_parsers as add_byor_parsers
from eqface.cli.pipeline_common import add_cluster_arguments, cluster_settings, print_outputs
from eqface.config import PRESETS

DEFAULT_YAML = Path("runs/pipeline/eqface-pipeline.yaml")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="Kubeflow pipeline: compile to YAML, or run it locally",
        description="The training-to-serving pipeline of the components package (pip install '.[pipeline]').",
    )
    commands = p.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")
    _add_compile_parser(commands)
    _add_run_local_parser(commands)
    add_byor_parsers(commands)


def _add_compile_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compile",
        help="write the pipeline YAML to upload in the Kubeflow UI",
        description="Compiles the pipeline with its Kubernetes settings (GPUs, volumes, secret, image) fixed; the "
        "training, data and deployment parameters stay editable in the UI, with defaults from --preset.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_YAML, help="YAML file to write")
    p.add_argument("--iterations", type=int, default=1, help="rounds of Step 3 → Step 2 (unrolled when compiling)")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="defaults of the UI form")
    add_cluster_arguments(p)
    p.set_defaults(func=run_compile)


def _add_run_local_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "run-local",
        help="run the whole pipeline here (kfp.local SubprocessRunner, this environment)",
        description="Runs configure → prepare data → Step 1 → 2 → (3 → 2) × N → evaluate → export → deploy with "
        "kfp.local in this Python environment, on the form defaults of --preset (test: synthetic 32×32 faces, "
        "seconds per step), and deploys the local (CPU, python-backend) Triton variant into --repository.",
    )
    p.add_argument("--iterations", type=int, default=1, help="rounds of Step 3 → Step 2")
    p.add_argument("--preset", default="test", choices=sorted(PRESETS), help="form defaults")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to the pipeline's `overrides` parameter (repeatable)",
    )
    p.add_argument("--root", type=Path, default=Path("runs/kfp-local"), help="pipeline root (artifacts)")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("runs/kfp-local/model_repository"),
        help="Triton model repository the deploy step writes to",
    )
    p.add_argument("--triton-url", default="", help="running Triton (explicit model control) to load the version into")
    p.add_argument("--accuracy-threshold", type=float, default=0.0, help="deploy gate: minimum verification accuracy")
    p.add_argument("--min-quality-std", type=float, default=0.0, help="deploy gate: minimum quality std")
    p.add_argument("--gpus", type=int, default=1, help="processes per training step (>1: torchrun, gloo on CPU)")
    p.add_argument(
        "--cache",
        action="store_true",
        help="reuse the steps an earlier run under --root finished with equal inputs (kfp.local's task cache)",
    )
    p.set_defaults(func=run_local)


def run_compile(args: argparse.Namespace) -> int:
    from components.pipeline import compile_pipeline

    cluster = cluster_settings(args)
    path = compile_pipeline(args.out, iterations=args.iterations, preset=args.preset, cluster=cluster)
    print(
        f"wrote {path} ({args.iterations} iteration{'s' if args.iterations != 1 else ''} of Step 3 → Step 2, "
        f"image {cluster.image}); upload it in the Kubeflow UI (Pipelines → Upload pipeline)"
    )
    return 0


def run_local(args: argparse.Namespace) -> int:
    from components.local_run import run_local as run

    result = run(
        args.root,
        args.repository,
        iterations=args.iterations,
        preset=args.preset,
        overrides=args.overrides,
        triton_url=args.triton_url,
        accuracy_threshold=args.accuracy_threshold,
        min_quality_std=args.min_quality_std,
        gpus=args.gpus,
        cache=args.cache,
    )
    m = result.metrics
    print(f"\npipeline finished in {result.seconds:.0f}s")
    print(
        f"  verification accuracy {100 * m['verification_accuracy']:.2f}% "
        f"± {100 * m['verification_accuracy_std']:.2f}  AUC {m['verification_auc']:.4f}  "
        f"({int(m['heldout_identities'])} held-out identities, "
        f"{int(m['heldout_images'])} images)"
    )
    from eqface.data.augment import DEGRADATIONS

    conditions = "  ".join(f"{kind} {m[f'quality_mean_{kind}']:.3f}" for kind in ("clean", *DEGRADATIONS))
    print(f"  quality mean {m['quality_mean']:.3f} std {m['quality_std']:.3f}; by condition: {conditions}")
    chosen = "final model" if m["chosen_final"] else "Step 1 → 2 model"
    print(f"  chosen  {chosen}: {_candidates(m)}")
    print_outputs(result, args.triton_url)
    return 0


def _candidates(m: dict[str, float]) -> str:
    def figures(name: str) -> str:
        tar = m.get(f"{name}_tar_at_far_1e-3")
        tar_text = "n/r" if tar is None else f"{100 * tar:.2f}%"
        return f"accuracy {100 * m[f'{name}_verification_accuracy']:.2f}%, TAR@FAR 1e-3 {tar_text}"

    return f"final ({figures('final')}) vs Step 1 → 2 ({figures('steps_1_2')})"
