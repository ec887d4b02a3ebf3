"""Loading backbone weights from files that need no pickle: numpy ``.npz`` state dicts and eqface model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from eqface.models.backbone import Backbone


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Loads a state dict stored as a numpy ``.npz`` (key → array) into ``backbone``, strictly.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: keys or shapes do not match the backbone (the message lists the first differences).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix != ".npz":
        raise ValueError(f"pretrained backbone weights must be a .npz state dict, got {path.name}")
    with np.load(path, allow_pickle=False) as data:
        state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        details = [
            f"{label}: {', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        ]
        raise ValueError(f"{path.name} does not fit backbone {type(backbone).__name__}: " + "; ".join(details))
    backbone.load_state_dict(state, strict=True)
