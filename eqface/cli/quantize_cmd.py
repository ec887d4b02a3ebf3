"""``eqface quantize``: an exported fp32 ONNX model → its int8 serving variant (onnxruntime static QDQ, calibrated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from eqface.export.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_PACK,
    DEFAULT_HELD_OUT_IDENTITIES,
    DEFAULT_SETTINGS,
    PRELU_FORMS,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="make the int8 serving variant of an exported model (static QDQ, calibrated on training faces)",
        description="Quantizes MODEL_ONNX (written by `eqface export` or `eqface byor export`) with onnxruntime's "
        "static QDQ quantization for x86 CPUs: uint8 activations, per-channel int8 weights, activation ranges "
        "calibrated on training faces preprocessed as in serving. The file keeps the contract and the calibrated "
        "thresholds; `eqface serve repository` serves it like the fp32 file.",
    )
    p.add_argument("onnx", type=Path, metavar="MODEL_ONNX", help="the fp32 model")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.onnx", help="where to write the int8 model")
    add_quantization_options(p)
    p.set_defaults(func=run)


def add_quantization_options(parser: argparse.ArgumentParser) -> None:
    """Calibration-set and quantization options (shared with ``eqface serve repository --precision int8``)."""
    group = parser.add_argument_group("int8 quantization")
    group.add_argument(
        "--calibration-data",
        default=DEFAULT_CALIBRATION_PACK,
        metavar="PACK.npz",
        help="face pack whose training identities calibrate the int8 ranges (shared:<file> = ../shared/data)",
    )
    group.add_argument(
        "--held-out-identities",
        type=int,
        default=DEFAULT_HELD_OUT_IDENTITIES,
        help="the pack's last identities, kept out of calibration (the model's evaluation identities)",
    )
    group.add_argument(
        "--calibration-model",
        type=Path,
        metavar="MODEL_PT",
        help="instead of --calibration-data: the training identities this model.pt was trained on",
    )
    group.add_argument(
        "--calibration-images", type=int, default=DEFAULT_SETTINGS.calibration_images, help="faces calibrated on"
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_SETTINGS.method,
        help="onnxruntime's activation range estimator",
    )
    group.add_argument(
        "--quantize-quality-head",
        action="store_true",
        help="quantize the quality head too (by default the nodes only the quality output depends on stay fp32)",
    )
    group.add_argument(
        "--prelu",
        choices=PRELU_FORMS,
        default=DEFAULT_SETTINGS.prelu,
        help="PRelu folded into its Convs to run in int8 (fold), fp32 Min/Mul/Add between them (rewrite) or "
        "onnxruntime's fp32 PRelu kernel (kernel); the same values in each (eqface.export.prelu)",
    )
    group.add_argument(
        "--reduce-range", action="store_true", help="7-bit weights, for x86 CPUs without VNNI (saturation)"
    )


def quantize_from_args(onnx_path: Path, out: Path, args: argparse.Namespace):
    """Runs :func:`eqface.export.quantize.quantize_onnx` with the options of :func:`add_quantization_options`."""
    from eqface.export.quantize import (
        QuantizationSettings,
        model_training_faces,
        pack_training_faces,
        quantize_onnx,
    )

    if args.calibration_model is not None:
        faces = model_training_faces(args.calibration_model)
    else:
        faces = pack_training_faces(args.calibration_data, args.held_out_identities)
    settings = QuantizationSettings(
        calibration_images=args.calibration_images,
        method=args.calibration_method,
        reduce_range=args.reduce_range,
        keep_quality_head_fp32=not args.quantize_quality_head,
        prelu=args.prelu,
    )
    result = quantize_onnx(onnx_path, out, faces, settings)
    print(
        f"quantized {onnx_path} → {result.path} ({result.size_bytes / 1e6:.1f} MB, int8 QDQ, "
        f"{settings.calibration_images} calibration faces from {result.calibration_set}; "
        f"{len(result.fp32_nodes)} nodes kept fp32)"
    )
    return result


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".onnx":
        raise ValueError(f"--out must end in .onnx, got {args.out}")
    quantize_from_args(args.onnx, args.out, args)
    return 0
