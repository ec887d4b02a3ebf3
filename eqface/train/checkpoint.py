"""Checkpoint files: plain dicts of tensors, numbers and strings, written atomically and read with weights_only=True.

Two kinds share one loader: a resumable training checkpoint (``checkpoint.pt``: + optimizer, RNG, position) and a
step's final weights (``final.pt``, also the training plan's ``model.pt``): network + classifier + the model config.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from eqface.config import ModelConfig, merge
from eqface.models import EQFaceNet, build_model


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Writes to a temporary file in the same folder, fsyncs, then renames: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-weights files
        raise ValueError(f"{path}: not a readable eqface checkpoint ({type(exc).__name__}: {exc})") from None


def model_config_of(state: dict[str, Any]) -> ModelConfig:
    return merge(ModelConfig(), json.loads(state["model_config"]))


def load_model(path: str | Path) -> tuple[EQFaceNet, ModelConfig]:
    """Rebuilds the network stored in a final.pt/model.pt file, in eval mode."""
    state = load(path)
    if "net" not in state or "model_config" not in state:
        raise ValueError(f"{path}: not an eqface model file (no 'net'/'model_config')")
    cfg = model_config_of(state)
    net = build_model(cfg)
    net.load_state_dict(state["net"])
    return net.eval(), cfg
