"""``eqface export``: a trained model.pt → one self-contained ONNX file, checked against the contract and torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from eqface.eval.calibration import DEFAULT_FMR


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX (dynamic batch, weights inside) and check it",
        description="Exports MODEL_PT (a model.pt/final.pt written by `eqface train`) to one ONNX file with the "
        "contract's names (input → embedding, quality) and a dynamic batch axis. The file is checked with "
        "onnx.checker and run with onnxruntime; --parity-data also compares onnxruntime with torch on real images. "
        "The aggregation thresholds (progressive QWFA's s_th and f_th, QWFAF's threshold) are calibrated on faces the "
        "model did not train on (eqface.eval.calibration) and stored in the file's metadata; the Triton repository "
        "writer copies them into the model configs, where the aggregation service reads them.",
    )
    p.add_argument("model", type=Path, metavar="MODEL_PT", help="trained model file (model.pt or final.pt)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="where to write the ONNX file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument(
        "--parity-data",
        type=Path,
        metavar="PACK.npz",
        help="a face pack (e.g. ../shared/data/celeba_wild_subset_rgb112.npz): compare torch and "
        "onnxruntime on its first images at batch sizes 1, 7 and 64; fail above 1e-4",
    )
    cal = p.add_argument_group("threshold calibration")
    cal.add_argument(
        "--calibration-data",
        type=Path,
        metavar="PACK.npz",
        help="calibrate on every face of this pack (identities the model did not train on); default: the held-out "
        "identities of the data the model was trained on, as its model.pt records them",
    )
    cal.add_argument(
        "--calibration-fmr",
        type=float,
        default=DEFAULT_FMR,
        help="deployment false match rate the thresholds are calibrated for",
    )
    cal.add_argument(
        "--no-calibration",
        action="store_true",
        help="store no thresholds (the aggregation service then uses its flags or the paper's values)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eqface.export.onnx import export_model_file

    if args.out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {args.out}")
    result = export_model_file(args.model, args.out, opset=args.opset)
    spec = result.spec
    print(f"exported {args.model} → {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset})")
    print(f"  input  float32 [N, 3, {spec.image_size[0]}, {spec.image_size[1]}]")
    print(f"  output embedding float32 [N, {spec.embedding_size}], quality float32 [N, 1]")
    print("  onnx.checker: ok; onnxruntime: ok (batch 1 and 3, unit-norm embeddings, quality in [0, 1])")
    if not args.no_calibration:
        _calibrate(args.model, result.path, args.calibration_data, args.calibration_fmr)
    if args.parity_data is not None:
        return _report_parity(args.model, result.path, args.parity_data)
    return 0


def _calibrate(model_pt: Path, onnx_path: Path, pack: Path | None, fmr: float) -> None:
    from eqface.eval.calibration import CalibrationSettings
    from eqface.export.thresholds import calibrate_onnx, pack_faces, training_faces, write_thresholds

    faces = pack_faces(pack) if pack is not None else training_faces(model_pt)
    calibration = calibrate_onnx(onnx_path, faces, CalibrationSettings(fmr=fmr))
    write_thresholds(onnx_path, calibration, faces.description)
    th = calibration.thresholds
    print(
        f"  thresholds (FMR {fmr:g}, {calibration.images} faces of {calibration.identities} ids, "
        f"{faces.description}): f_th {th.f_th:.4f}, s_th {th.s_th:.4f}, qwfaf_s_th {th.qwfaf_s_th:.4f}"
        f"{' (s_th capped at the median quality)' if calibration.capped else ''}; FNMR at f_th "
        f"{calibration.fnmr_at_threshold:.3f}"
    )


def _report_parity(model_pt: Path, onnx_path: Path, pack: Path) -> int:
    from eqface.export.onnx import onnx_session
    from eqface.export.parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE, pack_inputs, parity_by_batch_size
    from eqface.train.checkpoint import load_model

    net, cfg = load_model(model_pt)
    x = pack_inputs(pack, tuple(cfg.image_size), max(PARITY_BATCH_SIZES))
    diffs = parity_by_batch_size(net, onnx_session(onnx_path), x)
    for batch, diff in diffs.items():
        print(f"  parity on {pack.name}, batch {batch:>2}: max |torch − onnxruntime| = {diff:.2e}")
    worst = max(diffs.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from torch by {worst:.2e} > {PARITY_TOLERANCE:.0e}")
    return 0
