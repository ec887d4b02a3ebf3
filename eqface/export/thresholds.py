"""The exported model's aggregation thresholds: calibrated on faces it did not train on, stored in its ONNX metadata.

The ONNX file carries them as ``metadata_props`` under ``eqface.contract.THRESHOLD_KEYS`` (plus a JSON note under
``CALIBRATION_KEY``); the Triton repository writer copies them into the model configs' parameters, where the
aggregation service reads them. The rules are in :mod:`eqface.eval.calibration`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.data.sources import FaceSource
from eqface.eval.calibration import Calibration, CalibrationSettings, calibrate, evenly_spaced

_BATCH = 64


@dataclass(frozen=True)
class CalibrationFaces:
    """A calibration set and where it came from (stored with the thresholds)."""

    source: FaceSource
    description: str


def model_data(model_pt: str | Path) -> tuple[str, int, FaceSource, FaceSource | None]:
    """The data a ``model.pt`` was trained on, as its stored configuration names it: (the data's name, its training
    faces, its held-out faces or None).

    Raises:
        ValueError: the model file stores no training configuration.
        FileNotFoundError: its training data is not on this machine.
    """
    from eqface.config import config_from_dict
    from eqface.train.checkpoint import load
    from eqface.train.plan import load_training_data

    state = load(model_pt)
    if "config" not in state:
        raise ValueError(f"{model_pt} stores no training configuration: pass a calibration pack")
    cfg = config_from_dict(json.loads(state["config"]))
    train, held_out = load_training_data(cfg)
    return cfg.data.path or cfg.data.source, cfg.data.eval_identities, train, held_out


def training_faces(model_pt: str | Path) -> CalibrationFaces:
    """The held-out identities of the data the model was trained on (its training faces when none were held out).

    Raises: as :func:`model_data`.
    """
    name, eval_identities, train, held_out = model_data(model_pt)
    if held_out is not None:
        return CalibrationFaces(held_out, f"{name}: {eval_identities} held-out ids")
    return CalibrationFaces(train, f"{name}: training faces (no held-out identities)")


def pack_faces(pack: str | Path) -> CalibrationFaces:
    """Every face of a ``.npz`` pack (best: identities the model did not train on)."""
    from eqface.data.packs import load_pack

    return CalibrationFaces(load_pack(pack), f"{Path(pack).name}: all faces")


def embed_faces(onnx_path: str | Path, source: FaceSource, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [N, D], qualities [N]) of the exported model on ``source``'s images, preprocessed as in serving."""
    from eqface.export.onnx import onnx_session, run_onnx

    session = onnx_session(onnx_path)
    height, width = (int(d) for d in session.get_inputs()[0].shape[2:])
    embeddings, qualities = [], []
    for start in range(0, len(indices), _BATCH):
        batch = [source.image(int(i)) for i in indices[start : start + _BATCH]]
        embedding, quality = run_onnx(session, contract.preprocess(batch, (height, width)))
        embeddings.append(embedding)
        qualities.append(quality.reshape(-1))
    return np.concatenate(embeddings), np.clip(np.concatenate(qualities), 0.0, 1.0)


def calibrate_onnx(
    onnx_path: str | Path, faces: CalibrationFaces, settings: CalibrationSettings = CalibrationSettings()
) -> Calibration:
    """Runs the exported model on (up to ``settings.max_images`` of) the faces and calibrates its thresholds."""
    indices = evenly_spaced(len(faces.source), settings.max_images)
    embeddings, qualities = embed_faces(onnx_path, faces.source, indices)
    return calibrate(embeddings, qualities, np.asarray(faces.source.labels)[indices], settings)


def write_thresholds(onnx_path: str | Path, calibration: Calibration, description: str) -> None:
    """Stores the thresholds (and how they were derived) in the file's metadata_props, replacing earlier ones.

    The file is rewritten beside itself and renamed into place, so a reader never sees half a model.
    """
    import onnx

    path = Path(onnx_path)
    model = onnx.load(str(path))
    note = {**calibration.describe(), "calibration_set": description}
    values = {**calibration.thresholds.as_metadata(), contract.CALIBRATION_KEY: json.dumps(note, sort_keys=True)}
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".onnx")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The file's metadata_props as a dict (the weights are not read)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_thresholds(onnx_path: str | Path) -> Thresholds | None:
    """The calibrated thresholds stored in an ONNX file; None for an uncalibrated file.

    Raises:
        ValueError: the file holds some threshold keys but not all, or a value out of range.
    """
    return Thresholds.from_metadata(model_metadata(onnx_path))
