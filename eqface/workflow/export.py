"""The export step: the final model → one ONNX file (contract names, dynamic batch), checked against torch on real
held-out faces of the prepared dataset before anything is deployed."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from eqface import contract
from eqface.config import EQFaceConfig

ONNX_FILE = "model.onnx"
PARITY_IMAGES = 64


def export_step(model_dir: str | Path, out_dir: str | Path, cfg: EQFaceConfig, opset: int = 18) -> dict[str, Any]:
    """Writes ``out_dir/model.onnx`` and returns the artifact's metadata (shapes, size, sha256, parity, thresholds).

    ``cfg`` must read the prepared dataset (see :func:`eqface.workflow.dataset.with_dataset`): parity is measured on
    up to 64 of its held-out faces at batch sizes 1, 7 and all of them, and the aggregation thresholds are
    calibrated on those held-out faces (the training faces when none are held out) and stored in the ONNX metadata
    (:mod:`eqface.export.thresholds`).

    Raises:
        RuntimeError: onnxruntime and torch differ by more than ``eqface.export.parity.PARITY_TOLERANCE``.
    """
    from eqface.export.onnx import export_model_file, onnx_session
    from eqface.export.parity import PARITY_TOLERANCE, parity_by_batch_size
    from eqface.export.thresholds import CalibrationFaces, calibrate_onnx, write_thresholds
    from eqface.train.checkpoint import load_model
    from eqface.train.plan import load_training_data
    from eqface.train.trainer import FINAL

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = export_model_file(Path(model_dir) / FINAL, out / ONNX_FILE, opset=opset)
    net, model_cfg = load_model(Path(model_dir) / FINAL)
    train, held_out = load_training_data(cfg)
    faces = held_out if held_out is not None else train
    count = min(PARITY_IMAGES, len(faces))
    size = tuple(model_cfg.image_size)
    x = contract.preprocess([faces.image(i) for i in range(count)], size)
    diffs = parity_by_batch_size(net, onnx_session(result.path), x, tuple(sorted({1, min(7, count), count})))
    worst = max(diffs.values())
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"onnxruntime differs from torch by {worst:.2e} > {PARITY_TOLERANCE:.0e} on held-out faces")
    print(f"exported {result.path} ({result.size_bytes / 1e6:.2f} MB); parity on {count} faces: {worst:.1e}")
    which = "held-out faces" if held_out is not None else "training faces (no held-out identities)"
    calibration_faces = CalibrationFaces(faces, f"{cfg.data.path or cfg.data.source}: {which}")
    try:
        calibration = calibrate_onnx(result.path, calibration_faces)
    except ValueError as exc:  # e.g. a tiny test dataset: too few impostor pairs for the FMR
        calibration = None
        print(f"WARNING: no calibrated thresholds stored ({exc}); the aggregator will use its fallback")
    else:
        write_thresholds(result.path, calibration, calibration_faces.description)
        print(f"calibrated thresholds: {calibration.thresholds}")
    metadata = {
        "file": ONNX_FILE,
        "format": "onnx",
        "opset": result.opset,
        "image_height": result.spec.image_size[0],
        "image_width": result.spec.image_size[1],
        "embedding_size": result.spec.embedding_size,
        "size_bytes": result.size_bytes,
        "sha256": hashlib.sha256(result.path.read_bytes()).hexdigest(),
        "parity_max_abs_diff": worst,
        "parity_images": count,
    }
    if calibration is not None:
        metadata.update(thresholds=asdict(calibration.thresholds), calibration=calibration.describe())
    return metadata
