"""``eqface import-onnx``: a pretrained ArcFace-style ONNX recogniser → an imported recogniser folder for Step 2."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from eqface.byor.norm_check import DEFAULT_MAX_DEFICIT, DEFAULT_MIN_AUC
    from eqface.byor.recogniser import DEFAULT_EVAL_IDENTITIES, DEFAULT_PACK

    p = sub.add_parser(
        "import-onnx",
        help="import a pretrained ONNX face recogniser (dynamic batch, tap output, checked normalisation)",
        description="Takes an ONNX recogniser with one image input [N, 3, H, W] and one embedding output [N, D], "
        "makes its batch axis dynamic, exposes the last spatial feature map before the embedding (or --tap) as a "
        "second output, and checks the stated input normalisation on real faces: the import is refused when the "
        "genuine-vs-impostor AUC is below --min-auc, or when the channel flip or a common setting beats it by more "
        "than --max-deficit. Writes DIR/recogniser.onnx and DIR/recogniser.json.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="the pretrained recogniser")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the imported recogniser")
    p.add_argument("--tap", metavar="NODE", help="tensor or node whose output feeds the quality branch")
    p.add_argument("--output", metavar="NAME", help="the embedding output, when the graph has several")
    p.add_argument("--mean", type=float, nargs="+", default=[127.5], help="pixel mean (1 or 3 values, model order)")
    p.add_argument("--std", type=float, nargs="+", default=[128.0], help="pixel std (1 or 3 values, model order)")
    p.add_argument("--bgr", action="store_true", help="the recogniser expects BGR channel order")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="input size, if the graph has none")
    check = p.add_argument_group("normalisation check")
    check.add_argument(
        "--check-data",
        default=DEFAULT_PACK,
        metavar="PACK.npz",
        help="face pack whose held-out identities the check uses (shared:<file> = ../shared/data)",
    )
    check.add_argument(
        "--eval-identities", type=int, default=DEFAULT_EVAL_IDENTITIES, help="held-out identities the faces come from"
    )
    check.add_argument("--check-faces", type=int, default=300, help="faces used (every pair is compared)")
    check.add_argument(
        "--min-auc", type=float, default=DEFAULT_MIN_AUC, help="refuse below this genuine-vs-impostor AUC"
    )
    check.add_argument(
        "--max-deficit",
        type=float,
        default=DEFAULT_MAX_DEFICIT,
        help="refuse when the channel flip or a common setting beats the stated one by more than this AUC",
    )
    check.add_argument("--no-check", action="store_true", help="skip the check (untrained or non-face models)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
    from eqface.byor.normalisation import InputNormalisation

    options = ImportOptions(
        normalisation=InputNormalisation(tuple(args.mean), tuple(args.std), "BGR" if args.bgr else "RGB"),
        tap=args.tap,
        output=args.output,
        image_size=tuple(args.image_size) if args.image_size else None,
        check=CheckOptions(
            pack=args.check_data,
            eval_identities=args.eval_identities,
            faces=args.check_faces,
            min_auc=args.min_auc,
            max_deficit=args.max_deficit,
            enabled=not args.no_check,
        ),
    )
    m = import_onnx(args.model, args.out, options)
    h, w = m.image_size
    print(f"imported {args.model} → {args.out}")
    print(f"  input '{m.input_name}' float32 [N, 3, {h}, {w}], {m.normalisation.describe()}")
    print(
        f"  embedding '{m.embedding_name}' [N, {m.embedding_size}]; "
        f"tap '{m.tap_name}' [N, {', '.join(map(str, m.tap_shape))}]"
    )
    for fix in m.batch_fixes:
        print(f"  dynamic batch: {fix}")
    if m.check.get("passed"):
        print(f"  normalisation check: AUC {m.check['auc']:.4f} on {m.check['faces']} faces (passed)")
        for name, value in m.check["alternatives"].items():
            print(f"    {name}: {value:.4f}")
    else:
        print("  normalisation check: skipped")
    return 0
