"""Writes a Triton model repository: config.pbtxt for every model plus one version folder holding the ONNX file.

Version folders are the output of the export/deploy step and are never committed; ``serving/`` in the source tree
holds the configs rendered for the default contract, which a test keeps equal to what this module writes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from eqface import contract
from eqface.aggregation import Thresholds
from eqface.contract import InferenceSpec
from eqface.serving.model_configs import (
    DEFAULT_BATCHING,
    DEFAULT_RUNTIME,
    ONNX_FILE,
    PYTHON_FILE,
    Batching,
    OnnxRuntimeSettings,
    Variant,
    model_configs,
    render,
)

CONFIG_FILE = "config.pbtxt"
# model.py source for each python-backend model, by variant.
_PYTHON_MODELS: dict[tuple[str, str], str] = {
    ("local", contract.ONNX_MODEL_NAME): "onnx_model.py",
    ("local", contract.PREPROCESS_MODEL_NAME): "preprocess_model.py",
    ("production", contract.PREPROCESS_MODEL_NAME): "preprocess_model.py",
}


@dataclass(frozen=True)
class ModelRepository:
    """What :func:`write_model_repository` wrote."""

    root: Path
    variant: Variant
    version: int
    spec: InferenceSpec
    precision: str = "fp32"

    def version_dir(self, model: str) -> Path:
        return self.root / model / str(self.version)


def write_configs(
    repository: str | Path,
    spec: InferenceSpec,
    variant: Variant,
    batching: Batching = DEFAULT_BATCHING,
    runtime: OnnxRuntimeSettings = DEFAULT_RUNTIME,
    calibration: Mapping[str, str] | None = None,
    precision: str = "fp32",
) -> dict[str, Path]:
    """Writes only ``<model>/config.pbtxt`` for the three models; returns their paths by model name."""
    root = Path(repository)
    paths = {}
    for name, config in model_configs(spec, variant, batching, runtime, calibration, precision).items():
        path = root / name / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(config, variant))
        paths[name] = path
    return paths


def write_model_repository(
    onnx_path: str | Path,
    repository: str | Path,
    *,
    variant: Variant = "local",
    version: int = 1,
    batching: Batching = DEFAULT_BATCHING,
    runtime: OnnxRuntimeSettings = DEFAULT_RUNTIME,
    overwrite: bool = False,
    precision: str | None = None,
) -> ModelRepository:
    """Writes configs and version ``version`` of every model into ``repository``, ready for ``tritonserver``.

    The ONNX file is checked against the contract first (:func:`eqface.export.onnx.verify_onnx`) and its declared
    image and embedding sizes are what the configs declare; its calibrated aggregation thresholds (ONNX metadata, see
    :mod:`eqface.export.thresholds`) become parameters of ``eqface_onnx`` and of the ensemble. Each version folder
    is assembled beside its final place and renamed into it, so a server polling the repository never sees half a
    version.

    Args:
        onnx_path: the exported model (``eqface export``).
        repository: the model repository root; created when missing.
        variant: ``production`` (onnxruntime backend, GPU) or ``local`` (python backend, CPU, the bundled server).
        version: the version folder to write (a positive integer).
        batching: max batch size and dynamic batching settings.
        runtime: CPU onnxruntime settings of ``eqface_onnx`` (threads; spinning, local variant only).
        overwrite: replace an existing version folder instead of refusing.
        precision: the precision the caller means to serve (``fp32`` or ``int8``); the file's own (its
            ``contract.PRECISION_KEY`` metadata, written by ``eqface.export.quantize``) must match. None: the file's.

    Raises:
        FileExistsError: the version exists and ``overwrite`` is False.
        eqface.export.onnx.OnnxContractError: the ONNX file does not follow the contract.
        ValueError: the file holds only some of the threshold keys, or is not of ``precision``.
    """
    from eqface.export.onnx import verify_onnx
    from eqface.export.quantize import model_precision
    from eqface.export.thresholds import model_metadata

    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    spec = verify_onnx(onnx_path)
    found = model_precision(onnx_path)
    if precision is not None and precision != found:
        raise ValueError(f"{onnx_path} is a {found} model, not {precision} (`eqface quantize` makes int8 files)")
    calibration = calibration_parameters(model_metadata(onnx_path))
    repo = ModelRepository(Path(repository), variant, version, spec, found)
    existing = [str(repo.version_dir(m)) for m in model_configs(spec, variant) if repo.version_dir(m).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"version {version} already exists ({', '.join(existing)}); pass overwrite=True")
    paths = write_configs(repo.root, spec, variant, batching, runtime, calibration, found)
    for name in paths:
        _write_version(repo.version_dir(name), _version_files(name, variant, onnx_path))
    return repo


def calibration_parameters(metadata: Mapping[str, str]) -> dict[str, str]:
    """The calibration entries of an ONNX file's metadata (empty for an uncalibrated model); checked to be whole."""
    Thresholds.from_metadata(metadata)  # raises on a partial or out-of-range set
    return {k: metadata[k] for k in (*contract.THRESHOLD_KEYS, contract.CALIBRATION_KEY) if k in metadata}


def _version_files(model: str, variant: Variant, onnx_path: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if model == contract.ONNX_MODEL_NAME:
        files[ONNX_FILE] = onnx_path
    source = _PYTHON_MODELS.get((variant, model))
    if source is not None:
        files[PYTHON_FILE] = Path(str(resources.files("eqface.serving.python_models") / source))
    return files  # the ensemble's version folder stays empty, as Triton expects


def _write_version(target: Path, files: dict[str, Path]) -> None:
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
