"""Where the read-only shared data lives (real face packs, small pretrained weights), found one way everywhere.

The folder is ``$EQFACE_SHARED_DATA`` when set, else ``shared/data`` beside the checkout this package runs from, else
``shared/data`` beside the current directory. Configs name files in it as ``shared:<relative path>`` (for example
``shared:weights/mobilefacenet_casia_xiaoccer_068.npz``) so that a preset does not depend on the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EQFACE_SHARED_DATA"
PREFIX = "shared:"
_CHECKOUT = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]  # an explicit setting is never second-guessed
    return [_CHECKOUT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def shared_data_dir() -> Path | None:
    """The shared data folder, or None when this machine has none."""
    for candidate in _candidates():
        if candidate.is_dir():
            return candidate
    return None


def require_shared_data_dir() -> Path:
    """The shared data folder; FileNotFoundError saying where it was looked for when absent."""
    found = shared_data_dir()
    if found is None:
        looked = ", ".join(str(c) for c in _candidates())
        raise FileNotFoundError(f"the shared data folder was not found (looked in {looked}; set ${ENV_VAR})")
    return found


def shared_file(relative: str | Path) -> Path:
    """A file inside the shared data folder; FileNotFoundError naming it when absent."""
    path = require_shared_data_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"{relative} is not in the shared data folder {path.parent}")
    return path


def resolve(path: str | Path) -> Path:
    """A config path: ``shared:<relative>`` names a file in the shared data folder; anything else is a plain path."""
    text = str(path)
    if text.startswith(PREFIX):
        return shared_file(text[len(PREFIX) :])
    return Path(text)
