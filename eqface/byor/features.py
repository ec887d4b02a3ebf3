"""Embeddings and tap features of a frozen recogniser, computed once per face and view and cached on disk.

View 0 is the face as it is; views 1.. are degraded copies (``eqface.data.augment`` with the quality augmentation),
so that Step 2 sees faces the frozen network finds hard. Arrays are preallocated ``.npy`` memory maps filled chunk by
chunk; ``progress.json`` lists the finished chunks and is replaced atomically after each one is flushed, so a killed
run continues where it stopped and a finished cache is reused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eqface.byor.recogniser import Recogniser, write_json_atomic
from eqface.config import AugmentConfig, EQFaceConfig
from eqface.contract import fit_to_size
from eqface.data.augment import Augmenter
from eqface.data.sources import FaceSource

EMBEDDING_FILE = "embedding.npy"  # float32 [V, N, D], before L2 normalisation
TAP_FILE = "tap.npy"  # [V, N, F] flattened tap, ``tap_dtype``
LABELS_FILE = "labels.npy"  # int64 [N]
PROGRESS_FILE = "progress.json"
SPEC_FILE = "spec.json"


@dataclass(frozen=True)
class FeatureSpec:
    """What a cache holds; a cache written with another spec (or recogniser) is refused, never mixed."""

    views: int = 3
    # The project's Step-2 degradations (EQFaceConfig.quality_augment): one definition for both training paths.
    augment: AugmentConfig = field(default_factory=lambda: EQFaceConfig().quality_augment)
    seed: int = 0
    chunk: int = 256
    tap_dtype: str = "float16"  # halves the disk and memory of the largest array; ample for a quality input


@dataclass(frozen=True)
class CachedFeatures:
    embedding: np.ndarray  # [V, N, D]
    tap: np.ndarray  # [V, N, F] (memory map)
    labels: np.ndarray  # [N]


def view_image(source: FaceSource, index: int, view: int, spec: FeatureSpec, size: tuple[int, int]) -> np.ndarray:
    """Face ``index`` fitted to ``size``; view > 0 degraded deterministically from (seed, view, index)."""
    img = fit_to_size(source.image(index), size)
    if view == 0:
        return img
    return Augmenter(spec.augment)(img, np.random.default_rng([spec.seed, view, index]))


def cache_features(
    recogniser: Recogniser, source: FaceSource, folder: str | Path, spec: FeatureSpec = FeatureSpec()
) -> CachedFeatures:
    """Fills (or resumes, or reuses) the cache of ``source`` in ``folder`` and returns it, tap memory-mapped."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    m = recogniser.manifest
    n, views = len(source), spec.views
    description = {
        "spec": dataclasses.asdict(spec),
        "recogniser_sha256": m.source_sha256,
        "tap": m.tap_name,
        "normalisation": m.normalisation.to_dict(),
        "samples": n,
        "names_head": list(source.names[:3]),
    }
    _claim(folder, description)
    emb = _open(folder / EMBEDDING_FILE, (views, n, m.embedding_size), np.float32)
    tap = _open(folder / TAP_FILE, (views, n, m.tap_features), np.dtype(spec.tap_dtype))
    np.save(folder / LABELS_FILE, source.labels)
    done = set(json.loads((folder / PROGRESS_FILE).read_text())) if (folder / PROGRESS_FILE).exists() else set()
    chunks = [(start, v) for start in range(0, n, spec.chunk) for v in range(views)]
    todo = [c for c in chunks if f"{c[0]}:{c[1]}" not in done]
    limit = np.finfo(np.dtype(spec.tap_dtype)).max if np.dtype(spec.tap_dtype).kind == "f" else None
    for start, v in tqdm(todo, desc=f"features {folder.name}", unit="chunk", disable=not todo):
        stop = min(start + spec.chunk, n)
        images = np.stack([view_image(source, i, v, spec, m.image_size) for i in range(start, stop)])
        e, t = recogniser.embed(images)
        t = t.reshape(len(t), -1)
        if limit is not None and np.abs(t).max() > limit:
            raise ValueError(f"tap values reach {np.abs(t).max():.3g}, beyond {spec.tap_dtype}; use tap_dtype=float32")
        emb[v, start:stop], tap[v, start:stop] = e, t
        emb.flush()
        tap.flush()
        done.add(f"{start}:{v}")
        write_json_atomic(sorted(done), folder / PROGRESS_FILE)
    return CachedFeatures(np.asarray(emb), np.load(folder / TAP_FILE, mmap_mode="r"), source.labels.copy())


def _claim(folder: Path, description: dict) -> None:
    path = folder / SPEC_FILE
    if path.exists():
        found = json.loads(path.read_text())
        if found != json.loads(json.dumps(description)):
            raise ValueError(f"{folder} caches other features ({path}); delete the folder or choose another")
        return
    for stale in (EMBEDDING_FILE, TAP_FILE, PROGRESS_FILE):
        (folder / stale).unlink(missing_ok=True)
    write_json_atomic(description, path)


def _open(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    if path.exists():
        return np.load(path, mmap_mode="r+")
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
