"""An imported recogniser on disk: ``recogniser.onnx`` (dynamic batch, embedding + tap outputs) and its manifest.

The manifest (``recogniser.json``) records what the graph cannot say: where it came from, the input normalisation and
channel order, which tensor is the tap, and the result of the normalisation check.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eqface.byor.normalisation import InputNormalisation

MODEL_FILE = "recogniser.onnx"
MANIFEST_FILE = "recogniser.json"
# The real faces the normalisation check and Step 2 use by default, and how many identities they hold out.
DEFAULT_PACK = "shared:celeba_wild_subset_rgb112.npz"
DEFAULT_EVAL_IDENTITIES = 40


@dataclass(frozen=True)
class RecogniserManifest:
    """What ``eqface import-onnx`` found and decided; everything later steps need to run the recogniser."""

    source: str
    source_sha256: str
    input_name: str
    embedding_name: str
    tap_name: str
    image_size: tuple[int, int]
    embedding_size: int
    tap_shape: tuple[int, ...]  # per item, batch axis excluded
    normalisation: InputNormalisation
    batch_fixes: tuple[str, ...] = ()
    check: dict = field(default_factory=dict)

    @property
    def tap_features(self) -> int:
        return int(np.prod(self.tap_shape))

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "model_file": MODEL_FILE,
            "input_name": self.input_name,
            "embedding_name": self.embedding_name,
            "tap_name": self.tap_name,
            "image_size": list(self.image_size),
            "embedding_size": self.embedding_size,
            "tap_shape": list(self.tap_shape),
            "normalisation": self.normalisation.to_dict(),
            "batch_fixes": list(self.batch_fixes),
            "check": self.check,
        }

    @classmethod
    def from_dict(cls, data: dict) -> RecogniserManifest:
        return cls(
            source=data["source"],
            source_sha256=data["source_sha256"],
            input_name=data["input_name"],
            embedding_name=data["embedding_name"],
            tap_name=data["tap_name"],
            image_size=tuple(data["image_size"]),
            embedding_size=int(data["embedding_size"]),
            tap_shape=tuple(data["tap_shape"]),
            normalisation=InputNormalisation.from_dict(data["normalisation"]),
            batch_fixes=tuple(data.get("batch_fixes", ())),
            check=dict(data.get("check", {})),
        )


def write_json_atomic(data: dict, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class Recogniser:
    """The imported graph run by onnxruntime: uint8 RGB faces → (raw embedding [N, D], tap [N, ...])."""

    def __init__(self, folder: str | Path, threads: int = 0) -> None:
        from eqface.export.onnx import onnx_session

        self.folder = Path(folder)
        manifest = self.folder / MANIFEST_FILE
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.folder} holds no imported recogniser ({MANIFEST_FILE} missing)")
        self.manifest = RecogniserManifest.from_dict(json.loads(manifest.read_text()))
        self.model_path = self.folder / MODEL_FILE
        self.session = onnx_session(self.model_path, threads=threads)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The recogniser's own normalised input [N, 3, H, W] → (raw embedding, tap)."""
        m = self.manifest
        embedding, tap = self.session.run([m.embedding_name, m.tap_name], {m.input_name: x})
        return embedding, tap

    def embed(self, images_rgb: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB faces [N, H, W, 3] (already at the recogniser's size) → (raw embedding, tap)."""
        parts = [
            self.run(self.manifest.normalisation.apply(images_rgb[s])) for s in batches(len(images_rgb), batch_size)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
