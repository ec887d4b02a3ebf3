"""``eqface byor``: Step 2 and export for a recogniser brought in with ``eqface import-onnx``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from eqface.byor.recogniser import DEFAULT_EVAL_IDENTITIES, DEFAULT_PACK

    p = sub.add_parser(
        "byor",
        help="bring your own recogniser: Step 2 on its cached features, then one served ONNX",
        description="Works on a folder written by `eqface import-onnx`.",
    )
    byor = p.add_subparsers(dest="byor_command", required=True, metavar="SUBCOMMAND")
    s = byor.add_parser(
        "step2",
        help="cache embeddings + tap features (resumable), train the quality branch with Eq. 6, evaluate held-out",
    )
    s.add_argument("import_dir", type=Path, metavar="DIR", help="the imported recogniser folder")
    s.add_argument(
        "--data",
        default=DEFAULT_PACK,
        metavar="PACK.npz",
        help="training faces (shared:<file> = ../shared/data); features are cached under DIR/step2/features",
    )
    s.add_argument(
        "--eval-identities", type=int, default=DEFAULT_EVAL_IDENTITIES, help="held-out identities (the last labels)"
    )
    s.add_argument("--views", type=int, default=3, help="1 clean + (views − 1) degraded copies per training face")
    s.add_argument("--epochs", type=int, default=4, help="Step 2 epochs over every (face, view)")
    s.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of the quality branch (÷10 at epoch 3)")
    s.add_argument("--batch-size", type=int, default=128, help="faces per Step 2 batch")
    s.add_argument(
        "--classifier",
        choices=("loo-centres", "centres", "fitted"),
        default="loo-centres",
        help="what Eq. 6 scores against: class centres of the frozen embeddings (a face's own centre without "
        "itself), plain centres, or a classifier fitted by Step 1 on the frozen embeddings",
    )
    s.add_argument("--classifier-epochs", type=int, default=3, help="Step 1 epochs for --classifier fitted")
    s.set_defaults(func=run_step2)
    e = byor.add_parser(
        "export",
        help="graft the trained head onto the recogniser: one contract ONNX, parity-checked on real faces",
    )
    e.add_argument("import_dir", type=Path, metavar="DIR", help="imported recogniser folder after `byor step2`")
    e.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="where to write the served model")
    e.add_argument(
        "--parity-data",
        default=DEFAULT_PACK,
        metavar="PACK.npz",
        help="real faces for the parity check (its first 64)",
    )
    e.set_defaults(func=run_export)
    v = byor.add_parser(
        "evaluate",
        help="verification AUC / TAR@FAR 1e-3 and EDC pAUC (quality vs embedding norm vs random) on a face pack",
    )
    v.add_argument("import_dir", type=Path, metavar="DIR", help="imported recogniser folder after `byor step2`")
    v.add_argument("--data", required=True, metavar="PACK.npz", help="face pack, e.g. shared:orl_att_faces.npz")
    v.add_argument("--max-faces", type=int, default=0, help="evenly spread subset of the pack (0: every face)")
    v.set_defaults(func=run_evaluate)


def run_step2(args: argparse.Namespace) -> int:
    from eqface.byor.features import FeatureSpec
    from eqface.byor.quality_training import step2_config
    from eqface.byor.step2 import Step2Run
    from eqface.byor.step2 import run_step2 as step2

    run = Step2Run(
        pack=args.data,
        eval_identities=args.eval_identities,
        features=FeatureSpec(views=args.views),
        train=step2_config(args.epochs, args.lr, args.batch_size, args.classifier, args.classifier_epochs),
    )
    report = step2(args.import_dir, run)
    report.pop("run")
    print(json.dumps(report, indent=2))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from eqface.byor.export import export_grafted, pack_faces
    from eqface.byor.recogniser import Recogniser

    if args.out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {args.out}")
    size = Recogniser(args.import_dir).manifest.image_size
    parity = export_grafted(args.import_dir, args.out, pack_faces(args.parity_data, size))
    print(f"wrote {args.out}: input → embedding, quality (the contract); parity on {parity.faces} real faces:")
    print(f"  min cosine to {parity.reference}: {parity.min_cosine:.7f}")
    print(f"  max |quality − torch head|: {parity.max_quality_diff:.2e} (batch sizes {parity.batch_sizes})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from eqface.byor.step2 import evaluate_pack

    print(json.dumps(evaluate_pack(args.import_dir, args.data, args.max_faces), indent=2))
    return 0
