"""Which model the local stack serves: one given, one the pipeline or ``eqface train`` already produced, or a new
one trained on the demo preset; always ends as a local-variant Triton model repository."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from eqface import contract

MODEL_FILE = "model.pt"
PIPELINE_REPOSITORY = Path("kfp-local") / "model_repository"  # where `eqface pipeline run-local` deploys


@dataclass(frozen=True)
class ServedModel:
    """A model repository ready for Triton and what the stack needs to know about it."""

    repository: Path
    embedding_size: int
    image_size: tuple[int, int]
    origin: str  # one line for people: where the model came from
    trained_on: str = ""  # the training run's data.source ("synthetic", "npz", ...); "" when unknown


def find_existing(runs_dir: Path) -> Path | None:
    """The newest model under ``runs_dir``: a ``model.pt`` written by ``eqface train`` or the local pipeline's model
    repository (ties go to the repository); None when there is neither."""
    candidates = [p for p in runs_dir.glob(f"*/{MODEL_FILE}") if p.is_file()]
    repository = runs_dir / PIPELINE_REPOSITORY
    if _has_version(repository):
        candidates.append(repository)
    return max(candidates, key=_mtime, default=None)


def _mtime(path: Path) -> float:
    if path.is_dir():
        return max((p.stat().st_mtime for p in path.rglob("*")), default=path.stat().st_mtime)
    return path.stat().st_mtime


def _has_version(repository: Path) -> bool:
    onnx_model = repository / contract.ONNX_MODEL_NAME
    return onnx_model.is_dir() and any(p.name.isdigit() for p in onnx_model.iterdir())


def train_demo_model(out_dir: Path, preset: str = "demo") -> Path:
    """Runs ``eqface train --preset PRESET --out OUT_DIR`` (the README's main job) in a child process, its output
    shown as it comes; returns the model.pt."""
    print(f"no trained model found: training the {preset} preset into {out_dir} (about a minute) …", flush=True)
    subprocess.run([sys.executable, "-m", "eqface.cli", "train", "--preset", preset, "--out", str(out_dir)], check=True)
    return out_dir / MODEL_FILE


def run_local_pipeline(runs_dir: Path, preset: str = "demo") -> Path:
    """Runs the Kubeflow pipeline locally (``eqface pipeline run-local``: train, evaluate, export, deploy the local
    variant) in a child process; returns the model repository it deployed to."""
    repository = runs_dir / PIPELINE_REPOSITORY
    print(
        f"no trained model found: running the pipeline locally on the {preset} preset into {repository} …", flush=True
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "eqface.cli",
            "pipeline",
            "run-local",
            "--preset",
            preset,
            "--root",
            str(runs_dir / PIPELINE_REPOSITORY.parent),
            "--repository",
            str(repository),
        ],
        check=True,
    )
    return repository


TRAIN_WITH = ("byor", "train", "pipeline")


def resolve(
    model: Path | None,
    runs_dir: Path,
    state_dir: Path,
    train_with: str = "train",
    preset: str = "demo",
    rebuild: bool = False,
) -> ServedModel:
    """The model to serve prepared in ``state_dir``: ``model`` when given; with ``train_with="byor"`` the main job's
    model built (once, cached by its inputs) by the bring-your-own-recogniser path from the shared pretrained
    recogniser (``eqface.stack.byor_model``; ``rebuild`` builds it again); else the newest one under ``runs_dir``,
    else one trained now on ``preset`` by ``eqface train`` (``train_with="train"``) or the local pipeline."""
    if train_with not in TRAIN_WITH:
        raise ValueError(f"unknown train_with {train_with!r}; valid: {', '.join(TRAIN_WITH)}")
    if model is None and train_with == "byor":
        from eqface.stack.byor_model import ensure_model

        model = ensure_model(runs_dir, rebuild=rebuild)
    if model is None:
        model = find_existing(runs_dir)
    if model is None and train_with == "pipeline":
        model = run_local_pipeline(runs_dir, preset)
    elif model is None:
        model = train_demo_model(runs_dir / preset, preset)
    if not model.exists():
        raise FileNotFoundError(f"model not found: {model}")
    state_dir.mkdir(parents=True, exist_ok=True)
    return prepare(model, state_dir)


def prepare(model: Path, work_dir: Path) -> ServedModel:
    """A local-variant model repository for ``model`` (a model.pt, an .onnx file or a model repository)."""
    if model.is_dir():
        if not _has_version(model):
            raise FileNotFoundError(f"{model} is not a model repository with a version of {contract.ONNX_MODEL_NAME}")
        if _variant(model) != "local":
            raise ValueError(
                f"{model} is the {_variant(model)} variant; the bundled CPU Triton serves only 'local' "
                "(eqface serve repository --variant local)"
            )
        h, w, d = _declared_shapes(model)
        return ServedModel(model.resolve(), d, (h, w), f"model repository {model}")
    if model.suffix == ".pt":
        onnx = work_dir / "model.onnx"
        _export(model, onnx)
        origin = f"{model} (exported to {onnx})"
    elif model.suffix == ".onnx":
        onnx, origin = model, f"{model}"
    else:
        raise ValueError(f"--model must be a model.pt, an .onnx file or a model repository folder, got {model}")
    from eqface.serving.repository import write_model_repository

    repo = write_model_repository(onnx, work_dir / "model_repository", variant="local", overwrite=True)
    return ServedModel(
        repo.root.resolve(), repo.spec.embedding_size, tuple(repo.spec.image_size), origin, training_data_source(model)
    )


def training_data_source(model: Path) -> str:
    """``data.source`` of the run that wrote ``model`` (its folder's config.json, as ``eqface train`` writes it)."""
    try:
        return str(json.loads((model.parent / "config.json").read_text())["data"]["source"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return ""


def _export(model_pt: Path, onnx: Path) -> None:
    from eqface.export.onnx import export_model_file

    if onnx.is_file() and onnx.stat().st_mtime >= model_pt.stat().st_mtime:
        return  # exported before from this very file
    onnx.parent.mkdir(parents=True, exist_ok=True)
    export_model_file(model_pt, onnx)


def _config_text(repository: Path) -> str:
    return (repository / contract.ONNX_MODEL_NAME / "config.pbtxt").read_text()


def _variant(repository: Path) -> str:
    return "local" if 'backend: "python"' in _config_text(repository) else "production"


def _declared_shapes(repository: Path) -> tuple[int, int, int]:
    """(H, W, D) from eqface_onnx/config.pbtxt: the input's dims and the embedding's."""
    text = _config_text(repository)
    blocks = re.findall(r"(?:input|output)\s*\{[^}]*\}", text)
    dims = {
        re.search(r'name:\s*"([^"]+)"', b).group(1): [int(x) for x in re.findall(r"dims:\s*(\d+)", b)] for b in blocks
    }
    _, h, w = dims[contract.INPUT_NAME]
    return h, w, dims[contract.EMBEDDING_NAME][0]
