"""``eqface pipeline compile-byor`` / ``run-local-byor``: the bring-your-own-recogniser Kubeflow pipeline (a
pretrained ONNX recogniser → import → Step 2 → evaluate → export → deploy), compiled to YAML or run here."""

from __future__ import annotations

import argparse
from pathlib import Path

from eqface.cli.pipeline_common import add_cluster_arguments, cluster_settings, print_outputs

DEFAULT_BYOR_YAML = Path("runs/pipeline/eqface-byor.yaml")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compile-byor",
        help="write the bring-your-own-recogniser pipeline YAML (pretrained ONNX → Step 2 → deploy)",
        description="Compiles the pipeline that takes a pretrained ONNX recogniser (the model_uri parameter: a path "
        "on the data volume, s3:// or gs://) through import → Step 2 on the frozen recogniser → evaluate → export "
        "→ deploy; Steps 1 and 3 are skipped. Kubernetes settings are fixed here, the rest stays editable in the UI.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_BYOR_YAML, help="YAML file to write")
    add_cluster_arguments(p)
    p.set_defaults(func=run_compile_byor)
    _add_run_local_parser(commands)


def _add_run_local_parser(commands: argparse._SubParsersAction) -> None:
    from eqface.byor.recogniser import DEFAULT_EVAL_IDENTITIES, DEFAULT_PACK

    p = commands.add_parser(
        "run-local-byor",
        help="run the bring-your-own-recogniser pipeline here (kfp.local SubprocessRunner, this environment)",
        description="Runs configure → prepare data → import → Step 2 → evaluate → export → deploy with kfp.local in "
        "this Python environment and deploys the local (CPU, python-backend) Triton variant into --repository. "
        "Any other parameter of the pipeline's form is set with --set NAME=VALUE (JSON values: "
        "--set input_mean='[127.0]' --set epochs=2 --set channel_order=BGR).",
    )
    p.add_argument("--model", required=True, metavar="URI", help="the ONNX recogniser: a path, s3://… or gs://…")
    p.add_argument("--data", default=DEFAULT_PACK, help="face pack: a path, shared:<file>, s3://… or gs://…")
    p.add_argument("--eval-identities", type=int, default=DEFAULT_EVAL_IDENTITIES, help="held-out identities")
    p.add_argument("--no-check", action="store_true", help="skip the normalisation check (untrained models)")
    p.add_argument(
        "--set",
        dest="form",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other parameter of the pipeline's form (repeatable)",
    )
    p.add_argument("--root", type=Path, default=Path("runs/kfp-local-byor"), help="pipeline root (artifacts)")
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("runs/kfp-local-byor/model_repository"),
        help="Triton model repository the deploy step writes to",
    )
    p.add_argument("--triton-url", default="", help="running Triton (explicit model control) to load the version into")
    p.add_argument("--accuracy-threshold", type=float, default=0.0, help="deploy gate: minimum verification accuracy")
    p.add_argument("--min-quality-std", type=float, default=0.0, help="deploy gate: minimum quality std")
    p.set_defaults(func=run_local_byor)


def form_values(pairs: list[str]) -> dict:
    """``NAME=VALUE`` strings → form values (VALUE read as JSON, else as a string).

    Raises:
        ValueError: a string without ``=`` or a name the form does not have (the message lists them).
    """
    import json

    from eqface.workflow.byor import form_defaults

    names = set(form_defaults())
    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--set {pair!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            values[name] = text
    return values


def run_compile_byor(args: argparse.Namespace) -> int:
    from components.byor_pipeline import compile_byor_pipeline

    cluster = cluster_settings(args)
    path = compile_byor_pipeline(args.out, cluster)
    print(f"wrote {path} (image {cluster.image}); upload it in the Kubeflow UI (Pipelines → Upload pipeline)")
    return 0


def run_local_byor(args: argparse.Namespace) -> int:
    from components.local_run import run_local_byor as run

    arguments = {
        "model_uri": args.model,
        "data_location": args.data,
        "eval_identities": args.eval_identities,
        **({"check_normalisation": False} if args.no_check else {}),
        **form_values(args.form),
        "triton_url": args.triton_url,
        "accuracy_threshold": args.accuracy_threshold,
        "min_quality_std": args.min_quality_std,
    }
    result = run(args.root, args.repository, arguments)
    m = result.metrics
    print(f"\npipeline finished in {result.seconds:.0f}s")
    print(
        f"  verification accuracy {100 * m['verification_accuracy']:.2f}%  AUC {m['verification_auc']:.4f}  "
        f"({int(m['heldout_identities'])} held-out identities, {int(m['heldout_images'])} images)"
    )
    print(
        f"  quality mean {m['quality_mean']:.3f} std {m['quality_std']:.3f}; EDC pAUC: quality "
        f"{m['edc_pauc_quality']:.4f}, embedding norm {m['edc_pauc_embedding_norm']:.4f}, random "
        f"{m['edc_pauc_random']:.4f}"
    )
    print_outputs(result, args.triton_url)
    return 0
